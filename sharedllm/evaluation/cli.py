"""`sharedllm eval <task>`: run the field's protocols on one or several methods and write result JSON.

Tasks: ppl (CEPE or sliding protocol), heldout (the headline grid: every method on the same seeded held-out
windows per domain and length, a bootstrap interval per cell, one JSON per cell), passkey (Landmark format),
niah (needle in real prose), ruler (synthetic RULER-style tasks), longbench (user-provided LongBench(-E)
JSON lines, English sets), and demo (the newcomer run: PPL and passkey beyond the base model's 8K window for
full / window / streaming / sharedllm, in a few minutes on a laptop CPU). Each (task, method) writes one JSON under --output with the
protocol, data, counts, scores, hardware and command; `sharedllm report` turns them into docs/results.md.

This module holds the parser, the per-task defaults, `run` and the task runners; the checks made before any model
loads are in checks.py, the loaded base, methods, journals and result files (`Session`) in session.py.
"""

import contextlib
import time
from pathlib import Path

import numpy as np

from sharedllm import provenance
from sharedllm.flags import (
    add_adapter_argument,
    add_base_argument,
    add_deprecated_alias,
    add_device_argument,
    add_dtype_argument,
    add_infllm_argument,
    add_knob_arguments,
    add_old_knob_argument,
    add_threads_argument,
    format_length,
    parse_length,
    positive_int,
    positive_seconds,
)

from . import report
from .checks import (cell_path, cell_settings, check_given_options, check_methods, keep_cell, recorded_base,
                     require_windows, validate_args)
from .journal import provenance_counts
from .needle import RULER_TASKS, effective_length, run_needle_grid, run_ruler
from .passkey import DEFAULT_DEPTHS, run_passkey
from .ppl import PROTOCOLS, perplexity
from .session import Session, method_config, portable_path, ppl_journal_settings, ppl_protocol, raw_documents

TASKS = ("ppl", "heldout", "passkey", "niah", "ruler", "longbench", "demo")
DEMO_METHODS = ["full", "window", "streaming", "sharedllm"]
SYNTHETIC = {"source": "synthetic", "split": None, "n_docs": 0}  # passkey needs no corpus
# Per-task defaults for options whose sensible value depends on the task (None on the command line).
DEFAULTS = {
    "ppl": dict(methods=["sharedllm"], lengths=[4096, 8192, 16384], max_windows=100, protocol="cepe"),
    # one JSON per (method, domain, length) cell under results/heldout/: a rerun skips cells already there
    "heldout": dict(methods=["sharedllm"], lengths=[4096, 8192, 16384], max_windows=16, output="results/heldout"),
    "passkey": dict(methods=["sharedllm"], lengths=[4096, 8192, 16384], trials=10, depths=DEFAULT_DEPTHS),
    "niah": dict(methods=["sharedllm"], lengths=[4096, 8192, 16384], trials=10, depths=DEFAULT_DEPTHS),
    "ruler": dict(methods=["sharedllm"], lengths=[4096, 8192, 16384], trials=10),
    "longbench": dict(methods=["sharedllm"], lengths=[16384]),
    # The demo must finish in minutes on 2 CPU cores: one 16K length, 1 PPL window, 1 passkey trial per method
    # (full attention costs about 80 s per 16K forward there, streaming about 45 s: they dominate the run).
    "demo": dict(methods=DEMO_METHODS, lengths=[16384], max_windows=1, trials=1, depths=(0.5,),
                 domains=["books"], output="runs/demo/results", docs="runs/demo"),
}
for task_defaults in DEFAULTS.values():
    task_defaults.setdefault("output", "results/")
    task_defaults.setdefault("docs", "docs")
    task_defaults.setdefault("split", "test")
    task_defaults.setdefault("seed", 0)


def add_arguments(parser):
    parser.epilog = ("A stopped run (Ctrl-C, the end of a session) continues where it stopped when the same command runs "
                     "again: every task but longbench journals each window or trial as it finishes in --output (heldout "
                     "also keeps the cells already written). `sharedllm compare A.json B.json` pairs two results.")
    parser.add_argument("task", choices=TASKS)
    parser.add_argument("--methods", nargs="+",
                        help="full window streaming infllm yarn cepe sharedllm (--method: deprecated spelling)")
    add_deprecated_alias(parser, "--method", "--methods", nargs="+")
    add_base_argument(parser, default="the base the --adapter records, as `ask` loads it; else the SmolLM2-135M "
                                      "from `sharedllm assets`")
    add_threads_argument(parser)
    add_adapter_argument(parser)
    parser.add_argument("--lengths", nargs="+", type=parse_length, help="e.g. 4K 16K 32768")
    parser.add_argument("--protocol", choices=PROTOCOLS,
                        help="perplexity protocol (default: cepe; sliding scores from a document's first tokens, which "
                             "window / sharedllm / cepe cannot)")
    parser.add_argument("--domains", nargs="+",
                        help="corpus domains (books math code) of ppl / heldout (default: all), niah / ruler's "
                             "haystack and demo (default: books)")
    parser.add_argument("--split",
                        help="corpus split of sharedllm/splits.json that ppl / heldout / niah / ruler / demo read "
                             "(default: test)")
    parser.add_argument("--data", nargs="+",
                        help="user files instead of the corpus: text / JSON-lines documents (ppl, niah, ruler, demo) "
                             "or LongBench-format JSON lines (longbench)")
    add_infllm_argument(parser)
    parser.add_argument("--label", help="name the (single) method's results under this label, e.g. "
                                        "sharedllm-recent for an ablation")
    parser.add_argument("--max-windows", type=positive_int,
                        help="PPL window cap over all documents (ppl: 100); heldout: windows per cell (16)")
    parser.add_argument("--max-length", type=parse_length,
                        help="heldout: longer cells are written with every window 'not run: past --max-length'")
    parser.add_argument("--max-seconds", type=positive_seconds,
                        help="heldout: time budget per cell; the windows left are written as not run")
    parser.add_argument("--targets-of", type=parse_length, metavar="LENGTH",
                        help="heldout: score the windows of the LENGTH plan, each cut to its last T tokens, so that "
                             "every --lengths T scores the same tokens (perplexity against context length); "
                             "the cells are named ..._targets<LENGTH>.json and stay out of the headline")
    parser.add_argument("--overwrite", action="store_true", default=None,
                        help="heldout: rerun cells whose JSON exists (without it, a cell of the same settings is kept, "
                             "one of other settings refused)")
    parser.add_argument("--trials", type=positive_int, help="trials per cell (passkey, niah, ruler: 10)")
    parser.add_argument("--depths", nargs="+", type=float, help="needle depths in [0, 1]")
    parser.add_argument("--tasks", nargs="+", choices=list(RULER_TASKS), help="RULER tasks (default: all)")
    parser.add_argument("--threshold", type=float,
                        help="RULER effective-length threshold (default: full attention at the native length)")
    parser.add_argument("--limit", type=positive_int, help="longbench: at most this many records per dataset")
    parser.add_argument("--seed", type=int, help="seed of the heldout windows and of the passkey / niah / ruler / demo "
                                                 "trials (default: 0)")
    add_dtype_argument(parser)
    add_device_argument(parser)
    parser.add_argument("--output", help="folder for result JSON (default: results/; demo: runs/demo/results)")
    parser.add_argument("--docs", help="demo: where results.md and figures/ are regenerated (default: runs/demo, "
                                       "so a demo never overwrites the committed docs/results.md)")
    add_knob_arguments(
        parser, "SharedLLM knobs of --methods sharedllm / cepe (default: the adapter's saved value, else the config "
                "default)",
        notes={"decoder_window": "also the window of window / streaming / infllm (its local window) / cepe: the comparison "
                                 "is fair only at one Ld (default there: the sharedllm adapter's, else 1024)"},
    )
    add_old_knob_argument(parser)


def run(args):
    check_given_options(args)
    for key, value in DEFAULTS[args.task].items():
        if getattr(args, key, None) is None:
            setattr(args, key, list(value) if isinstance(value, (list, tuple)) else value)
    check_methods(args)
    if args.base is None:  # as `ask` does: an adapter is read on the base it was trained on
        args.base = recorded_base(args.adapter)
    validate_args(args)
    session = Session(args)
    return {"ppl": run_ppl, "heldout": run_heldout, "passkey": run_passkey_task, "niah": run_niah, "ruler": run_ruler_task,
            "longbench": run_longbench_task, "demo": run_demo}[args.task](session)


def print_table(title: str, rows: dict[str, dict[str, str]], note: str = "") -> None:
    """rows: method -> column -> formatted value."""
    columns = list(dict.fromkeys(c for row in rows.values() for c in row))
    widths = [max(len("method"), *map(len, rows))] + [max(len(c), *(len(r.get(c, "")) for r in rows.values()))
                                                      for c in columns]
    line = lambda cells: "  ".join(cell.ljust(w) for cell, w in zip(cells, widths))  # noqa: E731
    print(f"\n{title}")
    print(line(["method", *columns]))
    print(line(["-" * w for w in widths]))
    for method, row in rows.items():
        print(line([method, *(row.get(c, "–") for c in columns)]))
    if note:
        print(note)


def _with_bos(tokenizer, docs):
    """Prepend BOS to each document when the tokenizer itself adds one (the base model expects it)."""
    bos = tokenizer.bos_token_id
    adds_bos = bos is not None and tokenizer("a").input_ids[:1] == [bos]
    return [np.concatenate([[bos], d.ids]).astype(np.int64) if adds_bos else d.ids for d in docs]


# ---------------------------------------------------------------------------------------------------------
# tasks


def ppl_results(session, lengths, max_windows, default_domains=None, notes=""):
    """Each method's perplexity at each length; every window is journaled as it is scored, so a stopped run
    continues where it stopped when the same command runs again (a 48-window run of 8K takes ~25 minutes on a CPU)."""
    from sharedllm.data import tokenize_documents

    protocol = ppl_protocol(session.args)
    raw, data = raw_documents(session.args, default_domains)
    docs = tokenize_documents(raw, session.tokenizer)  # cached ids, no special tokens
    ids = _with_bos(session.tokenizer, docs) if protocol == "sliding" else [d.ids for d in docs]
    if protocol == "cepe":
        require_windows(lengths, max((len(d) for d in ids), default=0), "tokens")
    data["n_docs"] = len(docs)
    rows = {}
    for name, method in session.methods():
        start, scores, counts, details = time.time(), {}, {}, {}
        decoder_len = (method.describe().get("decoder_window") or 0) if hasattr(method, "describe") else 0
        journal, done = session.journal("ppl", name, method, **ppl_journal_settings(protocol, raw))
        for length in lengths:
            r = perplexity(method, ids, protocol, length, domains=[d.domain for d in docs],
                           doc_ids=[d.doc_id for d in docs], decoder_len=min(decoder_len, length),
                           max_windows=max_windows, done=done, on_record=journal.append)
            scores[str(length)] = r["ppl"]
            counts[str(length)] = {"docs": r["n_docs"], "docs_too_short": r["n_docs_skipped"],
                                   "windows": r["n_windows"], "scored_tokens": r["scored_tokens"],
                                   **provenance_counts(r["windows"], done)}
            details[str(length)] = r
            rows.setdefault(name, {})[format_length(length)] = (
                f"{r['ppl']:.2f} ({r['n_windows']} win, {r['scored_tokens']} tok)" if r["ppl"] else "no doc >= T")
        session.write("ppl", name, method, protocol, data, scores, counts, details, time.time() - start, notes)
        journal.remove([window for r in details.values() for window in r["windows"]])
        del method
    return rows, data


def run_ppl(session):
    args = session.args
    rows, data = ppl_results(session, args.lengths, args.max_windows)
    print_table(f"perplexity, {args.protocol} protocol, model {args.base}, data {data}", rows,
                f"window cap: {args.max_windows} per length over all documents")


def run_heldout(session):
    """Every method on the same seeded held-out windows per (domain, length): one JSON per cell, cells already
    written with the same settings are skipped (a grid resumes where it stopped), windows a method cannot run are
    recorded as not run."""
    from sharedllm.assets import DEFAULT_DOMAINS

    from . import heldout

    a = session.args
    domains = a.domains or list(DEFAULT_DOMAINS)
    docs = {domain: heldout.heldout_documents(domain, session.tokenizer, a.split) for domain in domains}
    rows = {}
    for name, method in session.methods():
        for domain, length, plan_length, plan, path in _cells_to_score(session, name, method, docs):
            doc_lengths = {doc_id: len(ids) for doc_id, ids in docs[domain].items()}
            too_long = a.max_length and length > a.max_length
            not_run = f"past --max-length {format_length(a.max_length)}" if too_long else method.same_as_another(length)
            start = time.time()
            journal, done = session.journal("heldout", f"{name}_{domain}_{length}", method,
                                            windows=heldout.windows_id(plan, length))
            order = method.window_order(plan)  # None: the windows share nothing the method could reuse
            with method.reusing_encodings() if order is not None else contextlib.nullcontext():
                records = heldout.score_windows(method, docs[domain], plan, length, not_run, a.max_seconds,
                                                done=done, on_record=journal.append, order=order)
            summary = heldout.summarise(records, a.seed)
            if not plan:
                summary["not_run"] = f"no {domain} {a.split} document has {plan_length} tokens"
            result = {
                "task": "heldout", "protocol": "cepe-heldout", "method": name, "method_config": method_config(method),
                "model": session.model_name, "adapter": session.result_adapter(method),
                "domain": domain, "length": length,
                "data": {"split": a.split, "domain": domain, "docs": doc_lengths,
                         "windows_available": heldout.count_windows(doc_lengths, plan_length)},
                "plan": {"seed": a.seed, "budget": a.max_windows, "stride": heldout.STRIDE, "scored": heldout.SCORED,
                         "windows_id": heldout.windows_id(plan, length),
                         **({"targets_of": plan_length} if plan_length != length else {})},
                "summary": summary, "windows": records, "wall_time_s": time.time() - start,
                **session.provenance(),
            }
            provenance.write_json(path, result)
            print(f"wrote {path}")
            if summary["complete"]:
                journal.remove(records)
            elif journal.path.exists():  # e.g. out of --max-seconds: --overwrite later scores only the rest
                print(f"  incomplete: its scored windows stay in {journal.path}; --overwrite continues the cell")
            rows.setdefault(name, {})[f"{domain}@{format_length(length)}"] = report.heldout_cell_text(summary)
        del method
    if not rows:
        return
    print_table(f"held-out perplexity (CEPE windows, last 256 tokens scored), model {a.base}, "
                f"{a.max_windows} windows per cell, seed {a.seed}", rows)


def _cells_to_score(session, name: str, method, docs: dict) -> list[tuple]:
    """(domain, length, plan length, plan, path) of each of `method`'s cells that this run scores: all of them
    are checked against the cell files already there (`keep_cell`) before the first is scored."""
    from . import heldout

    a, cells = session.args, []
    for domain in docs:
        doc_lengths = {doc_id: len(ids) for doc_id, ids in docs[domain].items()}
        for length in a.lengths:
            plan_length = a.targets_of or length
            plan = heldout.cell_plan(doc_lengths, length, plan_length, a.max_windows, a.seed)
            path = cell_path(a, name, domain, length)
            settings = cell_settings(a, method.name, length, session.model_name, method_config(method),
                                     heldout.windows_id(plan, length))
            if path.exists() and keep_cell(path, settings, a.overwrite):
                print(f"exists, skipped: {path}")
            else:
                cells.append((domain, length, plan_length, plan, path))
    return cells


def passkey_results(session, lengths, depths, trials, notes=""):
    """Each method's passkey grid; every trial is journaled as it finishes, so a stopped run continues where it
    stopped when the same command runs again (a 128K prompt takes minutes on a CPU)."""
    rows = {}
    for name, method in session.methods():
        start = time.time()
        journal, done = session.journal("passkey", name, method)
        with method.reusing_encodings():  # consecutive trials share most chunks (the same filler)
            r = run_passkey(method, session.tokenizer, lengths, depths, trials, session.args.seed, done=done,
                            on_record=journal.append)
        scores = {str(n): acc for n, acc in r["per_length"].items()}
        counts = {"trials_per_cell": trials, "depths": len(depths), "total_trials": len(r["records"]),
                  **provenance_counts(r["records"], done)}
        session.write("passkey", name, method, "landmark", SYNTHETIC, scores, counts, r,
                      time.time() - start, notes)
        journal.remove(r["records"])
        rows[name] = {format_length(n): f"{100 * acc:.0f}% of {trials * len(depths)}" for n, acc in r["per_length"].items()}
    return rows


def run_passkey_task(session):
    a = session.args
    rows = passkey_results(session, a.lengths, a.depths, a.trials)
    print_table(f"passkey accuracy (Landmark format), model {a.base}, depths {a.depths}", rows)


def run_niah(session):
    a = session.args
    haystack, data = session.haystack()
    rows = {}
    for name, method in session.methods():
        start = time.time()
        journal, done = session.journal("niah", name, method, data=data, haystack=haystack)  # the journal's name hashes it
        with method.reusing_encodings():  # trials of a cell share the haystack before their needles
            r = run_needle_grid(method, session.tokenizer, a.lengths, a.depths, a.trials, a.seed, haystack, done=done,
                                on_record=journal.append)
        per_length = {}
        for c in r["cells"]:
            per_length.setdefault(c["length"], []).append(c["accuracy"])
        scores = {str(n): sum(v) / len(v) for n, v in per_length.items()}
        counts = {"trials_per_cell": a.trials, "depths": len(a.depths), "total_trials": len(r["records"]),
                  **provenance_counts(r["records"], done)}
        session.write("niah", name, method, "niah-prose", data, scores, counts, r, time.time() - start)
        journal.remove(r["records"])
        rows[name] = {format_length(n): f"{100 * s:.0f}%" for n, s in scores.items()}
    print_table(f"needle in a haystack (prose), model {a.base}, depths {a.depths}, {a.trials} trials/cell", rows)


def run_ruler_task(session):
    a = session.args
    tasks = a.tasks or list(RULER_TASKS)
    haystack, data = session.haystack()
    native = getattr(session.base.config, "max_position_embeddings", None)
    finished = []
    for name, method in session.methods():
        start = time.time()
        journal, done = session.journal("ruler", name, method, data=data, haystack=haystack)  # the journal's name hashes it
        with method.reusing_encodings():  # trials of a niah task share the haystack before their first needle
            r = run_ruler(method, session.tokenizer, a.lengths, tasks, a.trials, a.seed, haystack, done=done,
                          on_record=journal.append)
        counts = {"trials_per_task": a.trials, "tasks": len(tasks),
                  **provenance_counts(r["records"], done)}
        finished.append((name, method.describe() if hasattr(method, "describe") else {}, r, counts,
                         time.time() - start, journal))
    threshold = a.threshold
    for name, _, r, *_ in finished:  # RULER's threshold: the base model's score at its native length
        if threshold is None and name == "full" and native in r["scores"]:
            threshold = 100 * r["scores"][native]["average"]
    rows = {}
    for name, config, r, counts, wall, journal in finished:
        scores = {str(n): {t: 100 * s for t, s in v.items()} for n, v in r["scores"].items()}
        average = {n: 100 * v["average"] for n, v in r["scores"].items()}
        eff = effective_length(average, threshold) if threshold is not None else None
        details = {**r, "threshold": threshold, "effective_length": eff, "tasks": tasks}
        session.write("ruler", name, _Described(config), "ruler", data, scores, counts, details, wall)
        journal.remove(r["records"])  # only now: the threshold needed every method's trials
        rows[name] = {**{format_length(n): f"{v:.1f}" for n, v in average.items()},
                      "effective": format_length(eff) if eff else "–"}
    note = (f"threshold {threshold:.1f} (full attention at {native})" if threshold is not None
            else "no threshold: pass --threshold or include full in --methods at the native length")
    print_table(f"RULER average over {tasks}, model {a.base}", rows, note)


class _Described:
    """Stands in for a method whose weights were already freed, for `Session.write`: its knobs and its method name
    (which, not a --label, decides whether the result names an adapter)."""

    def __init__(self, config):
        self.config = config
        self.name = config.get("method")

    def describe(self):
        return self.config


def run_longbench_task(session):
    from .longbench import load_records, run_longbench

    a = session.args
    records = load_records(a.data)
    if a.limit:
        kept = {}
        for r in records:
            kept.setdefault(r["dataset"], [])
            if len(kept[r["dataset"]]) < a.limit:
                kept[r["dataset"]].append(r)
        records = [r for rs in kept.values() for r in rs]
    data = {"source": ",".join(a.data), "split": "user", "n_docs": len(records)}
    rows = {}
    for name, method in session.methods():
        start, scores, counts, details = time.time(), {}, {}, {}
        for budget in a.lengths:
            r = run_longbench(method, session.tokenizer, records, budget)
            scores[str(budget)], counts[str(budget)], details[str(budget)] = r["scores"], r["counts"], r
            rows.setdefault(name, {}).update({f"{d}@{format_length(budget)}": f"{s:.1f}" for d, s in r["scores"].items()})
        session.write("longbench", name, method, "longbench", data, scores, counts, details, time.time() - start)
    print_table(f"LongBench-format scores (x100), model {a.base}, data {data['source']}", rows)


def run_demo(session):
    a = session.args
    note = (f"DEMO SETTINGS: {a.max_windows} PPL windows and {a.trials} passkey trials per method at depth(s) "
            f"{a.depths}: indicative only; the full protocols use 100 windows and >= 10 trials per cell")
    ppl_rows, data = ppl_results(session, a.lengths, a.max_windows, notes=note)
    passkey_rows = passkey_results(session, a.lengths, a.depths, a.trials, note)
    rows = {m: {**{f"PPL@{k}": v for k, v in ppl_rows.get(m, {}).items()},
                **{f"passkey@{k}": v for k, v in passkey_rows.get(m, {}).items()}} for m in a.methods}
    print_table(f"SharedLLM demo: model {a.base} (native window "
                f"{getattr(session.base.config, 'max_position_embeddings', '?')}), adapter {portable_path(session.adapter)}, "
                f"{data.get('domains')} {data.get('split')} split, CEPE PPL protocol", rows, note)
    path = report.regenerate(a.output, a.docs)
    print(f"regenerated {path} and {Path(a.docs) / 'figures'}")
