"""`sharedllm bench`: prefill time, per-token decode time and peak memory against input length.

One base model, every method of the efficiency comparison, one run (docs/benchmark.md says how to read it):

    sharedllm  SharedLLM (a trained adapter, or untrained: the cost is the same)
    full       the base model with full attention over the whole prompt
    streaming  StreamingLLM (sinks + recent window), the prompt fed in blocks
    infllm     InfLLM (sinks + local window + top-k retrieved context blocks), the prompt fed in chunks
    cepe       the encoder-decoder variant: every layer cross-attends to an uncompressed full-depth encoding
    window     the base model on the last decoder_window tokens only (the floor)

Per (method, length) cell: prefill time (prompt in, first next-token logits out: the method's `prefill`), time
per greedy decode step after the prompt (its `step`), peak memory over prefill + decode (CPU: peak RSS above the
pre-run RSS, in a fresh subprocess per cell; CUDA: max_memory_allocated above the pre-run allocation), and the
achieved FLOP/s of the prefill against a matmul peak measured in the same process.

    settings.py   BenchSettings, the knob resolution (given > adapter > config.KNOBS defaults)
    measure.py    clocks, peak memory, matmul peak, one cell over the method's prefill / step
    flops.py      the analytic prefill FLOPs per method
    grid.py       the grid of cells, each in a fresh subprocess (or in-process), the JSON when it is done
    report.py     ratios, targets, table, plots (also from a saved JSON)
    cli.py        the `sharedllm bench` flags

Python API:

    settings = BenchSettings(lengths=(4096, 8192), repeats=1)
    # an existing result (or an interrupted run's partial file) is refused unless overwrite=True (bench --overwrite)
    results = run_benchmark(model_path_or_loaded_model, settings, output="runs/bench/bench-cpu.json")
    print(format_table(results)); plot_results(results, "runs/bench")
"""

from sharedllm.lazy import lazy_exports

__all__ = [
    "BENCH_METHODS", "BenchSettings", "add_arguments", "check_targets", "compute_ratios", "finish", "format_table",
    "measure_cell", "measure_matmul_peak", "plot_results", "prefill_flops", "resolve_knobs", "run", "run_benchmark",
    "settings_from_args",
]
# public name -> submodule defining it, imported on first access (PEP 562): `sharedllm bench` builds its parser from
# cli.py and settings.py, which import no torch; grid.py, measure.py and flops.py load with the first cell
_EXPORTS = {
    **dict.fromkeys(("add_arguments", "run", "settings_from_args"), ".cli"),
    "prefill_flops": ".flops",
    "run_benchmark": ".grid",
    **dict.fromkeys(("measure_cell", "measure_matmul_peak"), ".measure"),
    **dict.fromkeys(("check_targets", "compute_ratios", "finish", "format_table", "plot_results"), ".report"),
    **dict.fromkeys(("BENCH_METHODS", "BenchSettings", "resolve_knobs"), ".settings"),
}
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS, globals())
