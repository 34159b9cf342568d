"""`sharedllm bench` on the command line: the flags (the SharedLLM knobs come from `config.KNOBS` through
`sharedllm.flags`, as in train and eval), the settings they make, and the run."""

import argparse
import json
import os
import warnings
from pathlib import Path

from sharedllm.cli import InputError, adapter_argument
from sharedllm.flags import (add_adapter_argument, add_base_argument, add_device_argument, add_infllm_argument,
                             add_knob_arguments, add_threads_argument, check_infllm_chosen, knobs_from_args,
                             parse_length, positive_int, positive_seconds, whole_number)

from .settings import BENCH_METHODS, CPU_LENGTHS, CUDA_LENGTHS, BenchSettings, resolve_knobs

RESULT_FILE = "bench-{device}.json"  # inside --output


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
    parser.add_argument("--max-length", nargs="+", default=[], metavar="METHOD=LENGTH",
                        help="per-method length cap, e.g. full=32K streaming=32K (recorded as skipped)")
    add_device_argument(parser, choices=["cpu", "cuda"])
    parser.add_argument("--dtype", choices=["float32", "bfloat16"], default="float32")
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
    parser.add_argument("--figures", default="docs/figures", help="folder of bench_time.png and bench_memory.png")
    parser.add_argument("--target-length", type=parse_length, default=32768, help="length the targets are judged at")
    parser.add_argument("--target-long-length", type=parse_length, default=131072,
                        help="long length of the scaling targets")
    parser.add_argument("--replot", default=None, metavar="JSON",
                        help="only redo the table, targets and plots from a result JSON")
    parser.add_argument("--seed", type=int, default=0)


def _pairs(items: list[str], flag: str) -> list[tuple[str, str]]:
    pairs = [item.partition("=")[::2] for item in items]
    if bad := [item for item, (key, value) in zip(items, pairs) if not key or not value]:
        raise InputError(f"{flag} wants KEY=VALUE, got {', '.join(map(repr, bad))}")
    return pairs


def settings_from_args(args) -> BenchSettings:
    check_infllm_chosen(args)
    adapter = adapter_argument(args.adapter)  # 'none': untrained, its knobs from the flags and defaults
    lengths = args.lengths or [parse_length(n) for n in (CUDA_LENGTHS if args.device == "cuda" else CPU_LENGTHS)]
    caps = {}
    for method, length in _pairs(args.max_length, "--max-length"):
        if method not in BENCH_METHODS:
            raise InputError(f"--max-length: unknown method {method!r}; valid: {', '.join(BENCH_METHODS)}")
        caps[method] = parse_length(length)
    try:
        knobs = resolve_knobs(adapter, knobs_from_args(args))
    except ValueError as error:
        raise InputError(str(error)) from error
    return BenchSettings(
        methods=tuple(args.methods), infllm=args.infllm, lengths=tuple(lengths), repeats=args.repeats,
        decode_steps=args.decode_steps, max_seconds=args.max_seconds, cell_seconds=args.cell_seconds,
        max_length=caps, device=args.device, dtype=args.dtype, threads=args.threads, isolate=args.isolate,
        adapter=adapter, knobs=knobs, streaming_block=args.streaming_block, n_sink=args.n_sink, seed=args.seed,
        target_length=args.target_length, target_long_length=args.target_long_length,
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
    from .grid import run_benchmark
    from .report import check_targets, compute_ratios, format_table, plot_results

    warnings.simplefilter("default", FutureWarning)  # deprecations are for the person typing the command
    suffix = "" if args.device == "cpu" else f"-{args.device}"
    if args.replot:
        results = json.loads(Path(args.replot).read_text())
        compute_ratios(results["cells"])  # re-derived, so that the targets can be judged at other lengths too
        results["targets"] = check_targets(results["cells"], args.target_length, args.target_long_length)
    else:
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        base = base_from_args(args)
        settings = settings_from_args(args)
        output = output_file(args.output, args.device)
        results = run_benchmark(base, settings, output=output)
        print(f"wrote {output}")
    print(format_table(results))
    for path in plot_results(results, args.figures, suffix):
        print(f"wrote {path}")
    return 0
