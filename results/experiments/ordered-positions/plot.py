"""Perplexity against chunk_spacing g at 8K on the validation windows, one panel per domain: each g's PPL over the
stacked default's (g = 0) on the same 16 windows, with the 95% paired bootstrap interval (`heldout.paired_ratio`);
full attention's on code for reference. Writes spacing.png next to this file; run from the repository root after
run.sh 1 and 1b."""

import json
from pathlib import Path

import matplotlib

from sharedllm.evaluation.heldout import paired_ratio, scored_windows

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

HERE = Path(__file__).parent
EXPERIMENTS = HERE.parent
DEFAULT = {  # the stacked default's cells (same adapter, knobs and plan), README.md says where each comes from
    "books": HERE / "heldout_books_8192_default.json",
    "code": EXPERIMENTS / "code-chunks" / "heldout_code_8192_default.json",
    "math": EXPERIMENTS / "leaf-lookback" / "heldout-8k-validation-16" / "heldout_math_8192_default.json",
}
SPACED = {128: "spacing128", 256: "spacing256", 512: "ordered"}  # g -> label of its cells
FULL_CODE = EXPERIMENTS / "code-dense" / "heldout_code_8192_full.json"


def nlls(path: Path) -> dict:
    return {key: w["mean_nll"] for key, w in scored_windows(json.loads(path.read_text())).items()}


def ratio_to(cell: dict, reference: dict) -> tuple[float, float, float]:
    keys = [key for key in reference if key in cell]
    return paired_ratio([cell[k] for k in keys], [reference[k] for k in keys])


fig, axes = plt.subplots(1, 3, figsize=(11, 3.4), sharey=True)
for ax, domain in zip(axes, ("books", "code", "math")):
    reference = nlls(DEFAULT[domain])
    points = [(0, (1.0, 1.0, 1.0))]
    for g, label in SPACED.items():
        path = HERE / f"heldout_{domain}_8192_{label}.json"
        if path.exists():
            points.append((g, ratio_to(nlls(path), reference)))
    g_values = [g for g, _ in points]
    ratio = [r for _, (r, _, _) in points]
    errors = [[r - low for _, (r, low, _) in points], [high - r for _, (r, _, high) in points]]
    ax.errorbar(g_values, ratio, yerr=errors, marker="o", capsize=3, label="chunk_spacing g")
    ax.axhline(1.0, color="gray", linestyle="--", label="stacked (g = 0, the default)")
    if domain == "code":
        full = ratio_to(nlls(FULL_CODE), reference)[0]
        ax.axhline(full, color="tab:green", linestyle=":", label="full attention over all 8K")
    ax.set_title(f"validation {domain}, 8K, 16 windows")
    ax.set_xlabel("chunk_spacing g (512: side by side)")
    ax.set_xticks([0, 128, 256, 512])
axes[0].set_ylabel("PPL / PPL of stacked (< 1: better)")
axes[1].legend(fontsize=8)
fig.tight_layout()
fig.savefig(HERE / "spacing.png", dpi=120)
print(f"wrote {HERE / 'spacing.png'}")
