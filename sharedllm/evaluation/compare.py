"""`sharedllm compare A.json B.json`: two result files of the same evaluation, compared on what both measured.

A pair of held-out perplexity cells (`sharedllm eval heldout`, same domain and length, or two lengths cut from one
plan with `--targets-of`) gives PPL(A) / PPL(B) over the windows both scored (paired by the tokens they score), with
the paired bootstrap interval (`heldout.paired_ratio`): how hard a window is cancels, so two methods whose own
intervals overlap can still separate. Two `sharedllm eval ppl` runs of one protocol (a user's `--data`, say) give
the same per length they both ran, token-weighted under the sliding protocol as its PPL is. A pair of retrieval
files (`eval passkey` / `eval ruler`) gives, per cell, both accuracies on the trials both ran and how many trials
each won, with the exact two-sided sign test on those wins (McNemar's test for right/wrong answers). Trials are
matched by their position (length, task, depth, trial) and must hold the same prompt (same needle value). Two files
must name the same tokenizer (or, from before results recorded it, the same base model) and the same data (its
source, split and domains, as the result records them): a RULER needle's value depends on the seed and its position
only, not on the haystack, so runs on other data are refused by what the files record, and runs of another seed by
their needle values.
"""

import json
import math
from collections import defaultdict
from pathlib import Path

import numpy as np

from sharedllm.flags import format_length

from .heldout import paired_ratio, scored_windows, targets_length
from .report import model_folder
from .retrieval_report import RETRIEVAL_TASKS, trial_cell, trial_score


def add_arguments(parser):
    parser.add_argument("files", nargs=2, metavar="RESULT.json",
                        help="two result files of one task: held-out cells of the same domain and length, two `eval "
                             "ppl` runs of one protocol, or two passkey / two RULER files; ratios and wins are the "
                             "first over the second")


def run(args):
    first, second = (load(path) for path in args.files)
    if first["task"] != second["task"]:
        _refuse(f"{args.files[0]} is a {first['task']} result, {args.files[1]} a {second['task']} one")
    refuse_other_inputs(first, second)
    lines = {"heldout": heldout_lines, "ppl": ppl_lines}.get(first["task"], retrieval_lines)(first, second)
    bases = [model_folder(r.get("model")) for r in (first, second)]
    other_bases = [f"bases: A {bases[0]}, B {bases[1]} (one tokenizer)"] if bases[0] != bases[1] else []
    print("\n".join([f"A = {args.files[0]} ({label(first)})", f"B = {args.files[1]} ({label(second)})", *other_bases,
                     *lines]))


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
    if task == "ppl" and isinstance(result.get("details"), dict):
        if all("windows" in cell for cell in result["details"].values()):
            return result
        _refuse(f"{path} records no per-window NLL (an `eval ppl` run from before they were recorded): run it again")
    _refuse(f"{path} is not a held-out, perplexity, passkey or RULER result of `sharedllm eval` (task {task!r})")


# What a result records about its data (held-out cells' domain is checked with their windows, in heldout_lines).
DATA_FIELDS = ("source", "split", "domains")


def refuse_other_inputs(first: dict, second: dict):
    """Refuse two runs of another tokenizer or on other data: their trials or windows are not the same prompts.

    Two bases of one tokenizer fingerprint (recorded since 2026-12-06) read the same tokens, so their runs pair: a
    base and its fine-tune, or one LoRA merged and another. Results from before name no tokenizer and pair only
    on one base model (by its folder's name)."""
    tokenizers = [r.get("tokenizer") for r in (first, second)]
    if None in tokenizers:
        if model_folder(first.get("model")) != model_folder(second.get("model")):
            _refuse(f"runs of another base model: {first.get('model')} vs {second.get('model')} (a result that "
                    f"records its tokenizer pairs with another base of the same tokenizer: rerun with this release)")
    elif tokenizers[0] != tokenizers[1]:
        _refuse(f"runs of another tokenizer ({tokenizers[0]} vs {tokenizers[1]}; bases {first.get('model')} vs "
                f"{second.get('model')}): their windows and prompts are other tokens")
    for field in DATA_FIELDS:
        values = [(r.get("data") or {}).get(field) for r in (first, second)]
        if values[0] != values[1]:
            _refuse(f"runs on other data: data {field} {values[0]!r} vs {values[1]!r}")


def cell_key(result: dict) -> tuple:
    """What two results of one cell share, so that a grid of one reading pairs with another's file by file: the
    windows a held-out cell scores (domain, length, split, window plan), the prompts a retrieval file asks (lengths,
    data, trial counts, seed, RULER tasks). A run continued on another machine counts the same trials."""
    if result["task"] == "heldout":
        return ("heldout", result["domain"], result["length"], result["data"]["split"], result["plan"]["windows_id"])
    counts = {k: v for k, v in result["counts"].items() if k not in ("trials_from_a_stopped_run", "trials_by_machine")}
    return (result["task"], tuple(result["lengths"]), json.dumps(result["data"], sort_keys=True),
            json.dumps(counts, sort_keys=True), result["seed"], tuple(result["details"].get("tasks") or ()))


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
    lengths = [format_length(int(r["length"])) for r in (first, second)]
    cell = lengths[0] if plans[0] == int(first["length"]) == int(second["length"]) else \
        f"A {lengths[0]} / B {lengths[1]} of context on the targets of the {format_length(plans[0])} plan"
    return paired_lines(f"{first['domain']} {cell}", [scored_windows(r) for r in (first, second)])


def ppl_lines(first: dict, second: dict) -> list[str]:
    """Per length both `eval ppl` runs scored: the paired ratio over the windows both scored (the same tokens)."""
    if first["protocol"] != second["protocol"]:
        _refuse(f"perplexity runs of another protocol: {first['protocol']} vs {second['protocol']}")
    lengths = sorted(set(first["details"]) & set(second["details"]), key=int)
    if not lengths:
        _refuse(f"the two runs share no length: {sorted(first['details'], key=int)} vs "
                f"{sorted(second['details'], key=int)}")
    lines = []
    for length in lengths:
        scored = [{(w["domain"], w["doc"], w["score_start"], w["end"]): w for w in r["details"][length]["windows"]}
                  for r in (first, second)]
        lines += paired_lines(f"{format_length(int(length))} ({first['protocol']} protocol)", scored,
                              weighted=first["protocol"] == "sliding")
    return lines


def paired_lines(cell: str, scored: list[dict], weighted: bool = False) -> list[str]:
    """The lines of one paired cell from two {key of the tokens scored: window record} maps: windows both scored,
    both PPLs on them, the paired ratio and its interval (`weighted`: by scored tokens), and per document."""
    common = [key for key in scored[0] if key in scored[1]]
    if not common:
        _refuse(f"{cell}: the two runs share no scored window (another window plan, or nothing scored)")
    a, b = ([s[key]["mean_nll"] for key in common] for s in scored)
    weights = [scored[0][key]["scored_tokens"] for key in common] if weighted else None
    ratio, low, high = paired_ratio(a, b, weights=weights)
    tokens = sum(scored[0][key]["scored_tokens"] for key in common)
    left_out = [len(s) - len(common) for s in scored]
    docs = [scored[0][key]["doc"] for key in common]
    return [f"{cell}: {len(common)} windows scored by both ({tokens} tokens)"
            + (f"; left out, scored by one only: A {left_out[0]}, B {left_out[1]}" if any(left_out) else ""),
            f"PPL A {math.exp(np.average(a, weights=weights)):.3f}, B {math.exp(np.average(b, weights=weights)):.3f}",
            f"PPL A / PPL B = {ratio:.3f} [{low:.3f}, {high:.3f}] (95% paired bootstrap over windows; < 1: A reads "
            f"lower): {ratio_verdict(low, high)}",
            *per_document_lines(docs, a, b, weights)]


def ratio_verdict(low: float, high: float) -> str:
    """Which side a PPL A / PPL B interval favours, judged as printed: 1.000 [1.000, 1.000] is level."""
    if round(high, 3) < 1:
        return "A is better (separated from 1)"
    if round(low, 3) > 1:
        return "B is better (separated from 1)"
    return "level (not separated from 1)"


def per_document_lines(docs: list[str], a: list[float], b: list[float], weights: list | None = None) -> list[str]:
    """The ratio per document, when the windows come from several: a column's windows fall in its documents by
    chance, and with few documents (2 test books) which one they fall in can move the ratio more than the length."""
    by_doc = defaultdict(list)
    for i, doc in enumerate(docs):
        by_doc[doc].append(i)
    if len(by_doc) < 2:
        return []
    lines = ["per document (PPL A / PPL B on its windows, paired interval):"]
    for doc, rows in sorted(by_doc.items()):
        ratio, low, high = paired_ratio([a[i] for i in rows], [b[i] for i in rows],
                                        weights=[weights[i] for i in rows] if weights else None)
        lines.append(f"  {doc}: {ratio:.3f} [{low:.3f}, {high:.3f}] ({len(rows)} windows)")
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
