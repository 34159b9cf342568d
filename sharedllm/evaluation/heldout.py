"""The headline perplexity protocol: every method scored on the same held-out windows, with a bootstrap interval.

A *cell* is (domain, window length T, method). For a domain and a length, `plan_windows` draws a fixed list
of windows (document, start) once, from a seeded permutation of every CEPE window position of the test split
(starts every 256 tokens of each test document >= T; sharedllm/splits.json fixes which documents are test;
`eval heldout --split` scores another split's documents the same way).
The plan depends only on the documents, T, the budget and the seed, never on the method, so every method of a
column is scored on exactly the same windows. A larger budget extends the plan: the first N windows of a
budget-M plan (M > N) are the budget-N plan.

Each window is scored as in the CEPE protocol: only its last 256 tokens, each predicted with all the window
before it. PPL of a cell = exp(mean over windows of the window's mean token NLL), with a 95% percentile
bootstrap interval over windows (1000 resamples, fixed seed). A window a method cannot run (past its length
limit, out of its time budget, an error) is recorded as `not_run` with the reason, never replaced by another.
"""

import hashlib
import json
import math
import time

import numpy as np

from sharedllm.knobs import recorded_knobs

from .journal import ReusedTrials
from .ppl import SCORED, STRIDE  # the CEPE protocol's grid and scored tail
N_RESAMPLES = 1000
CI_LEVEL = 0.95


def heldout_documents(domain: str, tokenizer, split: str = "test") -> dict[str, np.ndarray]:
    """{doc_id: token ids} of a domain's documents of `split`, in splits.json order (the split is fixed there)."""
    from sharedllm.assets import load_documents
    from sharedllm.data import tokenize_documents

    return {d.doc_id: d.ids for d in tokenize_documents(load_documents(split, [domain]), tokenizer)}


def plan_windows(doc_lengths: dict[str, int], length: int, n_windows: int, seed: int = 0,
                 stride: int = STRIDE) -> list[dict]:
    """`n_windows` windows {"doc", "start"} of `length` tokens from documents {doc_id: n_tokens}, or all there are.

    Drawn without replacement, uniformly over every stride-grid start of every document >= length (a longer
    document offers more windows), then sorted by (document order, start). The scored spans (last 256 tokens)
    of two windows never overlap: starts differ by >= stride = 256.
    """
    if length < SCORED:
        raise ValueError(f"a window of {length} tokens cannot have its last {SCORED} tokens scored")
    candidates = [(doc, start) for doc, n in doc_lengths.items() for start in range(0, n - length + 1, stride)]
    # the seed and the length both key the draw: each column gets its own fixed sample
    order = np.random.default_rng([seed, length]).permutation(len(candidates))[:n_windows]
    rank = {doc: i for i, doc in enumerate(doc_lengths)}
    chosen = sorted((candidates[i] for i in order), key=lambda c: (rank[c[0]], c[1]))
    return [{"doc": doc, "start": start} for doc, start in chosen]


def targets_of(plan: list[dict], plan_length: int, length: int) -> list[dict]:
    """The plan's windows of `plan_length` tokens cut to their last `length`: the same scored tokens, read with less
    context before them. A column of such cells is perplexity against context length on fixed targets, where the
    headline's columns each draw their own windows (a change between lengths there mixes context with data)."""
    if not SCORED <= length <= plan_length:
        raise ValueError(f"windows of {plan_length} tokens cannot be cut to {length} (needs {SCORED} <= T <= "
                         f"{plan_length})")
    return [{"doc": w["doc"], "start": w["start"] + plan_length - length} for w in plan]


def cell_plan(doc_lengths: dict[str, int], length: int, plan_length: int, n_windows: int, seed: int = 0) -> list[dict]:
    """The windows a cell of `length` scores: the plan of `plan_length` (its own length, or --targets-of's) cut to its
    last `length` tokens."""
    return targets_of(plan_windows(doc_lengths, plan_length, n_windows, seed), plan_length, length)


def count_windows(doc_lengths: dict[str, int], length: int, stride: int = STRIDE) -> int:
    """How many windows of `length` the documents offer (the plan's ceiling)."""
    return sum(len(range(0, n - length + 1, stride)) for n in doc_lengths.values())


def windows_id(plan: list[dict], length: int) -> str:
    """A short fingerprint of a plan: two cells are comparable iff their ids match."""
    text = ";".join(f"{w['doc']}@{w['start']}" for w in plan) + f"|T={length}|scored={SCORED}"
    return hashlib.sha1(text.encode()).hexdigest()[:12]


def score_windows(method, docs: dict[str, np.ndarray], plan: list[dict], length: int, not_run: str | None = None,
                  max_seconds: float | None = None, progress: bool = True, done=(), on_record=None,
                  order: list[int] | None = None) -> list[dict]:
    """Per window of `plan`, in its order: {"doc", "start", "mean_nll", "scored_tokens", "seconds"} or {"doc",
    "start", "not_run"}.

    `not_run` marks every window as not run with that reason (e.g. the method's length limit). After
    `max_seconds` of scoring (in this call), the remaining windows are not run ("time budget"). A window that raises
    marks itself and every later one: a method that fails once (out of memory, a limit) fails the same way again.
    `done`: scored windows of a stopped run, reused; `on_record(record)` after each window scored here. `order`:
    the plan's indexes in the order to score them (`Method.window_order`; None: the plan's), "later" above meaning
    later in it.
    """
    def journal_scored(record: dict) -> None:  # a window not run is tried again by the next run
        if "not_run" not in record and on_record is not None:
            on_record(record)

    reuse = ReusedTrials(done, ("doc", "start"), [(w["doc"], w["start"]) for w in plan], journal_scored,
                         f"{getattr(method, 'name', 'method')} T={length}", progress)
    records, started = {}, time.perf_counter()
    for index in range(len(plan)) if order is None else order:
        window = plan[index]

        def run() -> dict:
            nonlocal not_run
            if not_run is None and max_seconds is not None and time.perf_counter() - started > max_seconds:
                not_run = f"time budget of {max_seconds:g} s used up after {len(records)} windows"
            if not_run is not None:
                return {"doc": window["doc"], "start": window["start"], "not_run": not_run}
            record = _score_window(method, docs, window, length)
            not_run = record.get("not_run")  # a window that fails marks every later one
            return record

        records[index] = reuse((window["doc"], window["start"]), run)
    reuse.close()
    return [records[index] for index in range(len(plan))]


def _score_window(method, docs: dict[str, np.ndarray], window: dict, length: int) -> dict:
    """One window's record: its mean NLL over the SCORED last tokens, or why it could not run."""
    import torch  # here, where the method runs: the plans and statistics (compare, report) need none

    spec = {"doc": window["doc"], "start": window["start"]}
    text = docs[window["doc"]][window["start"] : window["start"] + length]
    ids = torch.from_numpy(np.array(text, dtype=np.int64))  # a copy: cached ids are read-only memory maps
    tic = time.perf_counter()
    try:
        with torch.no_grad():
            nll = torch.as_tensor(method.token_nll(ids, length - SCORED), dtype=torch.float64)
    except (RuntimeError, ValueError, MemoryError) as error:
        return {**spec, "not_run": f"{type(error).__name__}: {str(error).splitlines()[0][:200]}"}
    if nll.numel() != SCORED:
        raise ValueError(f"token_nll returned {nll.numel()} values for {SCORED} scored tokens")
    return {**spec, "mean_nll": nll.mean().item(), "scored_tokens": SCORED, "seconds": time.perf_counter() - tic}


def bootstrap_interval(window_nlls, n_resamples: int = N_RESAMPLES, seed: int = 0, level: float = CI_LEVEL,
                       weights=None) -> tuple[float, float]:
    """Percentile bootstrap interval of PPL = exp(mean of window NLLs), resampling windows with replacement; with
    `weights` (each window's scored tokens, the sliding protocol's), of exp(the weighted mean)."""
    values = np.asarray(window_nlls, dtype=np.float64)
    if values.size == 0:
        raise ValueError("no windows to resample")
    weights = np.ones_like(values) if weights is None else np.asarray(weights, dtype=np.float64)
    weighted = values * weights
    rng = np.random.default_rng(seed)
    per_batch = max(1, 2**22 // values.size)  # a full run of `eval ppl` has thousands of windows: bound the memory
    means = []
    for done in range(0, n_resamples, per_batch):
        draws = rng.integers(0, values.size, size=(min(per_batch, n_resamples - done), values.size))
        means.append(weighted[draws].sum(axis=1) / weights[draws].sum(axis=1))  # (batch,)
    low, high = np.quantile(np.concatenate(means), [(1 - level) / 2, (1 + level) / 2])
    return math.exp(low), math.exp(high)


def paired_ratio(window_nlls, reference_nlls, n_resamples: int = N_RESAMPLES, seed: int = 0,
                 level: float = CI_LEVEL, weights=None) -> tuple[float, float, float]:
    """PPL of one method over another's on the same windows, exp(mean NLL difference), and its percentile bootstrap
    interval resampling windows as pairs: how hard a window is cancels, so the interval is far narrower than the
    two cells' own intervals. `weights` as in `bootstrap_interval`."""
    differences = np.asarray(window_nlls, dtype=np.float64) - np.asarray(reference_nlls, dtype=np.float64)
    low, high = bootstrap_interval(differences, n_resamples, seed, level, weights)
    return math.exp(np.average(differences, weights=weights)), low, high


def summarise(records: list[dict], seed: int = 0) -> dict:
    """The cell's numbers: PPL and its interval over the scored windows, counts, and why any window was not run.

    A cell is `complete` only when every planned window was scored; an incomplete cell keeps its partial
    numbers for the record, but the headline table shows it as not run.
    """
    scored = [r for r in records if "mean_nll" in r]
    reasons = list(dict.fromkeys(r["not_run"] for r in records if "not_run" in r))
    summary = {"n_planned": len(records), "n_windows": len(scored),
               "scored_tokens": sum(r["scored_tokens"] for r in scored),
               "complete": bool(records) and len(scored) == len(records), "not_run": "; ".join(reasons) or None,
               "ppl": None, "ci_low": None, "ci_high": None, "mean_nll": None,
               "bootstrap": {"resamples": N_RESAMPLES, "level": CI_LEVEL, "seed": seed, "over": "windows"}}
    if scored:
        nlls = [r["mean_nll"] for r in scored]
        summary["mean_nll"] = float(np.mean(nlls))
        summary["ppl"] = math.exp(summary["mean_nll"])
        summary["ci_low"], summary["ci_high"] = bootstrap_interval(nlls, seed=seed)
    return summary


def cell_filename(method: str, domain: str, length: int, plan_length: int | None = None) -> str:
    """One JSON per cell, named by the cell: a grid run skips cells whose file exists (resumable). A cell scored on
    the targets of a longer plan (`targets_of`) names that plan's length too."""
    suffix = f"_targets{plan_length}" if plan_length not in (None, length) else ""
    return f"heldout_{domain}_{length}_{method}{suffix}.json"


def cell_settings(result: dict) -> dict:
    """What a cell file's numbers depend on besides its name (domain, length, method or label): a grid run keeps
    the file as its own only when it runs with these settings too (`settings_differences`)."""
    plan = result.get("plan", {})
    return {"split": result.get("data", {}).get("split"), "model": result.get("model"),
            "adapter": result.get("adapter"), "method_config": result.get("method_config", {}),
            "dtype": result.get("hardware", {}).get("dtype"),
            "seed": plan.get("seed"), "max_windows": plan.get("budget"), "targets_of": plan.get("targets_of"),
            "windows_id": plan.get("windows_id")}


def settings_differences(recorded: dict, settings: dict) -> dict[str, tuple]:
    """{name: (recorded value, value in settings)} for each of `settings` that a cell file's `cell_settings` holds
    otherwise (a method_config by knob), by the report's rule of one setting (`report.setting_differences`: the model
    by its folder's name, a knob a method_config does not name at its default). Only the names in `settings` are
    compared: a check made before loading does not know the model, the method's config or the windows yet."""
    from .report import setting_differences

    settings = json.loads(json.dumps(settings, default=str))  # as a file holds it: lists, not tuples
    differences = {}
    for name, (there, value) in setting_differences({name: recorded.get(name) for name in settings}, settings).items():
        if name == "method_config":
            differences.update(setting_differences(recorded_knobs(there or {}), recorded_knobs(value)))
        else:
            differences[name] = (there, value)
    return differences


def targets_length(result: dict) -> int:
    """The length of the plan whose scored tokens a cell file holds: its own, or the longer plan it was cut from."""
    return int(result["plan"].get("targets_of", result["length"]))


def scored_windows(result: dict) -> dict[tuple[str, int], dict]:
    """A cell file's scored windows keyed by the tokens they score, (document, end): cells cut from one plan
    (`targets_of`) pair on these keys, as cells of one length do."""
    return {(w["doc"], w["start"] + int(result["length"])): w for w in result["windows"] if "mean_nll" in w}
