"""`sharedllm report`: regenerate docs/results.md and docs/figures/ from every results/*.json.

A table is one setting (task, protocol, model, adapter, data); rows are methods, columns lengths. When a
cell was measured more than once, the newest result wins. Below each table: the counts behind every
row and the exact command that produced it, so that no number stands without its protocol.
"""

import json
import re
from collections import defaultdict
from pathlib import Path

TASK_TITLES = {
    "ppl": "Perplexity",
    "passkey": "Passkey retrieval (Landmark format)",
    "niah": "Needle in a haystack (real prose)",
    "ruler": "RULER-style synthetic tasks",
    "longbench": "LongBench / InfiniteBench format",
}
NOTES_FILE = "NOTES.md"
PROTOCOL_NOTES = {
    "cepe": "CEPE / SharedLLM protocol: windows of T tokens every 256 tokens of documents >= T, last 256 "
            "tokens of each window scored, PPL = exp(mean of per-window mean NLL)",
    "sliding": "sliding-window protocol (YaRN / Press et al.): windows of T advancing by 256, each token "
               "scored once with the most context, PPL = exp(total NLL / total tokens)",
}


def add_arguments(parser):
    parser.add_argument("--results", default="results", help="folder of result JSON files")
    parser.add_argument("--docs", default="docs", help="writes DOCS/results.md and DOCS/figures/*.png")


def run(args):
    from sharedllm.cli import InputError

    if not load_results(args.results):  # an empty page would replace the committed one
        raise InputError(f"no result JSON in {args.results}: nothing to report ({args.docs}/results.md left as it is)")
    path = regenerate(args.results, args.docs)
    print(f"wrote {path}")


def load_results(results_dir) -> list[dict]:
    from sharedllm.cli import InputError

    if not Path(results_dir).is_dir():
        raise InputError(f"no results folder {results_dir}")
    results = []
    for path in sorted(Path(results_dir).glob("*.json")):
        try:
            result = json.loads(path.read_text(encoding="utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError) as err:
            raise InputError(f"{path} is not a result file (not JSON: {err}); move it out of {results_dir}") from None
        if not isinstance(result, dict):
            continue
        if "task" in result and "scores" in result:  # other JSON (e.g. bench output) is not ours
            result["_file"] = path.name
            results.append(result)
    return results


def length_label(n) -> str:
    n = int(n)
    return f"{n // 1024}K" if n % 1024 == 0 else str(n)


def slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9]+", "-", text).strip("-").lower()[:80]


def setting_key(result) -> tuple:
    data = result.get("data", {})
    return (result["task"], result.get("protocol", ""), Path(str(result.get("model", ""))).name,
            data.get("split") or "", ",".join(data.get("domains") or []) or data.get("source", ""))


def latest_by_method(results) -> dict[str, dict]:
    """method -> its newest result in this setting (files are named with their timestamp too).

    Perplexity is merged per length instead: each length's score and counts come from the newest file that
    measured that length, so runs at different lengths (or with different window caps) fill one row; every
    contributing file is listed under `_sources` for the provenance.
    """
    best = {}
    for r in sorted(results, key=lambda r: (r.get("created", ""), r["_file"])):
        previous = best.get(r["method"])
        if r["task"] == "ppl" and previous is not None:
            merged = {**r, "scores": {**previous["scores"], **r["scores"]}, "counts": {**previous["counts"], **r["counts"]}}
            merged["_sources"] = [s for s in previous["_sources"] if set(s["scores"]) - set(r["scores"])] + [r]
            best[r["method"]] = merged
        else:
            best[r["method"]] = {**r, "_sources": [r]}
    return best


def cell(task, result, length) -> str:
    score = result["scores"].get(str(length))
    if score is None:  # not measured, or measured without a single window (older runs wrote a null score)
        return "– (no window)" if result.get("counts", {}).get(str(length), {}).get("windows") == 0 else "–"
    counts = result.get("counts", {})
    if task == "ppl":
        c = counts.get(str(length), {})
        return f"{score:.2f} ({c.get('windows', '?')} win)"
    if task in ("passkey", "niah"):
        return f"{100 * score:.0f}% (n={counts.get('trials_per_cell', '?')}x{counts.get('depths', '?')})"
    if isinstance(score, dict):  # ruler / longbench: average over tasks or datasets
        return f"{score.get('average', float('nan')):.1f}"
    return f"{score:.2f}"


def table(task, by_method) -> list[str]:
    lengths = sorted({int(n) for r in by_method.values() for n in r["scores"]})
    lines = ["| method | " + " | ".join(length_label(n) for n in lengths) + " |",
             "|---" * (len(lengths) + 1) + "|"]
    for method, result in by_method.items():
        lines.append(f"| {method} | " + " | ".join(cell(task, result, n) for n in lengths) + " |")
    return lines


def breakdown(task, by_method) -> list[str]:
    """Per-task (RULER) or per-dataset (LongBench) scores of each method and length."""
    lines = []
    for method, result in by_method.items():
        for length, scores in sorted(result["scores"].items(), key=lambda kv: int(kv[0])):
            parts = ", ".join(f"{k} {v:.1f}" for k, v in scores.items() if k != "average")
            lines.append(f"- {method} @ {length_label(length)}: {parts}")
        extra = result.get("details", {})
        if task == "ruler" and extra.get("threshold") is not None:
            eff = extra.get("effective_length")
            lines.append(f"- {method}: effective length {length_label(eff) if eff else 'none'} "
                         f"(threshold {extra['threshold']:.1f})")
    return lines


def provenance(result) -> list[str]:
    hw = result.get("hardware", {})
    data = result.get("data", {})
    return [
        f"- **{result['method']}** ({result['_file']}): adapter `{result.get('adapter')}`, "
        f"config `{json.dumps(result.get('method_config', {}))}`; data {json.dumps(data)}; counts `{json.dumps(result.get('counts', {}))}`; "
        f"{result.get('wall_time_s', 0):.0f} s on {hw.get('gpu') or hw.get('cpu')} "
        f"({hw.get('threads')} threads, {hw.get('dtype')}, torch {hw.get('torch')}, "
        f"transformers {hw.get('transformers')}); {result.get('notes', '')}",
        f"  `{result.get('command', '')}`",
    ]


def plot_ppl(task_results, path, title) -> bool:
    """Perplexity against length, one line per method; False (and no file) when no cell has a score."""
    if not any(v is not None for r in task_results.values() for v in r["scores"].values()):
        return False
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    def windows(result) -> int:
        return min((c.get("windows", 0) for c in result.get("counts", {}).values()), default=0)

    most = max((windows(r) for r in task_results.values()), default=0)
    colours = plt.get_cmap("tab20").colors  # one colour per row: the default cycle repeats after 10
    fig, ax = plt.subplots(figsize=(9, 4.5))
    for i, (method, result) in enumerate(task_results.items()):
        points = sorted((int(n), v) for n, v in result["scores"].items() if v is not None)
        if not points:
            continue
        few = windows(result) < most  # rows scored on fewer windows: dashed, only comparable with each other
        ax.plot([p[0] for p in points], [p[1] for p in points], marker="o", color=colours[i % len(colours)],
                linestyle="--" if few else "-", label=f"{method} ({windows(result)} win)" if few else method)
    ax.set_xscale("log", base=2)
    ax.set_yscale("log")
    ax.set_xlabel("context length T (tokens)")
    ax.set_ylabel("perplexity")
    ax.set_title(title, fontsize=9)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(loc="upper left", bbox_to_anchor=(1.02, 1.0), fontsize=8)  # outside: many rows, points overlap
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return True


def regenerate(results_dir="results", docs_dir="docs") -> Path:
    """Rewrite DOCS/results.md and DOCS/figures/ from the result files (and RESULTS/NOTES.md, included verbatim
    after the header when present); returns the markdown path."""
    from .passkey import plot_heatmap

    docs_dir = Path(docs_dir)
    figures = docs_dir / "figures"
    figures.mkdir(parents=True, exist_ok=True)
    groups = defaultdict(list)
    for result in load_results(results_dir):
        groups[setting_key(result)].append(result)

    lines = ["# Results", "",
             f"Generated by `sharedllm report` from `{results_dir}/*.json`; do not edit by hand. Every table "
             "names its protocol, model and data; the counts and the command behind each row follow it.", ""]
    notes = Path(results_dir) / NOTES_FILE  # the hand-written reading of the numbers: targets, gaps, causes
    if notes.exists():
        lines += [notes.read_text().strip(), ""]
    for task in TASK_TITLES:
        keys = sorted(k for k in groups if k[0] == task)
        if keys:
            lines += [f"## {TASK_TITLES[task]}", ""]
        for key in keys:
            _, protocol, model, split, data = key
            by_method = latest_by_method(groups[key])
            name = slug("-".join(key))
            where = f"data `{data or '?'}`" + (f" ({split} split)" if split else "")
            lines += [f"### {protocol or task} — model `{model}`, {where}", ""]
            if protocol in PROTOCOL_NOTES:
                lines += [f"Protocol: {PROTOCOL_NOTES[protocol]}.", ""]
            lines += table(task, by_method) + [""]
            if task in ("ruler", "longbench"):
                lines += breakdown(task, by_method) + [""]
            if task == "ppl" and plot_ppl(by_method, figures / f"{name}.png", f"{protocol} PPL, {model}, {data}"):
                lines += [f"![perplexity vs length](figures/{name}.png)", ""]
            if task in ("passkey", "niah"):
                for method, result in by_method.items():
                    figure = f"{name}-{slug(method)}.png"
                    plot_heatmap(result["details"]["cells"], figures / figure, f"{task}: {method}, {model}")
                    lines += [f"![{task} {method}](figures/{figure})"]
                lines.append("")
            sources = [source for r in by_method.values() for source in r["_sources"]]
            lines += ["Provenance:", ""] + [p for r in sources for p in provenance(r)] + [""]
    path = docs_dir / "results.md"
    path.write_text("\n".join(lines))
    return path
