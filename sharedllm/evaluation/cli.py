"""`sharedllm eval <task>`: run the field's protocols on one or several methods and write result JSON.

Tasks: ppl (CEPE or sliding protocol), heldout (the headline grid: every method on the same seeded held-out
windows per domain and length, a bootstrap interval per cell, one JSON per cell), passkey (Landmark format),
niah (needle in real prose), ruler (synthetic RULER-style tasks), longbench (user-provided LongBench(-E)
JSON lines, English sets), and demo (the newcomer run: PPL and passkey beyond the base model's 8K window for
full / window / streaming / sharedllm, in a few minutes on a laptop CPU). Each (task, method) writes one JSON under --output with the
protocol, data, counts, scores, hardware and command; `sharedllm report` turns them into docs/results.md.
"""

import json
import shlex
import sys
import time
from pathlib import Path

import numpy as np
import torch

from sharedllm import provenance
from sharedllm.provenance import REPO
from sharedllm.assets import sharedllm_home
from sharedllm.cli import InputError, adapter_argument
from sharedllm.config import KNOB_DEFAULTS
from sharedllm.flags import (
    add_adapter_argument,
    add_base_argument,
    add_deprecated_alias,
    add_device_argument,
    add_infllm_argument,
    add_knob_arguments,
    add_old_knob_argument,
    add_threads_argument,
    check_infllm_chosen,
    format_length,
    knob_flag,
    knobs_from_args,
    parse_length,
    positive_int,
    positive_seconds,
)

from . import report
from .journal import TrialJournal, provenance_counts
from .needle import RULER_TASKS, effective_length, load_haystack, run_needle_grid, run_ruler
from .passkey import DEFAULT_DEPTHS, run_passkey
from .ppl import PROTOCOLS, SCORED, perplexity

TASKS = ("ppl", "heldout", "passkey", "niah", "ruler", "longbench", "demo")
DEMO_METHODS = ["full", "window", "streaming", "sharedllm"]
SYNTHETIC = {"source": "synthetic", "split": None, "n_docs": 0}  # passkey needs no corpus
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
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


# Options that only some tasks read: given to another task they would be ignored without a word. Each defaults to
# None ("not given") on the command line; DEFAULTS fills it in once this is checked.
CORPUS_TASKS = {"ppl", "heldout", "niah", "ruler", "demo"}  # the tasks that read documents of the corpus
TASK_OPTIONS = {"protocol": {"ppl"}, "max_windows": {"ppl", "heldout", "demo"}, "trials": {"passkey", "niah", "ruler", "demo"},
                "depths": {"passkey", "niah", "demo"}, "tasks": {"ruler"}, "threshold": {"ruler"},
                "limit": {"longbench"}, "docs": {"demo"}, "max_length": {"heldout"}, "max_seconds": {"heldout"},
                "targets_of": {"heldout"}, "overwrite": {"heldout"}, "domains": CORPUS_TASKS, "split": CORPUS_TASKS,
                "data": {"ppl", "niah", "ruler", "longbench", "demo"},
                "seed": {"heldout", "passkey", "niah", "ruler", "demo"}}  # ppl windows and longbench draw nothing
# The corpus choices, which --data replaces.
CORPUS_OPTIONS = {"domains": "corpus domains", "split": "a corpus split"}


SHAREDLLM_METHODS = ("sharedllm", "cepe")  # the methods the SharedLLM knob flags configure


def add_arguments(parser):
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
    parser.add_argument("--domains", nargs="+", help="corpus domains (books math code); default: all")
    parser.add_argument("--split", help="corpus split of sharedllm/splits.json (default: test)")
    parser.add_argument("--data", nargs="+",
                        help="user files instead of the corpus: text / JSON-lines documents (ppl, niah, ruler) "
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
    parser.add_argument("--seed", type=int, help="seed of the heldout windows and the trials (default: 0)")
    parser.add_argument("--dtype", choices=list(DTYPES), default="float32")
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
    _check_given_options(args)
    for key, value in DEFAULTS[args.task].items():
        if getattr(args, key, None) is None:
            setattr(args, key, list(value) if isinstance(value, (list, tuple)) else value)
    if args.base is None:  # as `ask` does: an adapter is read on the base it was trained on
        args.base = _recorded_base(args.adapter)
    validate_args(args)
    session = Session(args)
    return {"ppl": run_ppl, "heldout": run_heldout, "passkey": run_passkey_task, "niah": run_niah, "ruler": run_ruler_task,
            "longbench": run_longbench_task, "demo": run_demo}[args.task](session)


def _check_given_options(args) -> None:
    """Options given to a task that would ignore them (checked before DEFAULTS fills the ones not given)."""
    for option, tasks in TASK_OPTIONS.items():
        if getattr(args, option) is not None and args.task not in tasks:
            raise InputError(f"--{option.replace('_', '-')} applies to {' / '.join(sorted(tasks))}, not {args.task}")
    for option, what in CORPUS_OPTIONS.items():
        if args.data and getattr(args, option) is not None:
            raise InputError(f"--{option} chooses {what}; with --data your files are the data: pass one")


def _recorded_base(adapter) -> str | None:
    """The base model an adapter records, or None for the default model (which Session names as it always has:
    results and trial journals key on that name) and without an adapter."""
    from sharedllm.loading import DEFAULT_BASE

    config = Path(str(adapter)) / "config.json"
    if _chosen_adapter(adapter) is None or not config.is_file():
        return None
    base = json.loads(config.read_text()).get("base_model")
    return None if base == DEFAULT_BASE else base


def _chosen_adapter(value) -> str | None:
    """--adapter as the methods read it: 'none' (any case) is no adapter."""
    return None if str(value).lower() == "none" else value


def validate_args(args) -> None:
    """Everything that can be checked before a model is loaded, each with one message saying what to change."""
    from sharedllm.methods import METHODS

    if unknown := [m for m in args.methods if m not in METHODS]:
        raise InputError(f"unknown method {', '.join(map(repr, unknown))}; valid methods: {', '.join(METHODS)}")
    if args.label and len(args.methods) != 1:
        raise InputError("--label names one method's results: pass a single method in --methods with it")
    check_infllm_chosen(args)
    from sharedllm.methods import METHOD_CLASSES

    for name in knobs_from_args(args):  # a knob no chosen method reads would be silently ignored
        readers = [m for m in METHODS if name in METHOD_CLASSES[m].shared_knobs]
        if not readers:  # full_logits: eval scores decoder windows itself
            raise InputError(f"{knob_flag(name)} does not apply to sharedllm eval")
        if not set(readers) & set(args.methods):
            raise InputError(f"{knob_flag(name)} is a knob of {' / '.join(readers)}, not of {', '.join(args.methods)}")
    if args.depths and not all(0.0 <= d <= 1.0 for d in args.depths):
        raise InputError(f"--depths must lie in [0, 1], got {args.depths}")
    _check_no_repeats(args)
    _check_window_lengths(args)
    if args.task == "ppl" and args.protocol == "sliding":
        _check_sliding_methods(args.methods)
    _check_folder("--output", args.output)
    if args.task == "demo":
        _check_folder("--docs", args.docs)
    _check_corpus_choice(args)
    if "sharedllm" in args.methods:
        _check_sharedllm_knobs(args)
    if args.task == "heldout":
        if args.targets_of and max(args.lengths) > args.targets_of:
            raise InputError(f"--targets-of {format_length(args.targets_of)} cuts windows to each --lengths T: every T "
                             f"must be at most {format_length(args.targets_of)}, got {format_length(max(args.lengths))}")
        _check_existing_cells(args)
    if args.task == "longbench":
        if not args.data:
            raise InputError("longbench needs --data FILE.jsonl ... (LongBench cannot be downloaded here)")
        from .longbench import load_records

        load_records(args.data)  # raises InputError naming the file and line of a bad record
    elif args.data:
        documents = _user_documents(args.data)
        if args.task in ("ppl", "demo") and (args.task == "demo" or args.protocol == "cepe"):
            # A token covers at least one byte (byte-level BPE; SentencePiece with byte fallback may add one prefix
            # token): a document of fewer than T - 1 bytes has no T-token window. The exact check, on token counts,
            # follows once the tokenizer loads.
            longest = max(len(d.text.encode("utf-8")) for d in documents)
            _require_windows(args.lengths, longest, "bytes", slack=1)


def _check_no_repeats(args) -> None:
    """A value listed twice would be run twice, and its trials counted twice (a journal keys them by value)."""
    for option in ("methods", "lengths", "depths", "domains", "tasks"):
        values = getattr(args, option) or []
        if repeated := [v for i, v in enumerate(values) if v in values[:i]]:
            shown = ", ".join(format_length(v) if option == "lengths" else str(v) for v in dict.fromkeys(repeated))
            raise InputError(f"--{option} lists {shown} more than once: pass each once")


def _check_window_lengths(args) -> None:
    """A perplexity window scores its last SCORED tokens, the first of them predicted from at least one token before
    (the sliding protocol's stride is as long): a shorter window fails in the scoring, after the model loaded."""
    if args.task in ("ppl", "heldout", "demo") and (short := [n for n in args.lengths if n <= SCORED]):
        raise InputError(f"{args.task} scores the last {SCORED} tokens of each window after at least one token of "
                         f"context: --lengths must be more than {SCORED}, got {', '.join(map(format_length, short))}")


def _check_sliding_methods(methods) -> None:
    """The sliding protocol scores a document from its second token on; window, sharedllm and cepe predict only inside
    their decoder window (the tokens before it are cut, or become context chunks), so their first window fails."""
    from sharedllm.methods import METHOD_CLASSES, SharedLLM, WindowAttention

    decoder_window_only = (WindowAttention, SharedLLM)
    if unfit := [m for m in methods if issubclass(METHOD_CLASSES[m], decoder_window_only)]:
        fit = [m for m, cls in METHOD_CLASSES.items() if not issubclass(cls, decoder_window_only)]
        raise InputError(f"--protocol sliding scores each document from its first tokens on, which {', '.join(unfit)} "
                         f"cannot predict (only inside the decoder window): use --protocol cepe, or sliding with "
                         f"{' / '.join(fit)}")


def _check_folder(flag: str, path) -> None:
    """A folder results go into: a file there, or above it, would fail at mkdir once the work is done."""
    for folder in (Path(path), *Path(path).parents):
        if folder.exists():
            if not folder.is_dir():
                raise InputError(f"{flag} {path}: {folder} is a file, not a folder")
            return


def _check_corpus_choice(args) -> None:
    """--domains and --split name a domain and a split of splits.json (checked here, not after the model loads)."""
    from sharedllm.assets import SPLITS, load_splits

    if args.split not in SPLITS:
        raise InputError(f"--split must be one of {', '.join(SPLITS)}, got {args.split!r}")
    known = load_splits()
    if unknown := [d for d in args.domains or () if d not in known]:
        raise InputError(f"unknown domain {', '.join(map(repr, unknown))}; valid domains: {', '.join(sorted(known))}")


def _check_sharedllm_knobs(args) -> None:
    """The adapter exists and its config, with the knob flags applied as `methods.SharedLLM` will apply them, passes
    SharedLLMConfig's checks (the base's own limits are checked once it loads). A knob sharedllm does not read
    (full_logits) was refused before, with every knob no chosen method reads."""
    from sharedllm.config import SharedLLMConfig

    adapter = adapter_argument(args.adapter)
    try:
        SharedLLMConfig.reading(adapter, knobs_from_args(args))
    except (ValueError, TypeError) as err:  # TypeError: a knob of the wrong type, e.g. --knob tree_depth=abc
        raise InputError(f"SharedLLM knobs: {err}") from err


def _check_existing_cells(args) -> None:
    """Each heldout cell file already in --output against the settings known before anything loads (the model's
    name, the method's config and the windows are checked once they load): refused now rather than after loading."""
    from sharedllm.assets import DEFAULT_DOMAINS

    from . import heldout

    names = {args.label: args.methods[0]} if args.label else {m: m for m in args.methods}
    for name, method in names.items():
        for domain in args.domains or DEFAULT_DOMAINS:
            for length in args.lengths:
                path = Path(args.output) / heldout.cell_filename(name, domain, length, args.targets_of or length)
                if path.exists():
                    _keep_cell(path, _cell_settings_before_loading(args, method, length), args.overwrite)


def _cell_settings_before_loading(args, method: str, length: int) -> dict:
    """The settings of a heldout cell (`heldout.cell_settings`) the command line decides."""
    return {"split": args.split, "adapter": _result_adapter(_chosen_adapter(args.adapter), method),
            "dtype": args.dtype, "seed": args.seed, "max_windows": args.max_windows,
            "targets_of": args.targets_of if args.targets_of not in (None, length) else None}


def _keep_cell(path: Path, settings: dict, overwrite: bool) -> bool:
    """Whether a heldout run keeps the cell file at `path` rather than scoring the cell: yes when it was made with
    `settings` (a stopped grid resumes), no with --overwrite. A cell of other settings is never kept as this run's:
    refused, and one of another split is refused even with --overwrite (the file names do not say the split)."""
    from . import heldout

    recorded = heldout.cell_settings(provenance.read_json(path))
    differences = heldout.settings_differences(recorded, settings)
    if "split" in differences:
        raise InputError(f"{path} holds the {recorded['split']} split's cell, not the {settings['split']} split's: "
                         f"pass another --output")
    if differences and not overwrite:
        shown = "; ".join(f"{name} {there!r} there, {here!r} now" for name, (there, here) in differences.items())
        raise InputError(f"{path} was made with other settings ({shown}): pass --label NAME or another --output to "
                         f"keep both, or --overwrite to replace it")
    return not overwrite


def _user_documents(paths) -> list:
    from sharedllm.data import load_user_documents

    try:
        return [d for path in paths for d in load_user_documents(path)]
    except (ValueError, FileNotFoundError) as err:
        raise InputError(f"--data: {err}") from err


def _require_windows(lengths, longest: int, unit: str, slack: int = 0) -> None:
    """CEPE windows are T tokens of one document: a length no document reaches would report no score at all."""
    if too_long := [n for n in lengths if n > longest + slack]:
        raise InputError(f"no document is long enough for a window of {', '.join(map(format_length, too_long))} tokens (the "
                         f"longest has {longest:,} {unit}): pass shorter --lengths or longer documents")


# ---------------------------------------------------------------------------------------------------------
# shared plumbing: model, methods, data, result files


class Session:
    """The base model (loaded once), the command line, and result writing for one `sharedllm eval` run."""

    def __init__(self, args):
        from sharedllm.loading import load_causal_lm

        self.args = args
        provenance.pin_commit()  # results name the code this run starts with
        if args.base is None:
            from sharedllm.assets import default_model_path

            args.base = str(default_model_path())
        self.base, self.tokenizer = load_causal_lm(args.base, dtype=DTYPES[args.dtype])
        self.model_name = _portable_path(args.base)  # how results and journals name the base
        self.base.to(args.device)
        self.adapter = _chosen_adapter(args.adapter)
        self._check_adapter_base()
        self.decoder_window = args.decoder_window or self._adapter_decoder_window() or KNOB_DEFAULTS["decoder_window"]
        self.knobs = knobs_from_args(args)  # the SharedLLM knob flags, for sharedllm and cepe
        self.command = shlex.join(["sharedllm", *sys.argv[1:]])

    def _check_adapter_base(self) -> None:
        """An adapter on a base it was not trained on fails inside its method (`from_pretrained`), after the methods
        before it ran: refused here, once the base has loaded and before any method runs."""
        from sharedllm.loading import base_fingerprint
        from sharedllm.methods import METHOD_CLASSES

        config = Path(self.adapter or "") / "config.json"
        if not (self.adapter and config.is_file() and any(METHOD_CLASSES[m].reads_adapter for m in self.args.methods)):
            return
        recorded = json.loads(config.read_text())
        trained_on, found = recorded.get("base_fingerprint"), base_fingerprint(self.base)
        if trained_on and found != trained_on:
            fp16 = ("; a float16 load of a float32 checkpoint changes the fingerprint: use --dtype float32 or bfloat16"
                    if self.args.dtype == "float16" else "")
            raise InputError(f"--adapter {self.adapter} was trained on {recorded.get('base_model')} (weight "
                             f"fingerprint {trained_on}), not on --base {self.args.base} (fingerprint {found}): leave "
                             f"--base out to load the adapter's own base{fp16}")

    def _adapter_decoder_window(self) -> int | None:
        config = Path(self.adapter or "") / "config.json"
        return json.loads(config.read_text())["decoder_window"] if self.adapter and config.is_file() else None

    def methods(self):
        """Yield (name, method) one at a time so that only one method's extra weights live at once."""
        from sharedllm.methods import load_method

        # one comparison: every method takes what it reads of the shared settings (Method.build); infllm alone has
        # options of its own here (--infllm)
        shared = {"adapter": self.adapter, "decoder_window": self.decoder_window, **self.knobs}
        for name in self.args.methods:
            options = self.args.infllm if name == "infllm" else {}
            yield self.args.label or name, load_method(name, self.base, self.tokenizer, shared=shared, **options)

    def documents(self, default_domains=None):
        """Tokenised documents (cached ids, no special tokens) and a description of their source."""
        from sharedllm.data import tokenize_documents

        docs, source = self.raw_documents(default_domains)
        return tokenize_documents(docs, self.tokenizer), source

    def raw_documents(self, default_domains=None):
        args = self.args
        if args.data:
            docs = _user_documents(args.data)
            return docs, {"source": ",".join(args.data), "split": "user", "domains": sorted({d.domain for d in docs})}
        from sharedllm.assets import DEFAULT_DOMAINS, load_documents

        domains = args.domains or default_domains or list(DEFAULT_DOMAINS)
        return load_documents(args.split, domains), {"split": args.split, "domains": domains}

    def haystack(self):
        args = self.args
        if args.data:
            return "\n\n".join(d.text for d in self.raw_documents()[0]), {"source": ",".join(args.data), "split": "user"}
        domains = args.domains or ["books"]
        return load_haystack(args.split, domains), {"split": args.split, "domains": domains}

    def provenance(self) -> dict:
        """hardware, command, git commit and time of a result (sharedllm.provenance, as train and bench write them)."""
        return provenance.record(self.base.device, self.args.dtype, command=self.command,
                                 attention=getattr(self.base.config, "_attn_implementation", None))

    def journal(self, task: str, name: str, method, **settings) -> tuple[TrialJournal, list[dict]]:
        """The trial journal of `method`'s run of `task`, and the trials a stopped run of the same settings left
        in it (rerunning the command continues that run). The adapter and the model are keyed as results name them
        (`_portable_path`), so that the same command continues from another clone, home or machine."""
        keys = {"method": _method_config(method), "model": self.model_name, "dtype": self.args.dtype,
                "seed": self.args.seed, **settings}
        journal = TrialJournal(self.args.output, task, name, keys, machine=provenance.machine(self.base.device))
        done = journal.load()
        if done:
            print(f"{name}: {len(done)} {task} trials already done in {journal.path} (a stopped run): continuing")
        for other in journal.others():  # never silently: a stopped run's work the user may have expected to go on
            print(f"{name}: not continuing {other}: a stopped run with other settings (the method's knobs, the "
                  f"model, the seed or the {task} settings differ)")
        return journal, done

    def result_adapter(self, method) -> str | None:
        return _result_adapter(self.adapter, method.name)

    def write(self, task, name, method, protocol, data, scores, counts, details, wall_time_s, notes=""):
        result = {
            "task": task, "protocol": protocol, "method": name,
            "method_config": _method_config(method),
            "model": self.model_name,
            "adapter": self.result_adapter(method),
            "data": data, "lengths": self.args.lengths, "counts": counts, "scores": scores, "details": details,
            "seed": self.args.seed, "wall_time_s": wall_time_s, **self.provenance(), "notes": notes,
        }
        path = Path(self.args.output) / f"{task}_{name}_{protocol}_{time.strftime('%Y%m%d-%H%M%S')}.json"
        provenance.write_json(path, result)
        print(f"wrote {path}")
        return path


def _result_adapter(adapter: str | None, method: str) -> str | None:
    """The adapter a result file names: the comparison's, for the methods that read it (by the method's own name,
    not a --label), as the README writes it."""
    return _portable_path(adapter) if method in SHAREDLLM_METHODS else None


def _portable_path(path: str | None) -> str | None:
    """A path as another machine would name it: inside the repository as the README writes it (adapters/...),
    inside the assets home as $SHAREDLLM_HOME/... Results and trial journals key on it, so that they name no
    machine and the same command continues a stopped run from another clone or home (a GPU machine's, say)."""
    if path is None:
        return path
    resolved = Path(path).resolve()
    if resolved.is_relative_to(REPO):
        return resolved.relative_to(REPO).as_posix()
    home = sharedllm_home().resolve()
    if resolved.is_relative_to(home):
        return f"$SHAREDLLM_HOME/{resolved.relative_to(home).as_posix()}"
    return path


def _method_config(method) -> dict:
    """The method's knobs for a result file, its adapter path (if any) portable like the top level's."""
    config = method.describe() if hasattr(method, "describe") else {}
    return {**config, "adapter": _portable_path(config["adapter"])} if config.get("adapter") else config


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


def ppl_results(session, protocol, lengths, max_windows, default_domains=None, notes=""):
    docs, data = session.documents(default_domains)
    ids = _with_bos(session.tokenizer, docs) if protocol == "sliding" else [d.ids for d in docs]
    if protocol == "cepe":
        _require_windows(lengths, max((len(d) for d in ids), default=0), "tokens")
    data["n_docs"] = len(docs)
    rows = {}
    for name, method in session.methods():
        start, scores, counts, details = time.time(), {}, {}, {}
        decoder_len = (method.describe().get("decoder_window") or 0) if hasattr(method, "describe") else 0
        for length in lengths:
            r = perplexity(method, ids, protocol, length, domains=[d.domain for d in docs],
                           decoder_len=min(decoder_len, length), max_windows=max_windows)
            scores[str(length)] = r["ppl"]
            counts[str(length)] = {"docs": r["n_docs"], "docs_too_short": r["n_docs_skipped"],
                                   "windows": r["n_windows"], "scored_tokens": r["scored_tokens"]}
            details[str(length)] = r
            rows.setdefault(name, {})[format_length(length)] = (
                f"{r['ppl']:.2f} ({r['n_windows']} win, {r['scored_tokens']} tok)" if r["ppl"] else "no doc >= T")
        session.write("ppl", name, method, protocol, data, scores, counts, details, time.time() - start, notes)
        del method
    return rows, data


def run_ppl(session):
    args = session.args
    rows, data = ppl_results(session, args.protocol, args.lengths, args.max_windows)
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
            records = heldout.score_windows(method, docs[domain], plan, length, not_run, a.max_seconds,
                                            done=done, on_record=journal.append)
            summary = heldout.summarise(records, a.seed)
            if not plan:
                summary["not_run"] = f"no {domain} {a.split} document has {plan_length} tokens"
            result = {
                "task": "heldout", "protocol": "cepe-heldout", "method": name, "method_config": _method_config(method),
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
    are checked against the cell files already there (`_keep_cell`) before the first is scored."""
    from . import heldout

    a, cells = session.args, []
    for domain in docs:
        doc_lengths = {doc_id: len(ids) for doc_id, ids in docs[domain].items()}
        for length in a.lengths:
            plan_length = a.targets_of or length
            # the plan of plan_length cut to length (itself without --targets-of)
            plan = heldout.targets_of(heldout.plan_windows(doc_lengths, plan_length, a.max_windows, a.seed),
                                      plan_length, length)
            path = Path(a.output) / heldout.cell_filename(name, domain, length, plan_length)
            settings = {**_cell_settings_before_loading(a, method.name, length), "model": session.model_name,
                        "method_config": _method_config(method), "windows_id": heldout.windows_id(plan, length)}
            if path.exists() and _keep_cell(path, settings, a.overwrite):
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


def _check_passkey_lengths(tokenizer, args) -> None:
    """A passkey prompt holds its instruction, needle and question whatever its filler: a shorter length would fail
    in the prompt search of its first trial. Checked once the tokenizer has loaded, before any method runs."""
    from .passkey import encode, passkey_key, passkey_prompt

    for length in args.lengths:
        keys = {passkey_key(args.seed, length, depth, trial) for depth in args.depths for trial in range(args.trials)}
        bare = max(len(encode(tokenizer, passkey_prompt(0, 0.0, key))) for key in keys)
        if bare > length:
            raise InputError(f"a passkey prompt without filler has {bare} tokens: --lengths {format_length(length)} "
                             f"is too short for one")


def run_passkey_task(session):
    a = session.args
    _check_passkey_lengths(session.tokenizer, a)
    rows = passkey_results(session, a.lengths, a.depths, a.trials)
    print_table(f"passkey accuracy (Landmark format), model {a.base}, depths {a.depths}", rows)


def run_niah(session):
    a = session.args
    haystack, data = session.haystack()
    rows = {}
    for name, method in session.methods():
        start = time.time()
        journal, done = session.journal("niah", name, method, data=data, haystack=haystack)  # the journal's name hashes it
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
    _check_passkey_lengths(session.tokenizer, a)
    note = (f"DEMO SETTINGS: {a.max_windows} PPL windows and {a.trials} passkey trials per method at depth(s) "
            f"{a.depths}: indicative only; the full protocols use 100 windows and >= 10 trials per cell")
    ppl_rows, data = ppl_results(session, "cepe", a.lengths, a.max_windows, notes=note)
    passkey_rows = passkey_results(session, a.lengths, a.depths, a.trials, note)
    rows = {m: {**{f"PPL@{k}": v for k, v in ppl_rows.get(m, {}).items()},
                **{f"passkey@{k}": v for k, v in passkey_rows.get(m, {}).items()}} for m in a.methods}
    print_table(f"SharedLLM demo: model {a.base} (native window "
                f"{getattr(session.base.config, 'max_position_embeddings', '?')}), adapter {_portable_path(session.adapter)}, "
                f"{data.get('domains')} {data.get('split')} split, CEPE PPL protocol", rows, note)
    path = report.regenerate(a.output, a.docs)
    print(f"regenerated {path} and {Path(a.docs) / 'figures'}")
