"""The checks of a `sharedllm eval` command line made before any model loads: options given to a task that would
ignore them, methods, knobs, lengths, folders, the corpus choice, user files, the heldout cells already written and
the trial journals of stopped runs, each refused with one line saying what to change (`InputError`).
"""

import functools
import json
from pathlib import Path

from sharedllm import provenance
from sharedllm.cli import InputError, adapter_argument, chosen_adapter
from sharedllm.flags import check_infllm_options, format_length, knob_flag, knobs_from_args, refuse_repeats
from sharedllm.method_table import METHOD_READS, METHODS

from .journal import TrialJournal, journals_of
from .ppl import SCORED
from .session import (haystack, journal_keys, method_config_before_loading, model_name, ppl_journal_settings,
                      ppl_protocol, raw_documents, read_adapter_config, result_adapter, shared_settings, user_documents,
                      weights_tag)

# Options that only some tasks read: given to another task they would be ignored without a word. Each defaults to
# None ("not given") on the command line; DEFAULTS (cli.py) fills it in once this is checked.
CORPUS_TASKS = {"ppl", "heldout", "niah", "ruler", "demo"}  # the tasks that read documents of the corpus
TASK_OPTIONS = {"protocol": {"ppl"}, "max_windows": {"ppl", "heldout", "demo"}, "trials": {"passkey", "niah", "ruler", "demo"},
                "depths": {"passkey", "niah", "demo"}, "tasks": {"ruler"}, "threshold": {"ruler"},
                "limit": {"longbench"}, "docs": {"demo"}, "max_length": {"heldout"}, "max_seconds": {"heldout"},
                "targets_of": {"heldout"}, "overwrite": {"heldout"}, "domains": CORPUS_TASKS, "split": CORPUS_TASKS,
                "data": {"ppl", "niah", "ruler", "longbench", "demo"},
                "seed": {"heldout", "passkey", "niah", "ruler", "demo"}}  # ppl windows and longbench draw nothing
# The corpus choices, which --data replaces.
CORPUS_OPTIONS = {"domains": "corpus domains", "split": "a corpus split"}
# The journals each task keeps per method (`Session.journal`): demo's windows and trials are ppl's and passkey's.
JOURNAL_TASKS = {"ppl": ("ppl",), "demo": ("ppl", "passkey"), "passkey": ("passkey",), "niah": ("niah",),
                 "ruler": ("ruler",), "heldout": ("heldout",)}


def check_given_options(args) -> None:
    """Options given to a task that would ignore them (checked before DEFAULTS fills the ones not given)."""
    for option, tasks in TASK_OPTIONS.items():
        if getattr(args, option) is not None and args.task not in tasks:
            raise InputError(f"--{option.replace('_', '-')} applies to {' / '.join(sorted(tasks))}, not {args.task}")
    for option, what in CORPUS_OPTIONS.items():
        if args.data and getattr(args, option) is not None:
            raise InputError(f"--{option} chooses {what}; with --data your files are the data: pass one")


def recorded_base(adapter) -> str | None:
    """The base model an adapter records, or None for the default model (which Session names as it always has:
    results and trial journals key on that name) and without an adapter."""
    from sharedllm.assets import DEFAULT_BASE
    from sharedllm.knob_rules import read_adapter_json  # no model library: its refusals answer at once

    folder = Path(str(adapter))
    if chosen_adapter(adapter) is None or not (folder / "config.json").is_file():
        return None
    try:  # a damaged config.json, or a base model's folder given as the adapter
        base = read_adapter_json(folder).get("base_model")
    except ValueError as err:
        raise InputError(f"--adapter: {err}") from err
    return None if base == DEFAULT_BASE else base


def check_methods(args) -> None:
    """The methods and what is given to them, from the method table alone (no torch: a typo answers at once)."""
    if unknown := [m for m in args.methods if m not in METHODS]:
        raise InputError(f"unknown method {', '.join(map(repr, unknown))}; valid methods: {', '.join(METHODS)}")
    if args.label and len(args.methods) != 1:
        raise InputError("--label names one method's results: pass a single method in --methods with it")
    check_infllm_options(args)
    for name in knobs_from_args(args):  # a knob no chosen method reads would be silently ignored
        readers = [m for m in METHODS if name in METHOD_READS[m].shared_knobs]
        if not readers:  # full_logits: eval scores decoder windows itself
            raise InputError(f"{knob_flag(name)} does not apply to sharedllm eval")
        if not set(readers) & set(args.methods):
            raise InputError(f"{knob_flag(name)} is a knob of {' / '.join(readers)}, not of {', '.join(args.methods)}")


def validate_args(args) -> None:
    """Everything else that can be checked before a model is loaded (after `check_methods`), each with one message
    saying what to change."""
    tokens = _BaseTokens(args.base)  # loaded at most once, by the checks below that need it

    if args.depths and not all(0.0 <= d <= 1.0 for d in args.depths):
        raise InputError(f"--depths must lie in [0, 1], got {args.depths}")
    _check_no_repeats(args)
    _check_cepe_adapter(args)
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
        _check_existing_cells(args, tokens)
    if args.task == "longbench":
        if not args.data:
            raise InputError("longbench needs --data FILE.jsonl ... (LongBench cannot be downloaded here)")
        from .longbench import load_records

        load_records(args.data)  # raises InputError naming the file and line of a bad record
    elif args.data:
        documents = user_documents(args.data)
        if args.task in ("ppl", "demo"):
            _check_unique_ids(documents)
            if ppl_protocol(args) == "cepe":
                # A token covers at least one byte (byte-level BPE; SentencePiece with byte fallback may add one
                # prefix token): a document of fewer than T - 1 bytes has no T-token window. The exact check, on token
                # counts, follows once the tokenizer loads.
                longest = max(len(d.text.encode("utf-8")) for d in documents)
                require_windows(args.lengths, longest, "bytes", slack=1)
    _check_journal_weights(args, tokens)
    if args.task in ("passkey", "demo"):
        _check_passkey_lengths(tokens.tokenizer, args)
    elif args.task in ("niah", "ruler"):
        _check_needle_lengths(tokens.tokenizer, args)


def _check_unique_ids(documents) -> None:
    """Perplexity windows are recorded, journaled and paired (`sharedllm compare`) by their document's id: two
    documents of one id would take each other's windows."""
    seen = set()
    for doc in documents:
        if doc.doc_id in seen:
            raise InputError(f"--data: two documents are named {doc.doc_id!r} (files of one name in two --data "
                             "arguments, or JSON records of one 'id'): perplexity windows are recorded by document, "
                             "so give each its own name (a folder of files names them by their paths inside it)")
        seen.add(doc.doc_id)


class _BaseTokens:
    """What the checks read of the base's tokenizer, loaded alone (the model loads after them): the tokenizer and the
    heldout documents' token counts, each loaded once for all the checks of one `validate_args` (the cell and the
    journal checks ask for the same domains). Not kept past it: the documents may change between two commands run
    in one process."""

    def __init__(self, base: str | None):
        self.base = base  # as Session loads it: None is the default model
        self._doc_lengths = {}

    @functools.cached_property
    def tokenizer(self):
        from sharedllm import loading

        return loading.load_base_tokenizer(self.base or loading.DEFAULT_BASE)

    def doc_lengths(self, split: str, domain: str) -> dict[str, int]:
        """{document id: its token count} of the heldout documents of `domain` in `split`."""
        from . import heldout

        if (split, domain) not in self._doc_lengths:
            docs = heldout.heldout_documents(domain, self.tokenizer, split)
            self._doc_lengths[split, domain] = {doc_id: len(ids) for doc_id, ids in docs.items()}
        return self._doc_lengths[split, domain]


def _check_no_repeats(args) -> None:
    """A value listed twice would be run twice, and its trials counted twice (a journal keys them by value)."""
    for option in ("methods", "lengths", "depths", "domains", "tasks"):
        refuse_repeats(f"--{option}", getattr(args, option) or [], format_length if option == "lengths" else str)
    given = args.data or []  # one file, however it is spelled, named as it was first given
    files = [Path(path).resolve() for path in given]
    refuse_repeats("--data", files, lambda file: given[files.index(file)])


def _check_window_lengths(args) -> None:
    """A perplexity window scores its last SCORED tokens, the first of them predicted from at least one token before
    (the sliding protocol's stride is as long): a shorter window fails in the scoring, after the model loaded."""
    if args.task in ("ppl", "heldout", "demo") and (short := [n for n in args.lengths if n <= SCORED]):
        raise InputError(f"{args.task} scores the last {SCORED} tokens of each window after at least one token of "
                         f"context: --lengths must be more than {SCORED}, got {', '.join(map(format_length, short))}")


def _check_passkey_lengths(tokenizer, args) -> None:
    """A passkey prompt holds its instruction, needle and question whatever its filler: a shorter length would fail
    in the prompt search of its first trial, after the base model loaded and the methods before it ran."""
    from .passkey import encode, passkey_key, passkey_prompt

    for length in args.lengths:
        keys = {passkey_key(args.seed, length, depth, trial) for depth in args.depths for trial in range(args.trials)}
        bare = max(len(encode(tokenizer, passkey_prompt(0, 0.0, key))) for key in keys)
        if bare > length:
            raise InputError(f"a passkey prompt without filler has {bare} tokens: --lengths {format_length(length)} "
                             f"is too short for one")


def _check_needle_lengths(tokenizer, args) -> None:
    """A niah / ruler prompt holds its template, needles and question whatever its haystack, and its answer counts in
    the length (RULER): a shorter length would fail in the prompt search of its first trial, as passkey's would."""
    from .needle import NIAH_ANSWER_TOKENS, RULER_TASKS, make_sample, niah_sample, shortest_length

    for length in args.lengths:
        if args.task == "niah":
            samples = [niah_sample(tokenizer, length, f"{args.seed}/{trial}", depth=depth,
                                   max_new_tokens=NIAH_ANSWER_TOKENS, fill=False)
                       for depth in args.depths for trial in range(args.trials)]
        else:
            samples = [make_sample(task, tokenizer, length, f"{args.seed}/{trial}", fill=False)
                       for task in args.tasks or RULER_TASKS for trial in range(args.trials)]
        needed, sample = max(((shortest_length(tokenizer, sample), sample) for sample in samples), key=lambda x: x[0])
        if needed > length:
            what = "niah" if args.task == "niah" else f"ruler {sample.task}"
            raise InputError(f"a {what} prompt without haystack and its {sample.max_new_tokens}-token answer have "
                             f"{needed} tokens: --lengths {format_length(length)} is too short for one")


def _check_cepe_adapter(args) -> None:
    """cepe is the untrained CEPE-style preset: of the comparison's adapter it reads only the decoder window. An
    --adapter given with cepe alone looks like a trained CEPE-style adapter being scored, and is not: the
    cepe-40-steps rows of 2026-11-23 scored the preset (= window with a 1024-token decoder window) under the
    adapter's name."""
    from sharedllm.assets import DEFAULT_ADAPTER

    adapter = chosen_adapter(args.adapter)
    if "cepe" in args.methods and "sharedllm" not in args.methods and adapter not in (None, str(DEFAULT_ADAPTER)):
        raise InputError(f"--methods cepe scores the untrained CEPE-style preset, which would read only the decoder "
                         f"window of --adapter {args.adapter}: score a trained CEPE-style adapter as --methods "
                         f"sharedllm --adapter {args.adapter} --label cepe, or set the preset's --decoder-window")


def _check_sliding_methods(methods) -> None:
    """The sliding protocol scores a document from its second token on; window, sharedllm and cepe predict only inside
    their decoder window (the tokens before it are cut, or become context chunks), so their first window fails."""
    if unfit := [m for m in methods if METHOD_READS[m].window_only]:
        fit = [m for m, reads in METHOD_READS.items() if not reads.window_only]
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
    if args.task in CORPUS_TASKS and not args.data:  # the corpus is read after the model loads: check it is there
        from sharedllm.assets import load_documents

        haystack = args.task in ("niah", "ruler") and not args.domains  # their haystack is books by default
        try:  # a few MB of text for the test split
            load_documents(args.split, ["books"] if haystack else args.domains)
        except FileNotFoundError as err:
            raise InputError(str(err)) from err


def _check_sharedllm_knobs(args) -> None:
    """The adapter exists and its config, with the knob flags applied as `methods.SharedLLM` will apply them, passes
    SharedLLMConfig's checks (the base's own limits are checked once it loads). A knob sharedllm does not read
    (full_logits) was refused before, with every knob no chosen method reads."""
    from sharedllm.knob_rules import read_knobs  # no model library: a bad combination is refused at once

    adapter = adapter_argument(args.adapter)
    try:
        read_knobs(adapter, knobs_from_args(args))
    except (ValueError, TypeError) as err:  # TypeError: a knob of the wrong type (which the flags refuse first)
        raise InputError(f"SharedLLM knobs: {err}") from err


def _check_existing_cells(args, tokens: _BaseTokens) -> None:
    """Each heldout cell file already in --output against every setting `cli._cells_to_score` compares once the
    model has loaded: the command line's, the model's name, the method's config (`method_config_before_loading`)
    and the windows (`_windows_id`, with the tokenizer alone). Refused now rather than after the methods before
    it ran; what the settings cost is paid only where a cell file is there."""
    from sharedllm.assets import DEFAULT_DOMAINS

    adapter = chosen_adapter(args.adapter)
    shared = shared_settings(args, adapter, read_adapter_config(adapter))
    for name, method in _result_names(args).items():
        config = None  # the method's config, once a cell of it is there (yarn's reads the base's config.json)
        for domain in args.domains or DEFAULT_DOMAINS:
            for length in args.lengths:
                path = cell_path(args, name, domain, length)
                if path.exists():
                    config = config or method_config_before_loading(method, args, shared)
                    settings = cell_settings(args, method, length, model_name(args.base), config,
                                             _windows_id(args, domain, length, tokens))
                    keep_cell(path, settings, args.overwrite)


def _result_names(args) -> dict[str, str]:
    """{the name results and journals give a method: the method}: its --label, else its own."""
    return {args.label: args.methods[0]} if args.label else {m: m for m in args.methods}


def _check_journal_weights(args, tokens: _BaseTokens) -> None:
    """A stopped run's journal of trials scored with other adapter weights (the adapter retrained into its folder)
    is refused when its method's turn comes (`TrialJournal.load`), after the methods before it ran: refused here
    instead, with the same message, for every method that reads the adapter. Each journal's name is computed as
    `Session.journal` computes it, without loading the model; what that costs (ppl's documents, niah / ruler's
    haystack, heldout's windows and so the tokenizer) is paid only where a journal of the method is there at all."""
    tasks, adapter = JOURNAL_TASKS.get(args.task, ()), chosen_adapter(args.adapter)
    if not tasks:  # a task without journals
        return
    adapter_config = read_adapter_config(adapter)
    weights = weights_tag(adapter_config)
    if weights is None:  # no weights to tell apart
        return
    shared = shared_settings(args, adapter, adapter_config)
    for name, method in _result_names(args).items():
        if not METHOD_READS[method].reads_adapter:
            continue
        config = None
        for task in tasks:
            for journal_name, settings in _journals(task, name, args, tokens):
                if journals_of(args.output, task, journal_name):
                    config = config or method_config_before_loading(method, args, shared)
                    keys = journal_keys(args, config, model_name(args.base), **settings())
                    TrialJournal(args.output, task, journal_name, keys, weights=weights).load()


def _journals(task: str, name: str, args, tokens: _BaseTokens):
    """(journal name, its task settings as a function) of each journal a method's run reads, named as the task runners
    of cli.py name them: one per method, heldout's one per cell it scores (a cell file kept never reads its journal)."""
    if task == "passkey":
        yield name, dict
    elif task == "ppl":
        yield name, lambda: ppl_journal_settings(ppl_protocol(args), raw_documents(args)[0])
    elif task in ("niah", "ruler"):
        yield name, lambda: dict(zip(("haystack", "data"), haystack(args)))
    else:
        from sharedllm.assets import DEFAULT_DOMAINS

        for domain in args.domains or DEFAULT_DOMAINS:
            for length in args.lengths:
                if args.overwrite or not cell_path(args, name, domain, length).exists():
                    yield f"{name}_{domain}_{length}", lambda domain=domain, length=length: {
                        "windows": _windows_id(args, domain, length, tokens)}


def _windows_id(args, domain: str, length: int, tokens: _BaseTokens) -> str:
    """`heldout.windows_id` of a cell's windows, which are drawn from the documents' token counts (the tokenizer
    alone: the model loads later)."""
    from . import heldout

    doc_lengths = tokens.doc_lengths(args.split, domain)
    plan = heldout.cell_plan(doc_lengths, length, args.targets_of or length, args.max_windows, args.seed)
    return heldout.windows_id(plan, length)


def cell_path(args, name: str, domain: str, length: int) -> Path:
    """Where heldout writes the cell of `name` (a method, or its --label) in `domain` at `length`."""
    from . import heldout

    return Path(args.output) / heldout.cell_filename(name, domain, length, args.targets_of or length)


def cell_settings(args, method: str, length: int, model: str, method_config: dict, windows_id: str) -> dict:
    """What a heldout cell file is kept by (`heldout.cell_settings`), the same before loading (these checks) and
    after (`cli._cells_to_score`): the command line's settings, the model's name, the method's config, the windows."""
    return {"split": args.split, "adapter": result_adapter(chosen_adapter(args.adapter), method),
            "dtype": args.dtype, "seed": args.seed, "max_windows": args.max_windows,
            "targets_of": args.targets_of if args.targets_of not in (None, length) else None,
            "model": model, "method_config": method_config, "windows_id": windows_id}


def keep_cell(path: Path, settings: dict, overwrite: bool) -> bool:
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


def require_windows(lengths, longest: int, unit: str, slack: int = 0) -> None:
    """CEPE windows are T tokens of one document: a length no document reaches would report no score at all."""
    if too_long := [n for n in lengths if n > longest + slack]:
        raise InputError(f"no document is long enough for a window of {', '.join(map(format_length, too_long))} tokens (the "
                         f"longest has {longest:,} {unit}): pass shorter --lengths or longer documents")
