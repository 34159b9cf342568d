"""`sharedllm compare A.json B.json`: two result files of the same evaluation, compared on what both measured.

A pair of held-out perplexity cells (`sharedllm eval heldout`, same domain and length, or two lengths cut from one
plan with `--targets-of`) gives PPL(A) / PPL(B) over the windows both scored (paired by the tokens they score), with
the paired bootstrap interval (`heldout.paired_ratio`): how hard a window is cancels, so two methods whose own
intervals overlap can still separate. A pair of retrieval files (`eval passkey` /
`eval ruler`) gives, per cell, both accuracies on the trials both ran and how many trials each won, with the exact
two-sided sign test on those wins (McNemar's test for right/wrong answers). Trials are matched by their position
(length, task, depth, trial) and must hold the same prompt (same needle value). Two files must name the same base
model and the same data (its source, split and domains, as the result records them): a RULER needle's value
depends on the seed and its position only, not on the haystack, so runs on other data are refused by what the
files record, and runs of another seed by their needle values.
"""

import json
import math
from collections import defaultdict
from pathlib import Path

from sharedllm.flags import format_length

from .heldout import paired_ratio, scored_windows, targets_length
from .report import model_folder
from .retrieval_report import RETRIEVAL_TASKS, trial_cell, trial_score


def add_arguments(parser):
    parser.add_argument("files", nargs=2, metavar="RESULT.json",
                        help="two result files of one task: held-out cells of the same domain and length, or two "
                             "passkey / two RULER files; ratios and wins are the first over the second")


def run(args):
    first, second = (load(path) for path in args.files)
    if first["task"] != second["task"]:
        _refuse(f"{args.files[0]} is a {first['task']} result, {args.files[1]} a {second['task']} one")
    refuse_other_inputs(first, second)
    lines = heldout_lines(first, second) if first["task"] == "heldout" else retrieval_lines(first, second)
    print("\n".join([f"A = {args.files[0]} ({label(first)})", f"B = {args.files[1]} ({label(second)})", *lines]))


def _refuse(message: str):
    from sharedllm.cli import InputError

    raise InputError(message)


def load(path) -> dict:
    try:
        result = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError) as err:
        _refuse(f"cannot read {path}: {err}")
    task = result.get("task") if isinstance(result, dict) else None
    if task == "heldout" and isinstance(result.get("windows"), list):
        return result
    if task in RETRIEVAL_TASKS and "records" in result.get("details", {}):
        return result
    _refuse(f"{path} is not a held-out, passkey or RULER result of `sharedllm eval` (task {task!r})")


# What a result records about its data (held-out cells' domain is checked with their windows, in heldout_lines).
DATA_FIELDS = ("source", "split", "domains")


def refuse_other_inputs(first: dict, second: dict):
    """Refuse two runs of another base model or on other data: their trials or windows are not the same prompts."""
    if model_folder(first.get("model")) != model_folder(second.get("model")):
        _refuse(f"runs of another base model: {first.get('model')} vs {second.get('model')}")
    for field in DATA_FIELDS:
        values = [(r.get("data") or {}).get(field) for r in (first, second)]
        if values[0] != values[1]:
            _refuse(f"runs on other data: data {field} {values[0]!r} vs {values[1]!r}")


def label(result: dict) -> str:
    """The method as the run named it (`--label` replaces the method's name) and its adapter, if any."""
    return f"{result['method']}, adapter {result['adapter']}" if result.get("adapter") else result["method"]


def heldout_lines(first: dict, second: dict) -> list[str]:
    """PPL(A) / PPL(B) over the windows both scored, its paired interval, and each side's PPL on those windows."""
    if first["domain"] != second["domain"]:
        _refuse(f"held-out cells of another domain: {first['domain']} vs {second['domain']}")
    plans = [targets_length(r) for r in (first, second)]
    if plans[0] != plans[1]:
        _refuse(f"held-out cells of another length: {first['length']} vs {second['length']} (cells of two lengths "
                f"compare only on one plan's targets: `eval heldout --targets-of`)")
    scored = [scored_windows(r) for r in (first, second)]  # paired by the tokens they score
    common = [key for key in scored[0] if key in scored[1]]
    if not common:
        _refuse("the two cells share no scored window (another window plan, or nothing scored)")
    a, b = ([s[key]["mean_nll"] for key in common] for s in scored)
    ratio, low, high = paired_ratio(a, b)
    tokens = sum(scored[0][key]["scored_tokens"] for key in common)
    left_out = [len(s) - len(common) for s in scored]
    separated = round(high, 3) < 1 or round(low, 3) > 1  # as printed: 1.000 [1.000, 1.000] is level, not separated
    lengths = [format_length(int(r["length"])) for r in (first, second)]
    cell = lengths[0] if plans[0] == int(first["length"]) == int(second["length"]) else \
        f"A {lengths[0]} / B {lengths[1]} of context on the targets of the {format_length(plans[0])} plan"
    return [f"{first['domain']} {cell}: {len(common)} windows scored by both "
            f"({tokens} tokens)" + (f"; left out, scored by one only: A {left_out[0]}, B {left_out[1]}"
                                    if any(left_out) else ""),
            f"PPL A {math.exp(sum(a) / len(a)):.3f}, B {math.exp(sum(b) / len(b)):.3f}",
            f"PPL A / PPL B = {ratio:.3f} [{low:.3f}, {high:.3f}] (95% paired bootstrap over windows; < 1: A is "
            f"better, {'separated' if separated else 'not separated'} from 1)", *per_document_lines(common, a, b)]


def per_document_lines(common: list[tuple[str, int]], a: list[float], b: list[float]) -> list[str]:
    """The ratio per document, when the windows come from several: a column's windows fall in its documents by
    chance, and with few documents (2 test books) which one they fall in can move the ratio more than the length."""
    by_doc = defaultdict(list)
    for (doc, _), nll_a, nll_b in zip(common, a, b):
        by_doc[doc].append((nll_a, nll_b))
    if len(by_doc) < 2:
        return []
    lines = ["per document (PPL A / PPL B on its windows, paired interval):"]
    for doc, pairs in sorted(by_doc.items()):
        ratio, low, high = paired_ratio([p[0] for p in pairs], [p[1] for p in pairs])
        lines.append(f"  {doc}: {ratio:.3f} [{low:.3f}, {high:.3f}] ({len(pairs)} windows)")
    return lines


def trial_position(task: str, record: dict) -> tuple:
    """Where a trial sits in its run, its cell, depth (passkey's; RULER draws it) and number: the same position in
    two runs of one seed holds the same prompt."""
    return *trial_cell(task, record), record.get("depth"), int(record["trial"])


def trial_answer(task: str, record: dict):
    """What the prompt asked for, to check that two runs' trials at one position are the same prompt."""
    return record["key"] if task == "passkey" else tuple(record["golds"])


def sign_test(wins: int, losses: int) -> float:
    """Exact two-sided sign test: P(a split at least this uneven | each non-tied trial a fair coin)."""
    n = wins + losses
    if n == 0:
        return 1.0
    tail = sum(math.comb(n, k) for k in range(0, min(wins, losses) + 1)) / 2 ** n
    return min(1.0, 2 * tail)


def retrieval_lines(first: dict, second: dict) -> list[str]:
    """Per cell (length, or RULER task and length): both accuracies on the shared trials, wins and the sign test."""
    task = first["task"]
    records = [{trial_position(task, r): r for r in result["details"]["records"]} for result in (first, second)]
    common = [pos for pos in records[0] if pos in records[1]]
    if not common:
        _refuse("the two files share no trial (other lengths, tasks or trial counts)")
    for pos in common:
        if trial_answer(task, records[0][pos]) != trial_answer(task, records[1][pos]):
            _refuse(f"trial {pos} asks for another answer in each file (another seed or data): not the same prompts")
    cells = defaultdict(list)
    for pos in common:
        a, b = records[0][pos], records[1][pos]
        cells[trial_cell(task, a)].append((trial_score(task, a), trial_score(task, b)))
    lines = ["cell: A score, B score on the trials both ran; trials A won / lost; sign test p (two-sided)"]
    for cell, pairs in sorted(cells.items()):
        name = " ".join(format_length(c) if isinstance(c, int) else c for c in cell)
        wins, losses = sum(a > b for a, b in pairs), sum(a < b for a, b in pairs)
        lines.append(f"{name}: A {sum(a for a, _ in pairs):g}/{len(pairs)}, B {sum(b for _, b in pairs):g}/{len(pairs)}; "
                     f"A won {wins}, lost {losses}; p = {sign_test(wins, losses):.3g}")
    return lines
