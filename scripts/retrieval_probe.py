"""Does an adapter read planted facts back? Digit accuracy and NLL of the answers on fixed validation windows.

    python scripts/retrieval_probe.py ADAPTER_OR_CHECKPOINT [...] [--output probe.json]

Each argument is an adapter folder or a training checkpoint folder (`trainable.safetensors`; the knobs are the
shipped adapter's). The windows are the validation windows `sharedllm train` evaluates (4 x 256 + 512 tokens),
with facts planted by `training.planted_validation_answers`, as `sharedllm train` validates them. Chance is 10% accuracy and ln 10 = 2.303 NLL.
"""

import argparse
import json
import math
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file

from sharedllm import data, training
from sharedllm.assets import default_model_path
from sharedllm.loading import load_causal_lm
from sharedllm.modeling import SharedLLMForCausalLM

SHIPPED = "adapters/smollm2-135m"


def load(path: Path, base):
    model = SharedLLMForCausalLM.from_pretrained(SHIPPED, base=base)
    if (path / "trainable.safetensors").exists():
        weights = load_file(str(path / "trainable.safetensors"))
        model.cross_attention.load_state_dict({k.removeprefix("cross_attention."): v for k, v in weights.items()})
    elif path.resolve() != Path(SHIPPED).resolve():
        model = SharedLLMForCausalLM.from_pretrained(path, base=base)
    return model.eval()


@torch.no_grad()
def probe(model, windows, tokenizer, config) -> dict:
    right = total = 0
    nll = []
    for i in range(len(windows)):
        logits, targets = training.planted_validation_answers(model, windows, i, config, tokenizer, "cpu")
        is_digit = torch.tensor([t >= 0 and tokenizer.decode(int(t)).strip().isdigit() for t in targets.tolist()])
        right += int((logits[is_digit].argmax(-1) == targets[is_digit]).sum())
        total += int(is_digit.sum())
        nll.append(torch.nn.functional.cross_entropy(logits[is_digit], targets[is_digit]).item())
    return {"digit_accuracy": right / total, "digits": total, "digit_nll": float(np.mean(nll)), "windows": len(windows)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("models", nargs="+", type=Path)
    parser.add_argument("--output", type=Path)
    args = parser.parse_args()
    base, tokenizer = load_causal_lm(default_model_path())
    config = training.TrainConfig(output="", n_chunks=4, knobs=dict(chunk_size=256, decoder_window=512), eval_windows=8)
    _, validation_docs, _ = training.load_training_documents(config)
    windows = data.evaluation_windows(
        data.build_windows(data.tokenize_documents(validation_docs, tokenizer, progress=False), config.sample_len), 8)
    results = {}
    for path in args.models:
        results[str(path)] = probe(load(path, base), windows, tokenizer, config)
        r = results[str(path)]
        print(f"{path}: digit accuracy {r['digit_accuracy']:.1%} of {r['digits']}, digit NLL {r['digit_nll']:.3f} "
              f"(chance: 10%, {math.log(10):.3f})")
    if args.output:
        args.output.write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
