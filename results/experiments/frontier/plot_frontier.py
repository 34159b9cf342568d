"""The M frontier (scripts/experiment_frontier.sh): perplexity and passkey at 8K against prefill cost relative to
streaming (analytic FLOPs in the figure; FLOPs and measured time in the table), one point per configuration, from the JSON files the script wrote. Prints a markdown table and writes
the figure.

    python results/experiments/frontier/plot_frontier.py [--dir results/experiments/frontier] [--figure PNG]
"""

import argparse
import glob
import json
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from transformers import AutoConfig  # noqa: E402

from sharedllm.assets import default_model_path  # noqa: E402
from sharedllm.benchmark import prefill_flops  # noqa: E402

LENGTH = "8192"


def latest(pattern: str) -> dict | None:
    files = sorted(glob.glob(pattern))
    return json.load(open(files[-1])) if files else None


def bench_ratios(folder: Path) -> dict | None:
    """Prefill time of sharedllm over streaming's at 8K, measured in the same process, and their FLOPs counted by
    the current formula (sharedllm.benchmark.flops) on the knobs the bench recorded: the files' own prefill_flops
    predate the fix of the joint count (docs/benchmark.md) and are 5-17% low for joint."""
    data = latest(str(folder / "*.json"))
    if data is None:
        return None
    cells = {c["method"]: c for c in data["cells"] if str(c["length"]) == LENGTH and c["status"] == "ok"}
    shared, streaming = cells["sharedllm"], cells["streaming"]
    text_config = AutoConfig.from_pretrained(default_model_path())  # the bench's base: data["meta"]["base_model"]
    knobs = {k: v for k, v in shared["method_config"].items() if k not in ("method", "adapter")}
    flops = {name: prefill_flops(name, int(LENGTH), text_config, knobs, cell["method_config"])
             for name, cell in (("sharedllm", shared), ("streaming", streaming))}
    return dict(time=shared["prefill_s"] / streaming["prefill_s"], flops=flops["sharedllm"] / flops["streaming"],
                memory_gb=shared["peak_memory_bytes"] / 1e9, commit=data["meta"]["git_commit"][:7])


def window_floors(folder: Path) -> dict[int, float]:
    """{decoder window: the window method's perplexity at 8K}: each point is compared with the floor of its own
    decoder window (the cross adapter reads with 512 tokens, joint with 1024; the first version of this table held
    every point against the 512-token floor)."""
    floors = {}
    for path in sorted(glob.glob(str(folder / "ppl_window*.json"))):  # oldest first: the newest per window wins
        data = json.load(open(path))
        floors[data["method_config"]["decoder_window"]] = data["scores"][LENGTH]
    return floors


def rows(folder: Path) -> list[dict]:
    labels = sorted({Path(f).name.split("_")[1] for f in glob.glob(str(folder / "passkey" / "*.json"))})
    out = []
    for label in labels:
        passkey = latest(str(folder / "passkey" / f"passkey_{label}_*.json"))
        ppl = latest(str(folder / "ppl" / f"ppl_{label}_*.json"))
        config = passkey["method_config"]
        out.append(dict(label=label, m=config["n_injected_layers"], injection=config["injection"],
                        selection_layer=config["selection_layer"], passkey=passkey["scores"][LENGTH],
                        trials=passkey["counts"]["total_trials"], ppl=ppl["scores"][LENGTH] if ppl else None,
                        windows=ppl["counts"][LENGTH]["windows"] if ppl else None,
                        decoder_window=ppl["method_config"]["decoder_window"] if ppl else None,
                        bench=bench_ratios(folder / "bench" / label)))
    return sorted(out, key=lambda p: (p["injection"], p["m"]))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dir", type=Path, default=Path("results/experiments/frontier"))
    parser.add_argument("--figure", type=Path, default=None, help="default: DIR/frontier.png")
    args = parser.parse_args()
    points = rows(args.dir)
    floors = window_floors(args.dir / "ppl")
    shown = ", ".join(f"{score:.2f} at decoder window {ld}" for ld, score in sorted(floors.items()))
    print(f"| point | M | scoring layer | passkey 8K | PPL 8K (window floor: {shown}) | prefill time / streaming "
          f"| prefill FLOPs / streaming | peak memory |")
    print("|---|---|---|---|---|---|---|---|")
    for p in points:
        b = p["bench"]
        cost = f"{b['time']:.2f}x | {b['flops']:.2f}x | {b['memory_gb']:.2f} GB" if b else "not run | | "
        print(f"| {p['label']} | {p['m']} | {p['selection_layer']} | {round(10 * p['passkey'] * p['trials']) / 10:g}/"
              f"{p['trials']} | {p['ppl']:.2f} ({100 * (p['ppl'] / floors[p['decoder_window']] - 1):+.1f}%) | {cost} |")
    fig, (ax_ppl, ax_key) = plt.subplots(1, 2, figsize=(10, 4))
    for i, p in enumerate(points):
        if p["bench"] is None:
            continue
        x = p["bench"]["flops"]  # analytic: the measured time ratio is in the table, noisier on a shared CPU
        style = dict(marker="o" if p["injection"] == "joint" else "s", color="C0" if p["injection"] == "joint" else "C3")
        ax_ppl.scatter(x, p["ppl"], **style)
        ax_key.scatter(x, 100 * p["passkey"], **style)
        for ax, y in ((ax_ppl, p["ppl"]), (ax_key, 100 * p["passkey"])):  # staggered labels: points can coincide
            ax.annotate(f"{p['injection']} M={p['m']}", (x, y), textcoords="offset points",
                        xytext=(4, 6 + 10 * (i % 2)), fontsize=8)
    for (ld, score), style in zip(sorted(floors.items()), ("--", ":")):
        ax_ppl.axhline(score, color="gray", linestyle=style, label=f"window only ({ld}-token decoder window)")
    ax_ppl.set(xlabel="prefill FLOPs / streaming's (8K)", ylabel="perplexity at 8K (books, 4 windows)",
               title="perplexity (lower is better)")
    ax_ppl.legend()
    ax_key.set(xlabel="prefill FLOPs / streaming's (8K)", ylabel="passkey accuracy at 8K (%)",
               title="passkey, greedy generation, 10 prompts", ylim=(-5, 105))
    fig.suptitle("SmolLM2-135M: quality against prefill cost (circles: joint, training-free; square: cross adapter)",
                 fontsize=10)
    fig.tight_layout()
    figure = args.figure or args.dir / "frontier.png"
    fig.savefig(figure, dpi=120)
    print(f"wrote {figure}")


if __name__ == "__main__":
    main()
