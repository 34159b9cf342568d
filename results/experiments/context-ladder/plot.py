"""PPL against context length on fixed targets (the 32K plan's 16 windows per domain), one panel per domain: the
default's PPL at each T over the window floor's on the same windows (the floor reads the same last 1,024 tokens at
every T >= 1,280), with the 95% paired bootstrap interval (`heldout.paired_ratio`). Writes context-ladder.png next
to this file; run from the repository root after run.sh."""

import json
from pathlib import Path

import matplotlib

from sharedllm.evaluation.heldout import paired_ratio, scored_windows

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

HERE = Path(__file__).parent
LENGTHS = (4096, 8192, 16384, 32768)
PLAN = LENGTHS[-1]


def window_nlls(domain: str, length: int, method: str = "sharedllm") -> dict:
    """{(doc, end): mean NLL} of a cell: the 32K one from the headline, shorter ones from this folder."""
    name = f"heldout_{domain}_{length}_{method}"
    path = Path("results/heldout", f"{name}.json") if length == PLAN else HERE / f"{name}_targets{PLAN}.json"
    return {key: w["mean_nll"] for key, w in scored_windows(json.loads(path.read_text())).items()}


fig, axes = plt.subplots(1, 2, figsize=(9, 3.6), sharey=False)
for ax, domain in zip(axes, ("books", "math")):
    floor = window_nlls(domain, PLAN, "window")
    points = []
    for length in LENGTHS:
        nlls = window_nlls(domain, length)
        keys = [key for key in floor if key in nlls]
        points.append(paired_ratio([nlls[k] for k in keys], [floor[k] for k in keys]))
    ratio = [p[0] for p in points]
    errors = [[r - p[1] for r, p in zip(ratio, points)], [p[2] - r for r, p in zip(ratio, points)]]
    ax.errorbar([n // 1024 for n in LENGTHS], ratio, yerr=errors, marker="o", capsize=3)
    ax.axhline(1.0, color="gray", linestyle="--", label="window floor (1,024 tokens)")
    ax.set_xscale("log", base=2)
    ax.set_xticks([n // 1024 for n in LENGTHS], [f"{n // 1024}K" for n in LENGTHS])
    ax.set_xlabel("tokens read before each target")
    ax.set_ylabel("PPL sharedllm / PPL window")
    ax.set_title(f"held-out {domain}: same 16 targets")
    ax.legend(fontsize=8)
fig.tight_layout()
fig.savefig(HERE / "context-ladder.png", dpi=120)
print(f"wrote {HERE / 'context-ladder.png'}")
