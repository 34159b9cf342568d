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
from dataclasses import dataclass
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


@dataclass
class PairedRatio:
    """PPL(A) / PPL(B) of one cell over the windows both runs scored: its paired bootstrap interval, both PPLs on
    those windows and, where they come from several documents, the ratio per document."""

    cell: str
    windows: int
    tokens: int
    left_out: tuple[int, int]  # windows scored by A only, by B only
    ppl_a: float
    ppl_b: float
    ratio: float
    low: float
    high: float
    per_document: list[tuple[str, float, float, float, int]]  # (doc, ratio, low, high, windows)

    def better(self) -> str | None:
        """"A" or "B" where the interval, as printed, lies on one side of 1; None where it does not."""
        if round(self.high, 3) < 1:
            return "A"
        if round(self.low, 3) > 1:
            return "B"
        return None

    def ratio_line(self) -> str:
        better = self.better()
        verdict = f"{better} is better (separated from 1)" if better else "level (not separated from 1)"
        return (f"PPL A / PPL B = {self.ratio:.3f} [{self.low:.3f}, {self.high:.3f}] (95% paired bootstrap over "
                f"windows; < 1: A reads lower): {verdict}")

    def lines(self) -> list[str]:
        a_only, b_only = self.left_out
        left_out = f"; left out, scored by one only: A {a_only}, B {b_only}" if a_only or b_only else ""
        lines = [f"{self.cell}: {self.windows} windows scored by both ({self.tokens} tokens){left_out}",
                 f"PPL A {self.ppl_a:.3f}, B {self.ppl_b:.3f}", self.ratio_line()]
        if self.per_document:
            # a column's windows fall in its documents by chance, and with few documents (2 test books) which one
            # they fall in can move the ratio more than the length
            lines.append("per document (PPL A / PPL B on its windows, paired interval):")
            lines += [f"  {doc}: {ratio:.3f} [{low:.3f}, {high:.3f}] ({n} windows)"
                      for doc, ratio, low, high, n in self.per_document]
        return lines


def paired_heldout(first: dict, second: dict) -> PairedRatio:
    """Two held-out cells of one domain, on the windows both scored (refused where they do not pair)."""
    if first["domain"] != second["domain"]:
        _refuse(f"held-out cells of another domain: {first['domain']} vs {second['domain']}")
    plans = [targets_length(r) for r in (first, second)]
    if plans[0] != plans[1]:
        _refuse(f"held-out cells of another length: {first['length']} vs {second['length']} (cells of two lengths "
                f"compare only on one plan's targets: `eval heldout --targets-of`)")
    lengths = [format_length(int(r["length"])) for r in (first, second)]
    cell = lengths[0] if plans[0] == int(first["length"]) == int(second["length"]) else \
        f"A {lengths[0]} / B {lengths[1]} of context on the targets of the {format_length(plans[0])} plan"
    return paired_windows(f"{first['domain']} {cell}", [scored_windows(r) for r in (first, second)])


def heldout_lines(first: dict, second: dict) -> list[str]:
    """PPL(A) / PPL(B) over the windows both scored, its paired interval, and each side's PPL on those windows."""
    return paired_heldout(first, second).lines()


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
        lines += paired_windows(f"{format_length(int(length))} ({first['protocol']} protocol)", scored,
                                weighted=first["protocol"] == "sliding").lines()
    return lines


def paired_windows(cell: str, scored: list[dict], weighted: bool = False) -> PairedRatio:
    """One paired cell from two {key of the tokens scored: window record} maps: the windows both scored, the ratio
    of their PPLs and its interval (`weighted`: by scored tokens), also per document."""
    common = [key for key in scored[0] if key in scored[1]]
    if not common:
        _refuse(f"{cell}: the two runs share no scored window (another window plan, or nothing scored)")
    a, b = ([s[key]["mean_nll"] for key in common] for s in scored)
    weights = [scored[0][key]["scored_tokens"] for key in common] if weighted else None
    ratio, low, high = paired_ratio(a, b, weights=weights)
    by_doc = defaultdict(list)
    for i, key in enumerate(common):
        by_doc[scored[0][key]["doc"]].append(i)
    per_document = []
    if len(by_doc) > 1:
        for doc, rows in sorted(by_doc.items()):
            doc_ratio, doc_low, doc_high = paired_ratio(
                [a[i] for i in rows], [b[i] for i in rows], weights=[weights[i] for i in rows] if weights else None
            )
            per_document.append((doc, doc_ratio, doc_low, doc_high, len(rows)))
    return PairedRatio(
        cell, len(common), sum(scored[0][key]["scored_tokens"] for key in common),
        (len(scored[0]) - len(common), len(scored[1]) - len(common)),
        math.exp(np.average(a, weights=weights)), math.exp(np.average(b, weights=weights)),
        ratio, low, high, per_document,
    )


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


@dataclass
class PairedTrials:
    """One retrieval cell (a length, or a RULER task and length) on the trials both runs ran: each side's score,
    how many trials each won, and the exact sign test on those wins."""

    cell: str
    score_a: float
    score_b: float
    trials: int
    wins: int  # trials A scored higher on
    losses: int  # trials B scored higher on

    def line(self) -> str:
        return (f"{self.cell}: A {self.score_a:g}/{self.trials}, B {self.score_b:g}/{self.trials}; A won {self.wins}, "
                f"lost {self.losses}; p = {sign_test(self.wins, self.losses):.3g}")


def paired_trials(first: dict, second: dict) -> list[PairedTrials]:
    """Per cell, both runs' scores on the trials both ran (refused where they hold other prompts)."""
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
    return [PairedTrials(" ".join(format_length(c) if isinstance(c, int) else c for c in cell),
                         sum(a for a, _ in pairs), sum(b for _, b in pairs), len(pairs),
                         sum(a > b for a, b in pairs), sum(a < b for a, b in pairs))
            for cell, pairs in sorted(cells.items())]


def retrieval_lines(first: dict, second: dict) -> list[str]:
    """Per cell (length, or RULER task and length): both accuracies on the shared trials, wins and the sign test."""
    return ["cell: A score, B score on the trials both ran; trials A won / lost; sign test p (two-sided)",
            *(cell.line() for cell in paired_trials(first, second))]
