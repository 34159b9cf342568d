"""The shared plumbing of one `sharedllm eval` run: `Session` (the base model loaded once, the methods built one at
a time, documents, trial journals, result files) and how results name adapters, models and method configs portably.
"""

import json
import shlex
import sys
import time
from pathlib import Path

import torch

from sharedllm import provenance
from sharedllm.assets import sharedllm_home
from sharedllm.cli import InputError
from sharedllm.config import KNOB_DEFAULTS
from sharedllm.flags import knobs_from_args
from sharedllm.provenance import REPO

from .journal import TrialJournal
from .needle import load_haystack

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
SHAREDLLM_METHODS = ("sharedllm", "cepe")  # the methods the SharedLLM knob flags configure


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
        self.model_name = portable_path(args.base)  # how results and journals name the base
        self.base.to(args.device)
        self.adapter = chosen_adapter(args.adapter)
        config = Path(self.adapter or "") / "config.json"
        self.adapter_config = json.loads(config.read_text()) if self.adapter and config.is_file() else {}
        self._check_adapter_base()
        self.decoder_window = (args.decoder_window or self.adapter_config.get("decoder_window")
                               or KNOB_DEFAULTS["decoder_window"])
        self.knobs = knobs_from_args(args)  # the SharedLLM knob flags, for sharedllm and cepe
        self.command = shlex.join(["sharedllm", *sys.argv[1:]])

    def _check_adapter_base(self) -> None:
        """An adapter on a base it was not trained on fails inside its method (`from_pretrained`), after the methods
        before it ran: refused here, once the base has loaded and before any method runs."""
        from sharedllm.loading import base_fingerprint
        from sharedllm.methods import METHOD_CLASSES

        if not (self.adapter_config and any(METHOD_CLASSES[m].reads_adapter for m in self.args.methods)):
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
            docs = user_documents(args.data)
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
        (`portable_path`), so that the same command continues from another clone, home or machine."""
        keys = {"method": method_config(method), "model": self.model_name, "dtype": self.args.dtype,
                "seed": self.args.seed, **settings}
        # the adapter's weights are not in the name (a stopped run continues from another clone), but tag each trial
        weights = self.adapter_config.get("adapter_sha256") if method.reads_adapter else None
        journal = TrialJournal(self.args.output, task, name, keys, machine=provenance.machine(self.base.device),
                               weights=weights and weights[:16])
        done = journal.load()
        if done:
            print(f"{name}: {len(done)} {task} trials already done in {journal.path} (a stopped run): continuing")
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
    """The adapter a result file names: the comparison's, for the methods that read it (by the method's own name,
    not a --label), as the README writes it."""
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
    config = method.describe() if hasattr(method, "describe") else {}
    return {**config, "adapter": portable_path(config["adapter"])} if config.get("adapter") else config


# The command line as Session and the checks read it (checks.py imports these: session.py is the lower module).
def chosen_adapter(value) -> str | None:
    """--adapter as the methods read it: 'none' (any case) is no adapter."""
    return None if str(value).lower() == "none" else value


def user_documents(paths) -> list:
    from sharedllm.data import load_user_documents

    try:
        return [d for path in paths for d in load_user_documents(path)]
    except (ValueError, FileNotFoundError) as err:
        raise InputError(f"--data: {err}") from err
