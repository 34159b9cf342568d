"""The retrieval headline of `sharedllm report`: passkey and RULER needle tasks per method and length, from the
result files of `sharedllm eval passkey` / `eval ruler` in RESULTS/retrieval/ (written there by
`scripts/evaluate_grid.sh retrieval`), then the hand-written reading of them in RESULTS/retrieval/NOTES.md if any.

A file may hold several lengths (and RULER files several tasks); a cell is one (row, length) for passkey and one
(row, task, length) for RULER, taken from the newest file of its row that measured it, so runs of one length at a time
fill one row. A row is one method label with one base model, adapter and set of knobs (`report.group_rows`): a label
run with another base or adapter is a row of its own, named by what differs, never a cell replaced. Each cell shows
correct / trials, the accuracy and its 95% Wilson interval: 50 of 50 trials bound the accuracy below by 93%, which
is what a ">= 95%" claim on 50 trials can and cannot say.
"""

import math
from collections import defaultdict
from pathlib import Path

from sharedllm.flags import format_length
from sharedllm.provenance import read_json

RETRIEVAL_DIR = "retrieval"  # under the results folder
RETRIEVAL_TASKS = ("passkey", "ruler")
Z_95 = 1.959964


def wilson_interval(successes: float, trials: int, z: float = Z_95) -> tuple[float, float]:
    """95% Wilson score interval of a proportion (stays inside [0, 1] and is not empty at 0 or n successes)."""
    if trials < 1:
        raise ValueError(f"trials must be at least 1, got {trials}")
    p = successes / trials
    centre = (p + z * z / (2 * trials)) / (1 + z * z / trials)
    half = z * math.sqrt(p * (1 - p) / trials + z * z / (4 * trials * trials)) / (1 + z * z / trials)
    return max(0.0, centre - half), min(1.0, centre + half)


def trial_cell(task: str, record: dict) -> tuple:
    """The cell a trial record belongs to, without the method: (length,) or (task name, length)."""
    return (int(record["length"]),) if task == "passkey" else (record["task"], int(record["length"]))


def load_retrieval(results_dir) -> dict[str, dict[tuple, dict]]:
    """task -> {(row label, *cell key): {"records": [...], "file": result}}; for each cell the newest file of its row
    measuring it (the row label is the method, plus what tells its rows apart: `report.row_labels`)."""
    from .report import group_rows, row_labels

    files = []
    for path in sorted(Path(results_dir, RETRIEVAL_DIR).glob("*.json")):
        result = read_json(path)
        if isinstance(result, dict) and result.get("task") in RETRIEVAL_TASKS and "records" in result.get("details", {}):
            if result["task"] == "ruler" and result.get("data", {}).get("split") != "test":
                from sharedllm.cli import InputError

                raise InputError(f"{path}: a RULER run on the {result.get('data', {}).get('split')!r} split; the "
                                 "headline reads test haystacks only: move it out of the folder")
            files.append(result | {"_file": f"{RETRIEVAL_DIR}/{path.name}"})
    cells = defaultdict(dict)
    for task in RETRIEVAL_TASKS:
        rows = group_rows([result for result in files if result["task"] == task])
        for label, (_, row_files) in zip(row_labels(rows), rows):
            for result in row_files:  # oldest first: newer files overwrite cells
                by_cell = defaultdict(list)
                for record in result["details"]["records"]:
                    by_cell[(label, *trial_cell(task, record))].append(record)
                for key, records in by_cell.items():
                    cells[task][key] = {"records": records, "file": result}
    return cells


def trial_score(task: str, record: dict) -> float:
    """A trial's score: passkey's right / wrong as 1 / 0, RULER's string-match score."""
    return float(record["correct"]) if task == "passkey" else float(record["score"])


def _hits(task: str, records: list[dict]) -> float:
    return sum(trial_score(task, r) for r in records)


def cell_text(task: str, records: list[dict]) -> str:
    """'correct/trials (acc%, 95% CI low-high)'; RULER's multi-value scores may make `correct` fractional."""
    hits, n = _hits(task, records), len(records)
    low, high = wilson_interval(hits, n)
    return f"{hits:g}/{n} ({100 * hits / n:.0f}%, {100 * low:.0f}-{100 * high:.0f})"


def retrieval_table(task: str, cells: dict[tuple, dict]) -> list[str]:
    """Rows: methods (passkey) or method / task (RULER), in the headline's method order; columns: lengths."""
    from .report import _method_order

    order = _method_order({key[0] for key in cells})
    rows = sorted({key[:-1] for key in cells}, key=lambda row: (order.index(row[0]), row[1:]))
    lengths = sorted({key[-1] for key in cells})
    lines = ["| " + ("method" if task == "passkey" else "method | task") + " | "
             + " | ".join(format_length(n) for n in lengths) + " |",
             "|---" * (len(rows[0]) + len(lengths)) + "|"]
    for row in rows:
        texts = [cell_text(task, cells[(*row, n)]["records"]) if (*row, n) in cells else "–" for n in lengths]
        lines.append("| " + " | ".join(row) + " | " + " | ".join(texts) + " |")
    return lines


def passkey_heatmap_cells(cells: dict[tuple, dict], method: str) -> list[dict]:
    """The (length, depth) accuracy cells of one method, for `passkey.plot_heatmap`."""
    by_depth = defaultdict(list)
    for (name, length), cell in cells.items():
        if name == method:
            for record in cell["records"]:
                by_depth[(length, record["depth"])].append(record["correct"])
    return [{"length": length, "depth": depth, "accuracy": sum(v) / len(v)} for (length, depth), v in by_depth.items()]


def retrieval_section(results_dir, figures: Path) -> list[str]:
    """The report's retrieval headline (nothing when RESULTS/retrieval/ holds no result)."""
    from .passkey import plot_heatmap
    from .report import _method_order, included_notes, method_provenance, model_folder, slug

    loaded = load_retrieval(results_dir)
    if not loaded:
        return []
    lines = ["## Headline: retrieval (passkey and RULER needles) per length", "",
             f"From `{results_dir}/{RETRIEVAL_DIR}/` (`sharedllm eval passkey` / `eval ruler`, greedy generation; "
             "passkey: Landmark format, synthetic filler, depths 0-100%; RULER: the needle templates in held-out "
             "test books prose, string-match scoring). Each cell: correct / trials (accuracy, 95% Wilson interval); "
             "a cell comes from the newest file that measured it with the row's base model, adapter and knobs.", ""]
    for task in RETRIEVAL_TASKS:
        cells = loaded.get(task)
        if not cells:
            continue
        models = sorted({model_folder(cell["file"].get("model")) for cell in cells.values()} - {""})
        lines += [f"### {'Passkey retrieval (Landmark)' if task == 'passkey' else 'RULER needle tasks'}"
                  + (f" — model `{', '.join(models)}`" if models else ""), ""]
        lines += retrieval_table(task, cells) + [""]
        methods = _method_order({key[0] for key in cells})
        if task == "passkey":
            for method in methods:
                figure = f"headline-passkey-{slug(method)}.png"
                plot_heatmap(passkey_heatmap_cells(cells, method), figures / figure,
                             f"passkey (Landmark): {method}, accuracy per depth and length")
                lines.append(f"![passkey {method}](figures/{figure})")
            lines.append("")
        lines += ["Provenance (per method: its knobs, result files and command):", ""]
        for method in methods:
            files = {}  # one pseudo-cell per (file, length) the method's cells came from
            for key, cell in cells.items():
                if key[0] == method:
                    files[(cell["file"]["_file"], key[-1])] = cell["file"] | {"length": key[-1]}
            lines += method_provenance(method, list(files.values()))
        lines.append("")
    # the hand-written reading against the targets, after the tables it reads
    return lines + included_notes(Path(results_dir, RETRIEVAL_DIR), levels_down=2)
