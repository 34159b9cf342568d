"""One command-line vocabulary for every command (litgpt-style): the SharedLLM knob flags derived from
`config.KNOBS`, token lengths parsed and printed one way, and the flags several commands share (InfLLM's
`--infllm KNOB=VALUE` among them).

Commands import this module while building their parser, so it imports no torch or transformers (`sharedllm
--help` stays fast): the knob table comes from `sharedllm.knobs`, which is light for the same reason.
"""

import argparse
import re
import sys

from sharedllm.knobs import KNOBS
from sharedllm.method_table import INFLLM_OPTIONS, check_infllm_values

_LENGTH = re.compile(r"^\s*(\d+)\s*([kKmM]?)\s*$")
_SCALE = {"": 1, "k": 1024, "m": 1024 * 1024}


def parse_length(text: str | int) -> int:
    """Token count from "8192", "8K"/"8k" (x1024) or "1M" (x1024^2); argparse `type=` for every length flag."""
    if isinstance(text, int) and not isinstance(text, bool):
        value = text
    else:
        match = _LENGTH.match(str(text))
        if match is None:
            raise argparse.ArgumentTypeError(f"not a token length: {text!r} (use e.g. 8192, 8K or 128K)")
        value = int(match.group(1)) * _SCALE[match.group(2).lower()]
    if value < 1:
        raise argparse.ArgumentTypeError(f"a token length must be >= 1, got {text!r}")
    return value


def format_length(n: int) -> str:
    """The inverse used in tables, file names and plots: 8192 -> "8K", 131072 -> "128K", 1000 -> "1000"."""
    n = int(n)
    for suffix, scale in (("M", 1024 * 1024), ("K", 1024)):
        if n >= scale and n % scale == 0:
            return f"{n // scale}{suffix}"
    return str(n)


def knob_flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def add_knob_arguments(parser: argparse.ArgumentParser, title: str | None = None,
                       notes: dict[str, str] | None = None) -> None:
    """Add one flag per `config.KNOBS` entry (`--chunk-size`, `--tree-selection`, ...) with the knob's type,
    choices and help. Every flag defaults to None, meaning "not given": the command then keeps the adapter's
    saved value or the config default (`knobs_from_args` returns only the given ones). `notes` appends what a
    knob means to this command in particular (knob name -> text) to its help."""
    group = parser.add_argument_group(title or "SharedLLM knobs (default: the adapter's saved value, else the config default)")
    for name, knob in KNOBS.items():
        # an optional knob's help says what its None default means (P, the tree, every chunk, ...)
        default_note = "" if knob.optional else f" (default {knob.default})"
        text = knob.help + default_note + (f"; {notes[name]}" if notes and name in notes else "")
        if knob.type is bool:
            group.add_argument(knob_flag(name), dest=name, action=argparse.BooleanOptionalAction, default=None,
                               help=text)
            continue
        if knob.optional:
            text += f"; {NONE!r} sets it back to that default"
        group.add_argument(knob_flag(name), dest=name, type=knob_type(name), choices=knob.choices, default=None,
                           help=text)


def knob_type(name: str):
    """The argparse `type=` of a (non-bool) knob's flag: its type, token lengths spelled as lengths, at least the
    knob's minimum (refused while parsing, before any model library loads), "none" for an optional knob."""
    knob = KNOBS[name]
    kind = parse_length if name in LENGTH_KNOBS else knob.type
    if knob.minimum is not None:
        kind = at_least(knob.minimum, kind)
    return _or_none(kind) if knob.optional else kind


# An optional knob's flag given "none" sets the knob back to None, so an adapter's saved value can be switched off
# from the command line (e.g. `--selected-leaves none`: the greedy tree again, for an ablation).
NONE = "none"
_SET_TO_NONE = object()  # what the flag parses "none" to: argparse's own None means "not given"


def _or_none(kind):
    def parse(text: str):
        return _SET_TO_NONE if text.strip().lower() == NONE else kind(text)

    parse.__name__ = getattr(kind, "__name__", "value")  # argparse names the type in its error messages
    return parse


# knobs counted in tokens accept the length spelling (`--decoder-window 2K`)
LENGTH_KNOBS = ("chunk_size", "decoder_window")


def knobs_from_args(args: argparse.Namespace) -> dict:
    """The knobs given on the command line (flags left at None are not given; an optional knob given "none" is
    returned as None, which overrides the adapter's saved value)."""
    given = {name: getattr(args, name) for name in KNOBS if getattr(args, name, None) is not None}
    return {name: None if value is _SET_TO_NONE else value for name, value in given.items()}


def knob_flags(knobs: dict, skip=()) -> list[str]:
    """The command-line flags that give `knobs` (e.g. an adapter's saved config.json), one per knob in it, in
    `config.KNOBS` order; the inverse of `knobs_from_args` after `add_knob_arguments`. An optional knob saved as None
    is given as `none` (so that the flags switch another adapter's saved value off too); any other None is left out."""
    flags = []
    for name, knob in KNOBS.items():
        if name in skip or name not in knobs or (knobs[name] is None and not knob.optional):
            continue
        if knobs[name] is None:
            flags += [knob_flag(name), NONE]
        elif knob.type is bool:
            flags.append(knob_flag(name) if knobs[name] else "--no-" + knob_flag(name)[2:])
        else:
            flags += [knob_flag(name), str(knobs[name])]
    return flags


def add_deprecated_alias(parser, old: str, new: str, **kwargs) -> None:
    """Accept `old` (an earlier spelling of `new`, kept for one release) into `new`'s destination, with a warning;
    hidden from --help, where `new`'s help names it."""
    parser.add_argument(old, dest=new.lstrip("-").replace("-", "_"), action=_Deprecated, new=new,
                        help=argparse.SUPPRESS, **kwargs)


class _Deprecated(argparse.Action):
    def __init__(self, option_strings, dest, new: str, **kwargs):
        super().__init__(option_strings, dest, **kwargs)
        self.new = new

    def __call__(self, parser, namespace, values, option_string=None):
        warn_deprecated(option_string, self.new)
        setattr(namespace, self.dest, values)


def warn_deprecated(old: str, new: str) -> None:
    """One stderr line per use of an old spelling (a command line, not a library call: no warnings machinery)."""
    print(f"warning: {old} is deprecated and will be removed in the next release: use {new}", file=sys.stderr)


def add_old_knob_argument(parser) -> None:
    """`--knob NAME=VALUE`, eval's old spelling of a SharedLLM knob flag (`--knob tree_depth=0` = `--tree-depth 0`):
    hidden, with a warning, and kept because committed results record commands that use it (docs/results.md quotes
    them). Its value is read as the knob's flag reads it, and a knob given twice is refused (which one was meant?).
    It fills the knob flag's own destination; the flag itself wins wherever it stands."""
    parser.add_argument("--knob", action=_OldKnob, metavar="NAME=VALUE", help=argparse.SUPPRESS)


class _OldKnob(argparse.Action):
    def __call__(self, parser, namespace, text, option_string=None):
        name, sep, value = text.partition("=")
        if not sep or name not in KNOBS:
            raise argparse.ArgumentError(self, f"wants NAME=VALUE with NAME a SharedLLM knob ({', '.join(KNOBS)}), "
                                               f"got {text!r}; InfLLM's options are --infllm KNOB=VALUE")
        given = getattr(namespace, self.dest) or []  # the knobs --knob gave so far (its dest holds nothing else)
        if name in given:
            raise argparse.ArgumentError(self, f"gives {name} more than once: pass each knob once")
        setattr(namespace, self.dest, [*given, name])
        try:
            value = _old_knob_value(name, value)
        except argparse.ArgumentTypeError as err:
            raise argparse.ArgumentError(self, f"{name}: {err}") from None
        as_flags = knob_flags({name: None if value is _SET_TO_NONE else value})
        warn_deprecated(f"{option_string} {text}", " ".join(as_flags))
        if getattr(namespace, name) is None:  # its own flag was not given (yet: given later, it overwrites)
            setattr(namespace, name, value)


def _old_knob_value(name: str, text: str):
    """A --knob value read as the knob's flag reads it (`knob_type`, its choices; true / false for a switch), and
    null, which --knob read as JSON, as "none" for an optional knob."""
    knob = KNOBS[name]
    if knob.type is bool:
        if text not in ("true", "false"):
            raise argparse.ArgumentTypeError(f"wants true or false, got {text!r}")
        return text == "true"
    parse = knob_type(name)
    try:
        value = parse(NONE if knob.optional and text == "null" else text)
    except (TypeError, ValueError):  # as argparse words it for the flag
        raise argparse.ArgumentTypeError(f"invalid {parse.__name__} value: {text!r}") from None
    if knob.choices and value not in knob.choices:
        raise argparse.ArgumentTypeError(f"invalid choice: {text!r} (choose from {', '.join(map(repr, knob.choices))})")
    return value


def add_infllm_argument(parser) -> None:
    """`--infllm KNOB=VALUE ...` of the commands that compare methods (eval, bench): InfLLM's own options over its
    defaults, collected into one dict (`args.infllm`, InfLLM's keyword arguments), repeats included."""
    parser.add_argument("--infllm", nargs="+", type=infllm_option, action=_Collect, default={}, metavar="KNOB=VALUE",
                        help="InfLLM's options over its defaults, whole numbers, e.g. topk=8 n_sink=64 (the names: "
                             "method_table.INFLLM_OPTIONS); its local window defaults to --decoder-window")


def infllm_option(text: str) -> tuple[str, int]:
    """argparse `type=` of --infllm: "topk=8" -> ("topk", 8). The names are InfLLM's own declaration
    (`method_table.INFLLM_OPTIONS`, `methods.InfLLM.KNOBS`), every one a whole number."""
    name, _, value = text.partition("=")
    if name not in INFLLM_OPTIONS or not (value.isascii() and value.isdigit()):
        raise argparse.ArgumentTypeError(f"wants KNOB=N with KNOB one of {', '.join(INFLLM_OPTIONS)} and N a whole "
                                         f"number, got {text!r}")
    return name, int(value)


class _Collect(argparse.Action):
    """(name, value) pairs into one dict, over repeats of the flag too (a later value wins)."""

    def __call__(self, parser, namespace, pairs, option_string=None):
        setattr(namespace, self.dest, {**getattr(namespace, self.dest), **dict(pairs)})  # a new dict: never the default


def check_infllm_options(args) -> None:
    """--infllm without infllm in --methods would be silently ignored, and values InfLLM cannot run with fail once it
    is built: refuse both."""
    from sharedllm.cli import InputError

    if args.infllm and "infllm" not in args.methods:
        raise InputError("--infllm sets infllm's options: add infllm to --methods")
    if args.infllm:
        try:  # values it cannot run with, refused before the model loads and the methods before it run
            check_infllm_values(**args.infllm)
        except ValueError as err:
            raise InputError(f"--infllm: {err}") from err


def refuse_repeats(flag: str, values, show=str) -> None:
    """A value listed twice would be run (or capped) twice, and its trials counted twice: one line naming it."""
    from sharedllm.cli import InputError

    if repeated := [value for i, value in enumerate(values) if value in values[:i]]:
        raise InputError(f"{flag} lists {', '.join(map(show, dict.fromkeys(repeated)))} more than once: pass each once")


def add_base_argument(parser, default: str = "the SmolLM2-135M from `sharedllm assets`") -> None:
    """`--base`: the base causal LM, the same flag in every command that loads one."""
    parser.add_argument("--base", default=None, help=f"base causal LM folder or hub id (default: {default})")


def add_adapter_argument(parser) -> None:
    """`--adapter` of the commands that compare methods (eval, bench): the SharedLLM adapter the sharedllm method
    reads, the shipped default unless given; "none" is the untrained model (`cli.chosen_adapter`)."""
    from sharedllm.assets import DEFAULT_ADAPTER

    parser.add_argument("--adapter", default=str(DEFAULT_ADAPTER),
                        help="SharedLLM adapter folder that --methods sharedllm reads; 'none' = the untrained model, "
                             f"set by the knob flags (default: the shipped adapter {DEFAULT_ADAPTER.name})")


def add_device_argument(parser, choices: list[str] | None = None) -> None:
    """`--device`: where a command runs its model, the same flag in every command that runs one. It stays a name
    while parsing ("auto" included): `resolve_device` turns "auto" into this machine's device where the command
    starts its work, because asking torch for CUDA costs seconds of import that `--help` and a refused flag should
    not pay."""
    examples = ", ".join(choices) if choices else "cpu, cuda, cuda:1"
    parser.add_argument("--device", default=AUTO_DEVICE, choices=[AUTO_DEVICE, *choices] if choices else None,
                        help=f"torch device: {examples} (default: {AUTO_DEVICE}, cuda if available, else cpu)")


AUTO_DEVICE = "auto"


def resolve_device(name: str | None) -> str:
    """--device's value as a torch device name: "auto" (or None) is cuda if available, else cpu."""
    return default_device() if name in (None, AUTO_DEVICE) else name


def default_device() -> str:
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


# --dtype: the torch dtypes a base loads in, by name (torch is imported where it loads, not by the parsers)
DTYPES = ("float32", "bfloat16", "float16")


def add_dtype_argument(parser, choices: tuple[str, ...] = DTYPES) -> None:
    """`--dtype`: the dtype the base (and with it the adapter and any context cache) loads in, the same flag in every
    command that runs a model; a command offers the dtypes it supports."""
    parser.add_argument("--dtype", choices=list(choices), default="float32",
                        help="the dtype the base loads in (default: float32; bfloat16 halves the memory of weights "
                             "and of every cached key and value)")


def add_threads_argument(parser) -> None:
    """`--threads`: torch's threads for the command, the same flag in every command that runs a model."""
    parser.add_argument("--threads", type=positive_int, default=None, metavar="N",
                        help="torch threads (default: torch's choice, which OMP_NUM_THREADS sets); pin it for timings "
                             "and when jobs share the machine")


def at_least(minimum: int, kind):
    """argparse `type=`: `kind`'s value, refused below `minimum`."""

    def parse(text: str):
        value = kind(text)
        if value < minimum:
            raise argparse.ArgumentTypeError(f"must be at least {minimum}, got {value}")
        return value

    parse.__name__ = getattr(kind, "__name__", "value")  # argparse names the type in its error messages
    return parse


def _whole(text: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a whole number: {text!r}") from None


def whole_number(minimum: int):
    """argparse `type=` for a count flag: an integer >= `minimum` (0 where none is meaningful, e.g. bench's
    `--decode-steps 0` times prefill only)."""
    return at_least(minimum, _whole)


positive_int = whole_number(1)  # every count flag: --threads, --trials, --max-windows, --repeats, ...


def positive_seconds(text: str) -> float:
    """argparse `type=` for a time budget (`--max-seconds`, `--cell-seconds`): a number of seconds > 0 (a budget of
    0 would write every window or cell as not run)."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number of seconds: {text!r}") from None
    if not value > 0:  # also refuses nan
        raise argparse.ArgumentTypeError(f"must be more than 0 seconds, got {text}")
    return value
