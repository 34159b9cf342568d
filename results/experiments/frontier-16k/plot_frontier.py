"""The M frontier of the default adapter at 16K (run.sh here): retrieval and perplexity against prefill cost
relative to streaming, one point per M. The M = 30 point is the default's own cells (results/retrieval and
results/heldout, restricted to the same prompts and windows). Prints a markdown table and writes the figure.

    python results/experiments/frontier-16k/plot_frontier.py
"""

import glob
import json
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from sharedllm.evaluation.heldout import paired_ratio  # noqa: E402

HERE = Path(__file__).parent
LENGTH, DOMAINS, N_WINDOWS, PASSKEY_TRIALS = 16384, ("books", "math"), 8, 2
DEFAULT = {  # the M = 30 point: the default's cells, run with the same prompts and the same first windows
    "passkey": "results/retrieval/passkey_joint-exercises_landmark_20261204-231540.json",
    "ruler": "results/retrieval/ruler_joint-exercises_ruler_20261204-205200.json",
    "heldout": "results/heldout/heldout_{domain}_16384_joint-exercises.json",
}


def load(pattern: str) -> dict:
    files = sorted(glob.glob(str(pattern)))
    if not files:
        raise FileNotFoundError(f"no result matches {pattern}: run run.sh first")
    return json.load(open(files[-1]))


def passkey_right(data: dict) -> tuple[int, int]:
    """Correct answers over the prompts of trials 0..PASSKEY_TRIALS-1 at every depth (the frontier's 10 prompts)."""
    records = [r for r in data["details"]["records"] if r["length"] == LENGTH and r["trial"] < PASSKEY_TRIALS]
    return sum(bool(r["correct"]) for r in records), len(records)


def ruler_right(data: dict) -> tuple[int, int]:
    records = [r for r in data["details"]["records"] if r["length"] == LENGTH]
    return round(sum(r["score"] for r in records)), len(records)


def frontier_windows(domain: str) -> list[tuple[str, int]]:
    """The frontier's windows (document, start), in one order: the first 8 draws of the seeded permutation whose
    first 16 results/heldout scores, so a subset of its 16 cells."""
    return [(w["doc"], w["start"]) for w in load(HERE / "heldout" / f"heldout_{domain}_{LENGTH}_m*.json")["windows"]]


def window_nlls(path: str, keys: list[tuple[str, int]]) -> list[float]:
    """Mean NLL of each of the windows `keys` in a heldout cell."""
    by_key = {(w["doc"], w["start"]): w["mean_nll"] for w in json.load(open(path))["windows"]}
    nlls = [by_key.get(key) for key in keys]
    assert len(nlls) == N_WINDOWS and None not in nlls, f"{path} lacks some of the frontier's windows"
    return nlls


def prefill_ratios(m: int) -> dict | None:
    """Prefill time over streaming's, measured in the same process (median of repeats), and the FLOP ratio, as the
    bench recorded them."""
    files = sorted(glob.glob(str(HERE / "bench" / f"m{m}" / "*.json")))
    if not files:
        return None
    cells = {c["method"]: c for c in json.load(open(files[-1]))["cells"] if int(c["length"]) == LENGTH and c["status"] == "ok"}
    shared, streaming = cells["sharedllm"], cells["streaming"]
    return dict(time=1 / shared["ratios"]["prefill_speedup_vs_streaming"],
                flops=shared["prefill_flops"] / streaming["prefill_flops"])


def point(m: int, keys: dict, window: dict) -> dict:
    if m == 30:
        passkey, ruler = load(DEFAULT["passkey"]), load(DEFAULT["ruler"])
        heldout = {d: DEFAULT["heldout"].format(domain=d) for d in DOMAINS}
    else:
        passkey, ruler = load(HERE / "passkey" / f"passkey_m{m}_*.json"), load(HERE / "ruler" / f"ruler_m{m}_*.json")
        heldout = {d: str(HERE / "heldout" / f"heldout_{d}_{LENGTH}_m{m}.json") for d in DOMAINS}
    config = passkey["method_config"]
    nlls = {d: window_nlls(heldout[d], keys[d]) for d in DOMAINS}
    ppl = {d: dict(ppl=float(np.exp(np.mean(nlls[d]))), vs_window=paired_ratio(nlls[d], window[d])) for d in DOMAINS}
    return dict(m=m, selection_layer=config["selection_layer"], query_layer=config.get("query_layer"),
                passkey=passkey_right(passkey), ruler=ruler_right(ruler), ppl=ppl, cost=prefill_ratios(m))


def main() -> None:
    keys = {d: frontier_windows(d) for d in DOMAINS}
    window_nll = {d: window_nlls(f"results/heldout/heldout_{d}_{LENGTH}_window.json", keys[d]) for d in DOMAINS}
    points = [point(m, keys, window_nll) for m in (4, 8, 16, 21, 24, 30)]
    window = {d: float(np.exp(np.mean(window_nll[d]))) for d in DOMAINS}
    print(f"| M | scoring layer / query layer | passkey 16K | niah_single 16K | "
          + " | ".join(f"PPL {d} (window {window[d]:.2f}); sharedllm / window" for d in DOMAINS)
          + " | prefill time / streaming | prefill FLOPs / streaming |")
    print("|---" * (6 + len(DOMAINS)) + "|")
    for p in points:
        ppl = " | ".join("{:.2f}; {:.3f} [{:.3f}, {:.3f}]".format(p["ppl"][d]["ppl"], *p["ppl"][d]["vs_window"])
                         for d in DOMAINS)
        cost = f"{p['cost']['time']:.2f}x | {p['cost']['flops']:.2f}x" if p["cost"] else "not run | "
        print(f"| {p['m']} | {p['selection_layer']} / {p['query_layer']} | {p['passkey'][0]}/{p['passkey'][1]} | "
              f"{p['ruler'][0]}/{p['ruler'][1]} | {ppl} | {cost} |")
    costed = [p for p in points if p["cost"]]
    fig, (ax_ret, ax_ppl) = plt.subplots(1, 2, figsize=(10, 4))
    x = [p["cost"]["flops"] for p in costed]
    for key, name, marker in (("passkey", "passkey (10 prompts)", "o"), ("ruler", "niah_single (10 trials)", "s")):
        ax_ret.plot(x, [100 * p[key][0] / p[key][1] for p in costed], marker=marker, label=name)
    for d in DOMAINS:
        ax_ppl.plot(x, [100 * (p["ppl"][d]["ppl"] / window[d] - 1) for p in costed], marker="o", label=d)
    for p in costed:
        ax_ret.annotate(f"M={p['m']}", (p["cost"]["flops"], 100 * p["passkey"][0] / p["passkey"][1]),
                        textcoords="offset points", xytext=(-10, 8), fontsize=8)
    ax_ppl.axhline(0, color="gray", linestyle="--", label="window only")
    ax_ret.set(xlabel="prefill FLOPs / streaming's (16K)", ylabel="right (%)", title="retrieval at 16K (test)",
               ylim=(-5, 112))
    ax_ppl.set(xlabel="prefill FLOPs / streaming's (16K)", ylabel="perplexity against the window (%)",
               title=f"perplexity at 16K ({N_WINDOWS} test windows per domain)")
    for ax in (ax_ret, ax_ppl):
        ax.legend(fontsize=8)
    fig.suptitle("SmolLM2-135M, the default adapter read with M injected layers (M = 4, 8, 16, 21, 24, 30)", fontsize=10)
    fig.tight_layout()
    fig.savefig(HERE / "frontier.png", dpi=120)
    print(f"wrote {HERE / 'frontier.png'}")


if __name__ == "__main__":
    main()
