"""Package a training run's adapter for shipping: adapter weights + config (portable base name), log, loss curve.

    python scripts/package_adapter.py runs/smollm2-135m adapters/smollm2-135m [--checkpoint step-0000160]
                                      [--decoder-window 1024 ...]

Knob flags override the run's values in the shipped config: what the adapter is read with, e.g. a longer decoder
window than the one it trained with. With --checkpoint, the adapter is that checkpoint's (a run stopped before its
last step); the summary then says at which step of the schedule it stopped, the learning rate there, and that the
final save did not happen.
"""

import argparse
import json
import shutil
from pathlib import Path

from safetensors.torch import load_file

from sharedllm import SharedLLMConfig, SharedLLMForCausalLM
from sharedllm.config import KNOBS
from sharedllm.flags import add_knob_arguments, knobs_from_args
from sharedllm.loading import load_causal_lm, portable_base_name
from sharedllm.lora import LORA_DIR, has_upper_lora, load_upper_lora
from sharedllm.training import LOG_FILE, plot_curves, read_log


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run", type=Path)
    parser.add_argument("out", type=Path)
    parser.add_argument("--checkpoint", help="a checkpoint folder name under RUN/checkpoints")
    add_knob_arguments(parser, title="knobs (default: the run's)")
    args = parser.parse_args()

    checkpoint = args.run / "checkpoints" / args.checkpoint if args.checkpoint else None
    if checkpoint is None:  # a finished run: its saved config
        config = SharedLLMConfig.from_pretrained(args.run)
        base_path, knobs = config.base_model, {k: getattr(config, k) for k in KNOBS}
    else:  # a checkpoint: the run's own training config (a knob an older run did not record keeps its default)
        config = json.loads((checkpoint / "trainer_state.json").read_text())["config"]
        base_path, knobs = config["base"], {k: config[k] for k in KNOBS if k in config}
    base, _ = load_causal_lm(portable_base_name(base_path) or base_path)
    model = SharedLLMForCausalLM.from_base(base, **{**knobs, **knobs_from_args(args)})
    if checkpoint is None and model.config.base_fingerprint != config.base_fingerprint:
        raise SystemExit("the base found now is not the base the run trained on (fingerprints differ)")
    state = load_file(str(checkpoint / "trainable.safetensors" if checkpoint else args.run / "model.safetensors"))
    if any("lora_" in name for name in state):
        raise SystemExit("this checkpoint holds an upper-layer LoRA: package the finished run instead "
                         "(its upper_lora/ folder is copied with the adapter)")
    model.cross_attention.load_state_dict({k.removeprefix("cross_attention."): v for k, v in state.items()})
    if checkpoint is None and has_upper_lora(args.run):  # saved with the adapter, which records its digest
        load_upper_lora(model, args.run / LORA_DIR, config.lora_sha256)

    model.tokenizer = None  # loading takes the base's tokenizer (a copy would add 3.5 MB to the repository)
    args.out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(args.out)
    records = read_log(args.run / LOG_FILE)
    if args.checkpoint:
        step = json.loads((checkpoint / "trainer_state.json").read_text())["step"]
        records = [r for r in records if r["step"] <= step]
    (args.out / LOG_FILE).write_text("".join(json.dumps(r) + "\n" for r in records))
    plot_curves(args.out / LOG_FILE, args.out / "loss_curve.png")
    summary_path = args.run / "training_summary.json"
    if summary_path.exists():
        shutil.copy(summary_path, args.out / "training_summary.json")
    else:
        last = records[-1]
        evaluations = [r for r in records if "val_ppl" in r]
        summary = {
            "stopped_early": f"stopped at step {last['step']} (checkpoint {args.checkpoint}) of the scheduled run; "
                             f"learning rate there {last['lr']:.2e}; adapter = that checkpoint's weights",
            "steps_done": last["step"], "tokens_seen": last["tokens"], "wall_time_s": last["elapsed_s"],
            "final_train_loss": last["loss"],
            "last_validation": evaluations[-1] if evaluations else None,
        }
        (args.out / "training_summary.json").write_text(json.dumps(summary, indent=2))
    print(f"packaged {args.out}: {sorted(p.name for p in args.out.iterdir())}")


if __name__ == "__main__":
    main()
