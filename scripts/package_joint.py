"""Package the training-free joint-injection preset for a base: config only (no weights: joint injection adds no
parameters), portable base name, the knobs measured in results/experiments/joint-overlap/ (context_chunks in
results/experiments/context-chunks-validation/).

    python scripts/package_joint.py adapters/smollm2-135m-joint [--base B] [--selection-layer 17 ...]

Every knob flag overrides the preset; n_injected_layers defaults to the base's depth (every layer reads its
context: fewer layers made the untrained base read worse than no context, results/experiments/joint-injection/).
A model card (README.md) is written by hand next to the config.
"""

import argparse
from pathlib import Path

from sharedllm import SharedLLMForCausalLM
from sharedllm.assets import default_model_path
from sharedllm.flags import add_base_argument, add_knob_arguments, knobs_from_args
from sharedllm.loading import load_causal_lm

PRESET = dict(injection="joint", chunk_size=512, decoder_window=1024, chunk_overlap=64, tree_depth=3,
              tokens_per_node=32, leaf_tokens_per_node=64, tree_selection="attention", selection_layer=17,
              context_chunks=8)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", type=Path)
    add_base_argument(parser)
    add_knob_arguments(parser, title="knobs (default: the preset above)")
    args = parser.parse_args()
    base, _ = load_causal_lm(args.base or default_model_path())
    knobs = {"n_injected_layers": base.config.num_hidden_layers, **PRESET, **knobs_from_args(args)}
    model = SharedLLMForCausalLM.from_base(base, **knobs)
    model.tokenizer = None  # loading takes the base's tokenizer, as for the trained adapters
    args.out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(args.out)
    print(f"packaged {args.out}: {sorted(p.name for p in args.out.iterdir())}")


if __name__ == "__main__":
    main()
