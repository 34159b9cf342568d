"""`sharedllm bench` on the command line: the flags (the SharedLLM knobs come from `config.KNOBS` through
`sharedllm.flags`, as in train and eval), the settings they make, and the run."""

import argparse
import sys
import warnings
from pathlib import Path

from sharedllm.cli import InputError, adapter_argument
from sharedllm.flags import (add_adapter_argument, add_base_argument, add_device_argument, add_dtype_argument,
                             add_infllm_argument,
                             add_knob_arguments, add_threads_argument, check_infllm_options, format_length,
                             knobs_from_args, parse_length, positive_int, positive_seconds, refuse_repeats,
                             resolve_device, whole_number)

from .settings import BENCH_METHODS, CPU_LENGTHS, CUDA_LENGTHS, BenchSettings, resolve_knobs

RESULT_FILE = "bench-{device}.json"  # inside --output
TARGET_FLAGS = ("target_length", "target_long_length")  # unset: BenchSettings' defaults, or a replotted run's own
REPLOT_FLAGS = {"replot", "figures", *TARGET_FLAGS}  # every other flag makes a grid, which --replot does not run


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_base_argument(parser)
    parser.add_argument("--model", dest="model_deprecated", default=None, help=argparse.SUPPRESS)  # old --base
    add_adapter_argument(parser)
    parser.add_argument("--methods", nargs="+", default=list(BENCH_METHODS), choices=BENCH_METHODS)
    parser.add_argument("--lengths", nargs="+", type=parse_length, default=None,
                        help=f"input lengths, e.g. 4K 8K (default: {' '.join(CPU_LENGTHS)} on cpu, "
                        f"{' '.join(CUDA_LENGTHS)} on cuda)")
    parser.add_argument("--repeats", type=positive_int, default=3, help="prefill runs per cell; the median is reported")
    parser.add_argument("--decode-steps", type=whole_number(0), default=16,
                        help="greedy steps timed after each prefill (0: prefill only)")
    parser.add_argument("--max-seconds", type=positive_seconds, default=300.0,
                        help="skip a method's longer lengths once one of its prefills took longer than this")
    parser.add_argument("--cell-seconds", type=positive_seconds, default=30.0,
                        help="stop repeating a cell once it has used this long (it always runs once)")
    parser.add_argument("--max-length", nargs="+", type=method_length, default=[], metavar="METHOD=LENGTH",
                        help="per-method length cap, e.g. full=32K streaming=32K (recorded as skipped)")
    add_device_argument(parser, choices=["cpu", "cuda"])
    add_dtype_argument(parser, choices=("float32", "bfloat16"))
    add_threads_argument(parser)
    add_knob_arguments(parser, "SharedLLM knobs, shared by every method that reads them (default: the adapter's "
                       "saved value, else the config default)")
    parser.add_argument("--streaming-block", type=positive_int, default=256, help="StreamingLLM prefill block size (tokens)")
    parser.add_argument("--n-sink", type=whole_number(0), default=4, help="StreamingLLM attention sinks")
    add_infllm_argument(parser)
    parser.add_argument("--no-isolate", dest="isolate", action="store_false",
                        help="run every cell in this process (faster, but peak memory is less reliable)")
    parser.add_argument("--output", default="results",
                        help=f"folder of the result JSON, {RESULT_FILE.format(device='<device>')} (default: results)")
    parser.add_argument("--overwrite", action="store_true",
                        help="replace an existing result JSON (and its figures) once the grid is done")
    parser.add_argument("--figures", default="docs/figures", help="folder of bench_time.png and bench_memory.png")
    parser.add_argument("--target-length", type=parse_length, default=None,
                        help="length the targets are judged at (default: 32K; with --replot, the run's own)")
    parser.add_argument("--target-long-length", type=parse_length, default=None,
                        help="long length of the scaling targets (default: 128K; with --replot, the run's own)")
    parser.add_argument("--replot", default=None, metavar="JSON",
                        help="only redo the table, targets and plots from a result JSON (takes no grid flag)")
    parser.add_argument("--seed", type=int, default=0)


def method_length(text: str) -> tuple[str, int]:
    """argparse `type=` of --max-length: "full=32K" -> ("full", 32768)."""
    method, sep, length = text.partition("=")
    if not sep or method not in BENCH_METHODS:
        raise argparse.ArgumentTypeError(f"wants METHOD=LENGTH with METHOD one of {', '.join(BENCH_METHODS)}, "
                                         f"got {text!r}")
    return method, parse_length(length)  # its ArgumentTypeError names a bad length


def _given(args, names) -> dict:
    return {name: getattr(args, name) for name in names if getattr(args, name) is not None}


def settings_from_args(args) -> BenchSettings:
    check_infllm_options(args)
    adapter = adapter_argument(args.adapter)  # 'none': untrained, its knobs from the flags and defaults
    try:  # before the device, which imports torch (seconds): a bad combination answers at once
        knobs = resolve_knobs(adapter, knobs_from_args(args))
    except ValueError as error:
        raise InputError(str(error)) from error
    device = resolve_device(args.device)
    lengths = args.lengths or [parse_length(n) for n in (CUDA_LENGTHS if device == "cuda" else CPU_LENGTHS)]
    refuse_repeats("--methods", args.methods)
    refuse_repeats("--lengths", lengths, format_length)
    refuse_repeats("--max-length", [method for method, _ in args.max_length])
    caps = dict(args.max_length)
    if unmeasured := [method for method in caps if method not in args.methods]:  # a cap that caps nothing
        raise InputError(f"--max-length caps {', '.join(unmeasured)}, not in --methods ({' '.join(args.methods)})")
    return BenchSettings(
        methods=tuple(args.methods), infllm=args.infllm, lengths=tuple(lengths), repeats=args.repeats,
        decode_steps=args.decode_steps, max_seconds=args.max_seconds, cell_seconds=args.cell_seconds,
        max_length=caps, device=device, dtype=args.dtype, threads=args.threads, isolate=args.isolate,
        adapter=adapter, knobs=knobs, streaming_block=args.streaming_block, n_sink=args.n_sink, seed=args.seed,
        **_given(args, TARGET_FLAGS),
    )


def base_from_args(args) -> str:
    """--base, or --model (its old name, with a warning), or the project's default model."""
    base = args.base
    if args.model_deprecated is not None:
        warnings.warn("--model is deprecated: use --base", FutureWarning, stacklevel=2)
        if base is not None and base != args.model_deprecated:
            raise InputError("--model (deprecated) and --base name different models: give only --base")
        base = args.model_deprecated
    if base is None:
        from sharedllm.assets import default_model_path

        base = str(default_model_path())
    return base


def output_file(output: str, device: str) -> Path:
    """The result JSON: --output is a folder, as in train and eval; a path ending in .json, the spelling before,
    still names the file itself (with a warning)."""
    if output.endswith(".json"):
        warnings.warn(f"--output {output}: --output is now a folder (the file is {RESULT_FILE.format(device=device)} "
                      "inside it); a .json path still names the file, for now", FutureWarning, stacklevel=2)
        return Path(output)
    return Path(output) / RESULT_FILE.format(device=device)


def run(args) -> int:
    warnings.simplefilter("default", FutureWarning)  # deprecations are for the person typing the command
    return _replot(args) if args.replot else _measure(args)


def _measure(args) -> int:
    """Run the grid; the result JSON and the figures are replaced only by a finished grid with a cell that ran."""
    settings = settings_from_args(args)  # refuses bad knobs before the grid's module imports torch (seconds)
    from .grid import partial_path, refuse_to_replace, run_benchmark
    from .report import format_table, measured_any

    output = output_file(args.output, settings.device)
    partial = partial_path(output)
    # run_benchmark checks this too; here it comes before the base, which may be built first (a minute)
    refuse_to_replace(output, args.overwrite)
    base = base_from_args(args)
    try:
        results = run_benchmark(base, settings, output=output, overwrite=args.overwrite)
    except KeyboardInterrupt:
        untouched = f"{output} left as it was" if output.exists() else f"{output} not written"
        kept = f"; the cells measured so far are in {partial}" if partial.exists() else ""
        print(f"the grid did not finish: {untouched}{kept}", file=sys.stderr)
        raise
    print(format_table(results))
    if not measured_any(results):
        print(f"no cell ran (each failed or was skipped): {output} and the figures left as they were; the cells are "
              f"in {partial}", file=sys.stderr)
        return 1
    print(f"wrote {output}")
    _plot(results, args.figures)
    return 0


def _replot(args) -> int:
    """The table, targets and plots of a saved run, the targets judged at its own lengths unless given."""
    from .report import finish, format_table, measured_any

    _refuse_grid_flags(args)
    results = _read_result(args.replot)
    stored = results["meta"].get("settings", {})
    lengths = {name: stored.get(name, getattr(BenchSettings, name)) for name in TARGET_FLAGS}
    finish(results, **{**lengths, **_given(args, TARGET_FLAGS)})  # re-derived, so that other lengths can be judged
    print(format_table(results))
    if not measured_any(results):
        print(f"no cell of {args.replot} ran (each failed or was skipped): nothing to plot, the figures left as "
              "they were", file=sys.stderr)
        return 1
    _plot(results, args.figures)
    return 0


def _refuse_grid_flags(args) -> None:
    """--replot reads a finished run: a flag that makes a grid (--lengths, --device, ...) would be ignored."""
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    defaults = vars(parser.parse_args([]))
    spelled = {}  # destination -> its flag, the first of its spellings (argparse has no public map)
    for action in parser._actions:
        spelled.setdefault(action.dest, action.option_strings[0] if action.option_strings else action.dest)
    given = [spelled[name] for name, default in defaults.items()
             if name not in REPLOT_FLAGS and getattr(args, name, default) != default]
    if given:
        raise InputError(f"--replot redoes the table, targets and plots of {args.replot} as it was measured: "
                         f"{', '.join(given)} would be ignored (only --figures, --target-length and "
                         "--target-long-length go with it)")


def _read_result(path: str) -> dict:
    from sharedllm.provenance import read_json

    if not Path(path).is_file():
        raise InputError(f"--replot {path}: no such file")
    results = read_json(path)  # one line for a file that is not JSON
    if not (isinstance(results, dict) and {"meta", "cells"} <= results.keys()):
        raise InputError(f"--replot {path} is not a `sharedllm bench` result (it has no meta and cells)")
    return results


def _plot(results: dict, figures: str) -> None:
    from .report import plot_results

    for path in plot_results(results, figures):
        print(f"wrote {path}")
