"""The shared plumbing of one `sharedllm eval` run: `Session` (the base model loaded once, the methods built one at
a time, documents, trial journals, result files) and how results name adapters, models and method configs portably.
"""

import functools
import hashlib
import json
import shlex
import sys
import time
from pathlib import Path

from sharedllm import provenance
from sharedllm.assets import sharedllm_home
from sharedllm.cli import InputError, chosen_adapter
from sharedllm.flags import knobs_from_args, resolve_device
from sharedllm.knobs import KNOB_DEFAULTS
from sharedllm.method_table import METHOD_READS
from sharedllm.provenance import REPO

from .journal import TrialJournal
from .needle import load_haystack

# The methods whose results name the comparison's adapter (`result_adapter`). Not `Method.reads_adapter`, which is
# sharedllm alone: cepe (the untrained preset) reads the adapter's decoder window only, yet its results and heldout
# cells have always named it (`keep_cell` compares it); its method_config says adapter null.
SHAREDLLM_METHODS = ("sharedllm", "cepe")


class Session:
    """The base model (loaded once), the command line, and result writing for one `sharedllm eval` run."""

    def __init__(self, args):
        import torch

        from sharedllm.loading import load_causal_lm

        self.args = args
        provenance.pin_commit()  # results name the code this run starts with
        if args.base is None:
            from sharedllm.assets import default_model_path

            args.base = str(default_model_path())
        self.base, self.tokenizer = load_causal_lm(args.base, dtype=getattr(torch, args.dtype))
        self.model_name = model_name(args.base)  # how results and journals name the base
        self.base.to(resolve_device(args.device))  # "auto": cuda if available
        self.adapter = chosen_adapter(args.adapter)
        self.adapter_config = read_adapter_config(self.adapter)
        self._check_adapter_base()
        self.shared = shared_settings(args, self.adapter, self.adapter_config)
        self.command = shlex.join(["sharedllm", *sys.argv[1:]])

    def _check_adapter_base(self) -> None:
        """An adapter on a base it was not trained on fails inside its method (`from_pretrained`), after the methods
        before it ran: refused here, once the base has loaded and before any method runs."""
        from sharedllm.loading import base_fingerprint
        if not (self.adapter_config and any(METHOD_READS[m].reads_adapter for m in self.args.methods)):
            return
        recorded = self.adapter_config
        trained_on, found = recorded.get("base_fingerprint"), base_fingerprint(self.base)
        if trained_on and found != trained_on:
            fp16 = ("; a float16 load of a float32 checkpoint changes the fingerprint: use --dtype float32 or bfloat16"
                    if self.args.dtype == "float16" else "")
            raise InputError(f"--adapter {self.adapter} was trained on {recorded.get('base_model')} (weight "
                             f"fingerprint {trained_on}), not on --base {self.args.base} (fingerprint {found}): leave "
                             f"--base out to load the adapter's own base{fp16}")

    def methods(self):
        """Yield (name, method) one at a time so that only one method's extra weights live at once."""
        from sharedllm.methods import load_method

        for name in self.args.methods:
            yield self.args.label or name, load_method(name, self.base, self.tokenizer, shared=self.shared,
                                                       **own_options(self.args, name))

    def haystack(self):
        return haystack(self.args)

    def provenance(self) -> dict:
        """hardware, command, git commit and time of a result (sharedllm.provenance, as train and bench write them),
        and the tokenizer's fingerprint: two results of one tokenizer read the same token windows and prompts, so
        `compare` pairs them even across two base folders (a base and its merged fine-tune, say)."""
        return {**provenance.record(self.base.device, self.args.dtype, command=self.command,
                                    attention=getattr(self.base.config, "_attn_implementation", None)),
                "tokenizer": self.tokenizer_fingerprint}

    @functools.cached_property
    def tokenizer_fingerprint(self) -> str:
        """Hashed once per run (it serialises the whole tokenizer), not once per result file."""
        from sharedllm.data import tokenizer_fingerprint

        return tokenizer_fingerprint(self.tokenizer)

    def journal(self, task: str, name: str, method, **settings) -> tuple[TrialJournal, list[dict]]:
        """The trial journal of `method`'s run of `task`, and the trials a stopped run of the same settings left
        in it (rerunning the command continues that run). The adapter and the model are keyed as results name them
        (`portable_path`), so that the same command continues from another clone, home or machine."""
        keys = journal_keys(self.args, method_config(method), self.model_name, **settings)
        # the adapter's weights are not in the name (a stopped run continues from another clone), but tag each trial
        weights = weights_tag(self.adapter_config) if method.reads_adapter else None
        journal = TrialJournal(self.args.output, task, name, keys, machine=provenance.machine(self.base.device),
                               weights=weights)
        done = journal.load()
        if done:
            unit = "windows" if task in ("ppl", "heldout") else "trials"
            print(f"{name}: {len(done)} {task} {unit} already done in {journal.path} (a stopped run): continuing")
        for other in journal.others():  # never silently: a stopped run's work the user may have expected to go on
            print(f"{name}: not continuing {other}: a stopped run with other settings (the method's knobs, the "
                  f"model, the seed or the {task} settings differ)")
        return journal, done

    def result_adapter(self, method) -> str | None:
        return result_adapter(self.adapter, method.name)

    def write(self, task, name, method, protocol, data, scores, counts, details, wall_time_s, notes=""):
        result = {
            "task": task, "protocol": protocol, "method": name,
            "method_config": method_config(method),
            "model": self.model_name,
            "adapter": self.result_adapter(method),
            "data": data, "lengths": self.args.lengths, "counts": counts, "scores": scores, "details": details,
            "seed": self.args.seed, "wall_time_s": wall_time_s, **self.provenance(), "notes": notes,
        }
        path = Path(self.args.output) / f"{task}_{name}_{protocol}_{time.strftime('%Y%m%d-%H%M%S')}.json"
        provenance.write_json(path, result)
        print(f"wrote {path}")
        return path


def result_adapter(adapter: str | None, method: str) -> str | None:
    """The adapter a result file names: the comparison's, for SHAREDLLM_METHODS (by the method's own name, not a
    --label), as the README writes it."""
    return portable_path(adapter) if method in SHAREDLLM_METHODS else None


def portable_path(path: str | None) -> str | None:
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


def method_config(method) -> dict:
    """The method's knobs for a result file, its adapter path (if any) portable like the top level's."""
    return portable_config(method.describe() if hasattr(method, "describe") else {})


def portable_config(config: dict) -> dict:
    """A method's config with its adapter path (if any) as `portable_path` writes it."""
    return {**config, "adapter": portable_path(config["adapter"])} if config.get("adapter") else config


def model_name(base: str | None) -> str:
    """How results and trial journals name the base: --base as `portable_path` writes it, or the default model's
    folder (`assets.default_model_path`, named here without building it)."""
    if base is None:
        from sharedllm.assets import MODEL_NAME

        base = str(sharedllm_home() / "models" / MODEL_NAME)
    return portable_path(base)


def journal_keys(args, config: dict, model: str, **settings) -> dict:
    """What the name of a method's trial journal fingerprints (`TrialJournal`): the method's config, the model's name,
    the dtype, the seed and the task's `settings`."""
    return {"method": config, "model": model, "dtype": args.dtype, "seed": args.seed, **settings}


def weights_tag(adapter_config: dict) -> str | None:
    """The tag of the trials of a method that reads the adapter (`TrialJournal.weights`): the start of its weights'
    sha256 as its config.json records it, taken together with its LoRA's where it records one (None for an
    adapter saved without one, and without an adapter). Every joint adapter saves the same empty module file, so
    without the LoRA's digest a LoRA retrained into the same folder would continue another LoRA's journal."""
    weights = adapter_config.get("adapter_sha256")
    if weights and (lora := adapter_config.get("lora_sha256")):  # joint adapters hold no module: their LoRA differs
        weights = hashlib.sha256(f"{weights} {lora}".encode()).hexdigest()
    return weights and weights[:16]


def method_config_before_loading(name: str, args, shared: dict) -> dict:
    """`method_config` of method `name` as this run will build it, from the command line, the adapter's config.json
    and the base's config.json, without loading any weights. sharedllm and cepe build a model from weights: their
    config is the one `knob_rules.read_knobs` gives (what their constructors build with); every other method is
    built on a stand-in base that holds only the base's config (read on first use: yarn's native length), which is
    all their constructors read."""
    from sharedllm.knob_rules import read_knobs
    from sharedllm.methods import CEPE, METHOD_CLASSES, SharedLLM, load_method

    method_class, options = METHOD_CLASSES[name], own_options(args, name)
    try:
        if not issubclass(method_class, SharedLLM):
            return method_config(load_method(name, _ConfigOnlyBase(args.base), None, shared=shared, **options))
        knobs = method_class.settings(shared, **options)
        adapter = knobs.pop("adapter", None)
        if issubclass(method_class, CEPE) and adapter is None:
            knobs = CEPE.preset(_ConfigOnlyBase(args.base).config.num_hidden_layers, knobs)
        config = read_knobs(adapter, knobs)
    except ValueError as err:  # what building the method would raise, after the methods before it had run
        raise InputError(str(err)) from err
    return portable_config({"method": name, "adapter": adapter, **{k: getattr(config, k) for k in method_class.KNOBS}})


class _ConfigOnlyBase:
    """The base model as far as the baselines' constructors read it: its config, from its config.json (no weights)."""

    def __init__(self, base: str | None):
        self.name = base

    @functools.cached_property
    def config(self):
        from transformers import AutoConfig

        from sharedllm.loading import DEFAULT_BASE, hub_model_not_found, resolve_base_path

        path = resolve_base_path(self.name or DEFAULT_BASE)
        try:
            return AutoConfig.from_pretrained(path)
        except OSError as error:  # as load_causal_lm reports a base it cannot find
            if Path(path).is_dir():
                raise
            raise hub_model_not_found(path, error) from None


# The command line as Session and the checks read it (checks.py imports these: session.py is the lower module).
def read_adapter_config(adapter: str | None) -> dict:
    """The adapter's config.json as saved ({} without an adapter, or where it has none)."""
    config = Path(adapter or "") / "config.json"
    return json.loads(config.read_text()) if adapter and config.is_file() else {}


def shared_settings(args, adapter: str | None, adapter_config: dict) -> dict:
    """The settings every method of one comparison takes what it reads of (`Method.build`): the adapter, one decoder
    window (the flag's, else the adapter's, else the default) and the SharedLLM knob flags (sharedllm and cepe)."""
    decoder_window = args.decoder_window or adapter_config.get("decoder_window") or KNOB_DEFAULTS["decoder_window"]
    return {"adapter": adapter, "decoder_window": decoder_window, **knobs_from_args(args)}


def own_options(args, name: str) -> dict:
    """A method's options of its own, over the shared settings: infllm alone has some here (--infllm)."""
    return args.infllm if name == "infllm" else {}


def raw_documents(args, default_domains=None) -> tuple[list, dict]:
    """The documents of `eval ppl` and `demo` (the --data files, else the corpus' --domains of --split) and how results
    describe them."""
    if args.data:
        docs = user_documents(args.data)
        return docs, {"source": ",".join(args.data), "split": "user", "domains": sorted({d.domain for d in docs})}
    from sharedllm.assets import DEFAULT_DOMAINS, load_documents

    domains = args.domains or default_domains or list(DEFAULT_DOMAINS)
    return load_documents(args.split, domains), {"split": args.split, "domains": domains}


def ppl_protocol(args) -> str:
    """The perplexity protocol a run scores with: `eval ppl`'s --protocol; the demo's is always CEPE's."""
    return args.protocol if args.task == "ppl" else "cepe"


def ppl_journal_settings(protocol: str, documents) -> dict:
    """What a perplexity run's journal fingerprints besides `journal_keys`: the protocol and the documents' text, so a
    --data file edited since the run stopped starts afresh instead of pairing old windows with new text."""
    digest = hashlib.sha1()
    for doc in documents:
        for part in (doc.doc_id, doc.domain, doc.text):
            digest.update(part.encode("utf-8") + b"\0")
    return {"protocol": protocol, "documents": digest.hexdigest()[:16]}


def haystack(args) -> tuple[str, dict]:
    """The haystack text of niah / ruler (the --data files, else the corpus' books) and how results describe it."""
    if args.data:
        return "\n\n".join(d.text for d in user_documents(args.data)), {"source": ",".join(args.data), "split": "user"}
    domains = args.domains or ["books"]
    return load_haystack(args.split, domains), {"split": args.split, "domains": domains}


def user_documents(paths) -> list:
    from sharedllm.data import load_user_documents

    try:
        return [d for path in paths for d in load_user_documents(path)]
    except (ValueError, FileNotFoundError) as err:
        raise InputError(f"--data: {err}") from err
