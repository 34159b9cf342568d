"""`sharedllm report`: regenerate docs/results.md and docs/figures/ from every results/*.json.

docs/results.md opens with the headline: per domain, one table of every method on the same held-out windows
(results/heldout/*.json, written by `sharedllm eval heldout`): PPL [95% bootstrap interval] (scored tokens), or
"not run: reason"; and one perplexity-vs-length plot with the intervals; then the hand-written reading of them in
results/heldout/NOTES.md when there is one. Then the retrieval headline (passkey and RULER per method and length,
from results/retrieval/*.json; `retrieval_report`). Then, as "Previous results", the hand-written results/NOTES.md and the
older tables, built as follows.

A table is one setting (task, protocol, model, data); rows are methods, columns lengths. A row is one method
label with one adapter and one set of knobs (`group_rows`): a label that ran with several is several rows, named by
what differs. When a cell was measured more than once, the newest result wins. Below each table: the counts behind
every row and the exact command that produced it, so that no number stands without its protocol.
"""

import json
import re
import statistics
from collections import defaultdict
from pathlib import Path, PurePath

from sharedllm.flags import format_length
from sharedllm.knobs import recorded_knobs
from sharedllm.provenance import read_json

from .journal import by_machine
from .retrieval_report import RETRIEVAL_DIR, load_retrieval, retrieval_section

TASK_TITLES = {
    "ppl": "Perplexity",
    "passkey": "Passkey retrieval (Landmark format)",
    "niah": "Needle in a haystack (real prose)",
    "ruler": "RULER-style synthetic tasks",
    "longbench": "LongBench format (English sets)",
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


HEADLINE_DIR = "heldout"  # under the results folder: one JSON per (method, domain, length) cell
# row order of the headline tables; other methods (labels, ablations) follow alphabetically
HEADLINE_ORDER = ("sharedllm", "window", "streaming", "infllm", "full", "yarn", "cepe")
# A point this many times its length's median perplexity (full attention past its trained positions: 1003 against
# ~40) is drawn as a labelled mark at the plot's top edge, so the other methods keep the plot's height.
OFF_SCALE = 5.0
HEADLINE_PROTOCOL = ("windows of T tokens drawn once per (domain, T) with a fixed seed from the CEPE window "
                     "positions (every 256 tokens) of the test documents >= T; every method of a column is scored on "
                     "exactly those windows; the last 256 tokens of each window are scored; PPL = exp(mean over "
                     "windows of the window's mean token NLL); [low, high] = 95% percentile bootstrap interval over "
                     "windows (1000 resamples, seed 0); the count in parentheses is the scored tokens")


def run(args):
    from sharedllm.cli import InputError

    if not (load_results(args.results) or load_heldout(args.results) or load_retrieval(args.results)):
        # an empty page would replace the committed one
        raise InputError(f"no result JSON in {args.results}, {args.results}/{HEADLINE_DIR} or {args.results}/{RETRIEVAL_DIR}: "
                         f"nothing to report ({args.docs}/results.md left as it is)")
    path = regenerate(args.results, args.docs)
    print(f"wrote {path}")


def load_results(results_dir) -> list[dict]:
    from sharedllm.cli import InputError

    if not Path(results_dir).is_dir():
        raise InputError(f"no results folder {results_dir}")
    results = []
    for path in sorted(Path(results_dir).glob("*.json")):
        result = read_json(path)
        if not isinstance(result, dict):
            continue
        if "task" in result and "scores" in result:  # other JSON (e.g. bench output) is not ours
            result["_file"] = path.name
            results.append(result)
    return results


def slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9]+", "-", text).strip("-").lower()[:80]


def setting_key(result) -> tuple:
    data = result.get("data", {})
    return (result["task"], result.get("protocol", ""), model_folder(result.get("model")),
            data.get("split") or "", ",".join(data.get("domains") or []) or data.get("source", ""))


def oldest_to_newest(results: list[dict]) -> list[dict]:
    """The order in which "the newest file wins": by creation time, ties by file name (named with their timestamp)."""
    return sorted(results, key=lambda r: (r.get("created", ""), r["_file"]))


def run_setting(result) -> dict:
    """What a row holds fixed besides its method label and data: the base model, the adapter and every knob.

    The model is named by its folder (`model_folder`). The result's `adapter` stands for the config's copy of it,
    which is the path on the machine that ran it (/tmp/run6/adapters/X for adapters/X)."""
    knobs = {**recorded_knobs(result.get("method_config", {})), "adapter": result.get("adapter")}
    return {**knobs, "model": model_folder(result.get("model"))}


def model_folder(model) -> str:
    """A result's base model as results are compared by it: its folder's name, since results written before models
    were named portably hold the path on the machine that made them (/root/.cache/sharedllm/models/X for
    $SHAREDLLM_HOME/models/X); "" when none is recorded."""
    return PurePath(str(model)).name if model else ""


def setting_differences(a: dict, b: dict) -> dict[str, tuple]:
    """{name: (value in a, value in b)} for each name two settings hold otherwise: the one rule of "same setting",
    for report's rows (`run_setting`) and heldout's cell files (`heldout.settings_differences`).

    The model is compared by `model_folder`. A name only one side holds reads as None there: every knob is on both
    sides (`recorded_knobs` fills the ones a file predates), so such a name is an option no defaults table covers (a
    baseline's option an older file lacks, a knob removed since), and a run is not known to have matched a value it
    did not record: a cell made with selection_head=6 is not the current code's setting."""
    differences = {}
    for name in {**a, **b}:  # a's names first, in order
        there, here = a.get(name), b.get(name)
        if there != here and not (name == "model" and model_folder(there) == model_folder(here)):
            differences[name] = (there, here)
    return differences


def same_setting(a: dict, b: dict) -> bool:
    """Two run settings that `setting_differences` finds nothing between."""
    return not setting_differences(a, b)


def group_rows(results) -> list[tuple[str, list[dict]]]:
    """[(method label, its files oldest first)], one row per label and setting: a label rerun with another
    adapter, model or knob value starts a row of its own, so that no row mixes the numbers of two settings."""
    rows = []
    for result in oldest_to_newest(results):
        setting = run_setting(result)
        row = next((files for method, files in rows if method == result["method"]
                    and all(same_setting(run_setting(f), setting) for f in files)), None)
        if row is None:
            rows.append((result["method"], [result]))
        else:
            row.append(result)
    return rows


def row_labels(rows: list[tuple[str, list[dict]]]) -> list[str]:
    """Each row's name: its method label, followed by the settings that tell its rows apart when the label ran
    with several (`sharedllm (adapter="a")` and `sharedllm (adapter="b")`)."""
    settings = [{name: value for f in files for name, value in run_setting(f).items()} for _, files in rows]
    labels = []
    for i, (method, _) in enumerate(rows):
        siblings = [s for (m, _), s in zip(rows, settings) if m == method]
        differing = sorted({name for a in siblings for b in siblings for name in setting_differences(a, b)})
        shown = ", ".join(f"{name}={json.dumps(settings[i][name])}" for name in differing if name in settings[i])
        labels.append(f"{method} ({shown})" if shown else method)
    if len(set(labels)) < len(labels):  # settings that differ only pairwise: the newest file tells them apart
        labels = [f"{label} [{files[-1]['_file']}]" for label, (_, files) in zip(labels, rows)]
    return labels


def latest_by_method(results) -> dict[str, dict]:
    """row label (`row_labels`) -> its newest result in this setting.

    Perplexity is merged per length instead: each length's score and counts come from the newest file of the row
    that measured that length, so runs at different lengths (or with different window caps) fill one row; every
    contributing file is listed under `_sources` for the provenance.
    """
    best = {}
    rows = group_rows(results)
    for label, (_, files) in zip(row_labels(rows), rows):
        for r in files:
            previous = best.get(label)
            if r["task"] == "ppl" and previous is not None:
                merged = {**r, "scores": {**previous["scores"], **r["scores"]}, "counts": {**previous["counts"], **r["counts"]}}
                merged["_sources"] = [s for s in previous["_sources"] if set(s["scores"]) - set(r["scores"])] + [r]
                best[label] = merged
            else:
                best[label] = {**r, "_sources": [r]}
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
    lines = ["| method | " + " | ".join(format_length(n) for n in lengths) + " |",
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
            lines.append(f"- {method} @ {format_length(length)}: {parts}")
        extra = result.get("details", {})
        if task == "ruler" and extra.get("threshold") is not None:
            eff = extra.get("effective_length")
            lines.append(f"- {method}: effective length {format_length(eff) if eff else 'none'} "
                         f"(threshold {extra['threshold']:.1f})")
    return lines


def provenance(result) -> list[str]:
    hw = result.get("hardware", {})
    data = result.get("data", {})
    return [
        f"- **{result['method']}** ({result['_file']}): adapter `{result.get('adapter')}`, "
        f"config `{json.dumps(result.get('method_config', {}))}`; data {json.dumps(data)}; counts `{json.dumps(result.get('counts', {}))}`; "
        f"{result.get('wall_time_s', 0):.0f} s on {_machine_name(hw)} "
        f"({hw.get('threads')} threads, {hw.get('dtype')}, torch {hw.get('torch')}, "
        f"transformers {hw.get('transformers')}); {result.get('notes', '')}",
        f"  `{result.get('command', '')}`",
    ]


# ----------------------------------------------------------------------------------------------------------------
# headline: every method on the same held-out windows


def included_notes(folder: Path, levels_down: int) -> list[str]:
    """FOLDER/NOTES.md, a hand-written reading of that folder's results, with its headings moved `levels_down` levels
    down so that it nests in the section that includes it; nothing when the folder has none."""
    notes = folder / NOTES_FILE
    if not notes.exists():
        return []
    return [re.sub(r"^(#+) ", "#" * levels_down + r"\1 ", notes.read_text().strip(), flags=re.M), ""]


def load_heldout(results_dir) -> list[dict]:
    """The test-split cell files of `sharedllm eval heldout` under RESULTS/heldout/ (newest file per cell wins)."""
    found = []
    for path in sorted(Path(results_dir, HEADLINE_DIR).glob("*.json")):
        result = read_json(path)
        if not isinstance(result, dict):
            continue
        # a cell cut from a longer plan (`--targets-of`) scores other windows than its length's column
        # and a cell of another split (an ablation on validation documents) is no test number
        headline = "targets_of" not in result.get("plan", {}) and result.get("data", {}).get("split", "test") == "test"
        if result.get("task") == "heldout" and isinstance(result.get("summary"), dict) and headline:
            found.append(result | {"_file": f"{HEADLINE_DIR}/{path.name}"})
    newest = {}
    for result in oldest_to_newest(found):  # a newer file of a cell replaces the older
        newest[(result["domain"], int(result["length"]), result["method"])] = result
    return list(newest.values())


def heldout_cell_text(summary: dict) -> str:
    """'PPL [low, high] (n tok)' of a complete cell, else 'not run: reason' (and how many windows did run)."""
    if not summary.get("complete") or summary.get("ppl") is None:
        ran = summary.get("n_windows") or 0
        partial = f" ({ran} of {summary.get('n_planned')} windows ran)" if ran else ""
        return f"not run: {summary.get('not_run') or 'no windows'}{partial}"
    return (f"{summary['ppl']:.2f} [{summary['ci_low']:.2f}, {summary['ci_high']:.2f}] "
            f"({summary['scored_tokens']:,} tok)")


def _method_order(methods) -> list[str]:
    known = [m for m in HEADLINE_ORDER if m in methods]
    return known + sorted(set(methods) - set(known))


def _column_plans(cells: list[dict]) -> dict[int, str]:
    """length -> the window plan of that column: the plan most of its cells used (ties: the larger budget)."""
    votes = defaultdict(lambda: defaultdict(int))
    budget = {}
    for c in cells:
        plan = c["plan"]["windows_id"]
        votes[int(c["length"])][plan] += 1
        budget[plan] = max(budget.get(plan, 0), c["summary"].get("n_planned") or 0)
    return {n: max(v, key=lambda p: (v[p], budget[p])) for n, v in votes.items()}


def headline_table(cells: list[dict]) -> list[str]:
    """Rows methods, columns lengths; a cell scored on other windows than its column's is flagged, not shown."""
    plans, lengths = _column_plans(cells), sorted({int(c["length"]) for c in cells})
    by_key = {(c["method"], int(c["length"])): c for c in cells}
    planned = {n: max((c["summary"].get("n_planned") or 0) for c in cells if int(c["length"]) == n
                      and c["plan"]["windows_id"] == plans[n]) for n in lengths}
    lines = ["| method | " + " | ".join(f"{format_length(n)} ({planned[n]} win)" for n in lengths) + " |",
             "|---" * (len(lengths) + 1) + "|"]
    for method in _method_order({c["method"] for c in cells}):
        row = []
        for n in lengths:
            c = by_key.get((method, n))
            if c is None:
                row.append("–")
            elif c["plan"]["windows_id"] != plans[n]:
                row.append(f"other windows ({c['plan']['windows_id']}): not comparable")
            else:
                row.append(heldout_cell_text(c["summary"]))
        lines.append(f"| {method} | " + " | ".join(row) + " |")
    return lines


def paired_table(cells: list[dict], reference: str = "sharedllm") -> list[str]:
    """PPL of each method / PPL of `reference`, on the windows both scored (the column's plan), with the paired
    bootstrap interval (`heldout.paired_ratio`): > 1 means the reference is better. Empty without the reference."""
    from .heldout import paired_ratio

    plans, lengths = _column_plans(cells), sorted({int(c["length"]) for c in cells})

    def usable(c):
        return c is not None and c["plan"]["windows_id"] == plans[int(c["length"])] and c["summary"].get("complete")

    by_key = {(c["method"], int(c["length"])): c for c in cells}
    if not any(usable(by_key.get((reference, n))) for n in lengths):
        return []
    lines = ["| method | " + " | ".join(f"{format_length(n)} / {reference}" for n in lengths) + " |",
             "|---" * (len(lengths) + 1) + "|"]
    for method in _method_order({c["method"] for c in cells}):
        if method == reference:
            continue
        row = []
        for n in lengths:
            mine, ref = by_key.get((method, n)), by_key.get((reference, n))
            if not (usable(mine) and usable(ref)):
                row.append("–")
                continue
            nll = lambda c: {(w["doc"], w["start"]): w["mean_nll"] for w in c["windows"]}  # noqa: E731
            a, b = nll(mine), nll(ref)
            ratio, low, high = paired_ratio([a[k] for k in a], [b[k] for k in a])
            row.append(f"{ratio:.3f} [{low:.3f}, {high:.3f}]")
        lines.append(f"| {method} | " + " | ".join(row) + " |")
    return lines


def split_off_scale(series: dict[str, list]) -> tuple[dict[str, list], dict[str, list]]:
    """(the points drawn as lines, the points above OFF_SCALE x their length's median perplexity over methods), each
    {method: [(length, summary), ...]}."""
    by_length = defaultdict(list)
    for points in series.values():
        for n, s in points:
            by_length[n].append(s["ppl"])
    median = {n: statistics.median(values) for n, values in by_length.items()}
    off = {m: [(n, s) for n, s in points if s["ppl"] > OFF_SCALE * median[n]] for m, points in series.items()}
    kept = {m: [(n, s) for n, s in points if s["ppl"] <= OFF_SCALE * median[n]] for m, points in series.items()}
    return kept, off


def plot_heldout(cells: list[dict], path, title) -> bool:
    """PPL vs length per method with the bootstrap intervals as error bars; only complete cells on the column's
    windows are drawn, so every point of a length comes from the same windows. False (no file) if none is."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from matplotlib.ticker import ScalarFormatter

    plans = _column_plans(cells)
    colours = plt.get_cmap("tab10").colors
    methods = _method_order({c["method"] for c in cells})
    series = {method: sorted((int(c["length"]), c["summary"]) for c in cells if c["method"] == method
                             and c["plan"]["windows_id"] == plans[int(c["length"])]
                             and c["summary"].get("complete") and c["summary"].get("ppl") is not None)
              for method in methods}
    if not any(series.values()):
        return False
    series, off_scale = split_off_scale(series)
    fig, ax = plt.subplots(figsize=(9, 4.5))
    for i, method in enumerate(methods):
        points = series[method]
        if not points:
            continue
        dodge = 2 ** (0.025 * (i - (len(methods) - 1) / 2))  # side by side at each length: bars stay readable
        xs = [n * dodge for n, _ in points]
        ys = [s["ppl"] for _, s in points]
        errors = [[s["ppl"] - s["ci_low"] for _, s in points], [s["ci_high"] - s["ppl"] for _, s in points]]
        ax.errorbar(xs, ys, yerr=errors, marker="o", capsize=3, color=colours[i % len(colours)], label=method)
        ax.fill_between(xs, [s["ci_low"] for _, s in points], [s["ci_high"] for _, s in points],
                        color=colours[i % len(colours)], alpha=0.12, linewidth=0)
    shown = [s for points in series.values() for _, s in points]
    top = max(s["ci_high"] for s in shown) * 1.3
    ax.set_ylim(min(s["ci_low"] for s in shown) / 1.1, top)
    for i, method in enumerate(methods):
        for n, s in off_scale[method]:
            colour = colours[i % len(colours)]
            ax.plot([n], [top], marker="^", color=colour, clip_on=False,
                    label=None if series[method] else method)
            ax.annotate(f"{method} {s['ppl']:.0f} (off scale)", (n, top), textcoords="offset points", xytext=(6, -12),
                        fontsize=7, color=colour)
    lengths = sorted({int(c["length"]) for c in cells})
    ax.set_xscale("log", base=2)
    ax.set_xticks(lengths, [format_length(n) for n in lengths])
    ax.minorticks_off()
    ax.set_yscale("log")
    ax.yaxis.set_major_formatter(ScalarFormatter())
    ax.yaxis.set_minor_formatter(ScalarFormatter())
    ax.set_xlabel("context length T (tokens)")
    ax.set_ylabel("perplexity (95% bootstrap interval)")
    ax.set_title(title, fontsize=9)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(loc="upper left", bbox_to_anchor=(1.02, 1.0), fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return True


def headline_section(results_dir, figures: Path) -> list[str]:
    cells = load_heldout(results_dir)
    lines = ["## Headline: perplexity per domain, every method on the same held-out windows", ""]
    if not cells:
        return lines + [f"No held-out cells yet in `{results_dir}/{HEADLINE_DIR}/`: `scripts/evaluate_grid.sh` "
                        "runs the grid (`sharedllm eval heldout`).", ""]
    lines += [f"Protocol: {HEADLINE_PROTOCOL}. A cell a method could not run says why (\"not run: ...\"); no "
              "window is ever replaced by another. Test documents: `sharedllm/splits.json`.", ""]
    for domain in sorted({c["domain"] for c in cells}):
        domain_cells = [c for c in cells if c["domain"] == domain]
        models = sorted({model_folder(c.get("model")) for c in domain_cells})
        docs = max((c["data"]["docs"] for c in domain_cells), key=len)
        lines += [f"### {domain} — model `{', '.join(models)}`, {len(docs)} test documents "
                  f"({', '.join(f'{d} {n:,} tok' for d, n in docs.items())})", ""]
        lines += headline_table(domain_cells) + [""]
        paired = paired_table(domain_cells)
        if paired:
            lines += ["PPL relative to sharedllm on the same windows, with the 95% paired bootstrap interval "
                      "(window pairs resampled together, so how hard a window is cancels out; > 1: sharedllm is better):",
                      ""] + paired + [""]
        figure = f"headline-ppl-{slug(domain)}.png"
        if plot_heldout(domain_cells, figures / figure, f"held-out {domain}: PPL vs length, same windows per length"):
            lines += [f"![perplexity vs length, {domain}](figures/{figure})", ""]
        lines += ["Provenance (per method: its knobs, cell files with the seconds their windows took to score, and "
                  "command; a cell that scored no window is left out, the table says why):", ""]
        scored = [c for c in domain_cells if c["summary"].get("n_windows")]  # an empty cell's command measured nothing
        for method in _method_order({c["method"] for c in scored}):
            lines += method_provenance(method, [c for c in scored if c["method"] == method])
        lines.append("")
    # the hand-written reading of these tables, after them: the section opens with the numbers
    return lines + included_notes(Path(results_dir, HEADLINE_DIR), levels_down=2)


def method_provenance(method, cells) -> list[str]:
    """One line per distinct (adapter, knobs) a method's cells ran with, naming the lengths of each: a method rerun
    at some lengths with other knobs shows both, never only one of them."""
    by_config = {}
    for cell in sorted(cells, key=lambda c: int(c["length"])):
        key = (str(cell.get("adapter")), json.dumps(cell.get("method_config", {})))
        by_config.setdefault(key, []).append(cell)
    lines = []
    for (adapter, config), mine in by_config.items():
        lengths = ", ".join(format_length(int(c["length"])) for c in mine)
        by_hardware = {}  # one config's cells may have run on several machines (a lent GPU, then this CPU)
        for cell in mine:
            by_hardware.setdefault(_hardware_label(cell.get("hardware", {})), []).append(cell)
        lines += [f"- **{method}** ({lengths}): adapter `{adapter}`, config `{config}`; "
                  + "; ".join("files " + ", ".join(dict.fromkeys(f"`{c['_file']}` ({_cost(c)})" for c in cells))
                              + f" on {hardware}" for hardware, cells in by_hardware.items())]
        lines += [f"  `{command}`" for command in dict.fromkeys(c.get("command", "") for c in mine)]
        # the command wrote under another name, which may hold another run's cell now: a rerun names the label
        lines += [f"  (relabelled: {note}; a rerun passes `--label {label}`)"  # the file's name, not the row's
                  for note, label in dict.fromkeys((c["relabelled"], c["method"]) for c in mine if c.get("relabelled"))]
    return lines


def _machine_name(hw: dict) -> str | None:
    """A hardware block's machine as `provenance.machine` names it in journals: the GPU, else the CPU."""
    return hw.get("gpu") or hw.get("cpu")


def _hardware_label(hw: dict) -> str:
    return f"{_machine_name(hw)} ({hw.get('threads')} threads, {hw.get('dtype')})"


def _cost(cell) -> str:
    """A result's compute time: a held-out cell's windows' own seconds, summed over every run that scored them (a
    cell finished from a stopped run's journal took far longer than its last run's wall time); a trial run's wall
    time, saying how many of its trials an earlier run journaled (their time is not in it)."""
    scored = [w["seconds"] for w in cell.get("windows", []) if "seconds" in w]
    if scored:
        return f"{sum(scored):.0f} s" + _elsewhere(by_machine(cell["windows"]), cell, "windows")
    reused = cell.get("counts", {}).get("trials_from_a_stopped_run", 0)
    return (f"{cell.get('wall_time_s', 0):.0f} s" + (f"; {reused} trials run before, journaled" if reused else "")
            + _elsewhere(cell.get("counts", {}).get("trials_by_machine", {}), cell, "trials"))


def _elsewhere(machines: dict[str, int], cell, unit: str) -> str:
    """Where a result's trials ran, when not all on the machine its hardware block names (it finished a journal
    that another machine started); nothing for untagged records alone (journaled before the tags existed)."""
    if set(machines) <= {_machine_name(cell.get("hardware", {})), "not recorded"}:
        return ""
    return f"; {unit} by machine: " + ", ".join(f"{name} {n}" for name, n in machines.items())


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
             f"Generated by `sharedllm report` from `{results_dir}/*.json` and `{results_dir}/{HEADLINE_DIR}/*.json`; "
             "do not edit by hand. Every table names its protocol, model and data; the counts and the command behind "
             "each row follow it.", ""]
    lines += headline_section(results_dir, figures)
    lines += retrieval_section(results_dir, figures)
    lines += ["## Previous results", "",
              "The runs before the held-out grid: fewer windows (8, 2 or 1 per cell) of the two test books, rows "
              "compared only where the counts say they share windows.", ""]
    # the hand-written reading of the numbers (targets, gaps, causes), inside "Previous results"
    lines += included_notes(Path(results_dir), levels_down=1)
    for task in TASK_TITLES:
        keys = sorted(k for k in groups if k[0] == task)
        if keys:
            lines += [f"### {TASK_TITLES[task]}", ""]
        for key in keys:
            _, protocol, model, split, data = key
            by_method = latest_by_method(groups[key])
            name = slug("-".join(key))
            where = f"data `{data or '?'}`" + (f" ({split} split)" if split else "")
            lines += [f"#### {protocol or task} — model `{model}`, {where}", ""]
            if protocol in PROTOCOL_NOTES:
                lines += [f"Protocol: {PROTOCOL_NOTES[protocol]}.", ""]
            lines += table(task, by_method) + [""]
            if task in ("ruler", "longbench"):
                lines += breakdown(task, by_method) + [""]
            if task == "ppl" and plot_ppl(by_method, figures / f"{name}.png", f"{protocol} PPL, {model}, {data}"):
                lines += [f"![perplexity vs length](figures/{name}.png)", ""]
            if task in ("passkey", "niah"):
                for method, result in by_method.items():  # method: the row's label
                    figure = f"{name}-{slug(method)}.png"
                    plot_heatmap(result["details"]["cells"], figures / figure, f"{task}: {method}, {model}")
                    lines += [f"![{task} {method}](figures/{figure})"]
                lines.append("")
            sources = [source for r in by_method.values() for source in r["_sources"]]
            lines += ["Provenance:", ""] + [p for r in sources for p in provenance(r)] + [""]
    path = docs_dir / "results.md"
    path.write_text("\n".join(lines))
    return path
