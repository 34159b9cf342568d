"""What a benchmark run says: ratios between methods per length, the issue's targets, the table and the plots.
Works on the result JSON alone (`sharedllm bench --replot`), including files written before the provenance block."""

import re
from pathlib import Path

from sharedllm.flags import format_length


def finish(results: dict, target_length: int = 32768, target_long_length: int = 131072) -> dict:
    """(Re)compute the derived numbers: ratios per cell and the issue's targets."""
    compute_ratios(results["cells"])
    results["targets"] = check_targets(results["cells"], target_length, target_long_length)
    return results


# ----------------------------------------------------------------------------------------------------------------
# ratios and targets


def _ok(cells: list[dict], method: str, length: int) -> dict | None:
    return next((c for c in cells if c["method"] == method and c["length"] == length and c["status"] == "ok"), None)


def _quotient(a, b):
    return a / b if a is not None and b else None


def measured_any(results: dict) -> bool:
    """Whether any cell ran: a grid of only failed or skipped cells has nothing to plot or to replace a result with."""
    return any(cell["status"] == "ok" for cell in results["cells"])


def compute_ratios(cells: list[dict]) -> list[dict]:
    """Per ok cell, against `full` and `streaming` at the same length: speed-ups (reference time / this time, > 1 =
    faster) and memory fractions (this peak / reference peak, < 1 = less memory). None where a reference is missing."""
    for cell in cells:
        if cell["status"] != "ok":
            continue
        ratios = {}
        for ref_name in ("full", "streaming"):
            ref = _ok(cells, ref_name, cell["length"]) or {}
            ratios[f"prefill_speedup_vs_{ref_name}"] = _quotient(ref.get("prefill_s"), cell["prefill_s"])
            ratios[f"decode_speedup_vs_{ref_name}"] = _quotient(ref.get("decode_s"), cell["decode_s"])
            memory = _quotient(cell["peak_memory_bytes"], ref.get("peak_memory_bytes"))
            ratios[f"memory_fraction_of_{ref_name}"] = memory
        cell["ratios"] = ratios
    return cells


def _target(name, text, threshold, at_most, needs, numerator, denominator, key, normalise=True) -> dict:
    """A target row `numerator[key] / denominator[key]` against `threshold`: met / missed (and by what factor) /
    not measured. Time ratios also get a machine-speed-normalised value: each time multiplied by the matmul peak
    its own process measured, which cancels a machine that was busier during one cell than during the other."""
    value = _quotient(numerator.get(key), denominator.get(key))
    row = dict(name=name, target=text, value=value, threshold=threshold, met=None, miss_factor=None,
               value_peak_normalised=None, note=None)
    if value is None:
        return {**row, "note": f"not measured: needs {needs}"}
    peaks = numerator.get("matmul_peak_flops_per_s"), denominator.get("matmul_peak_flops_per_s")
    if normalise and all(peaks):
        row["value_peak_normalised"] = value * peaks[0] / peaks[1]
    met = value <= threshold if at_most else value >= threshold
    miss = None if met else (value / threshold if at_most else threshold / value)
    return {**row, "met": met, "miss_factor": miss}


def check_targets(cells: list[dict], at: int = 32768, long: int = 131072) -> list[dict]:
    """The issue's targets for SharedLLM, evaluated on whatever cells were measured."""
    cell = lambda method, length=at: _ok(cells, method, length) or {}  # noqa: E731
    shared, a, b = cell("sharedllm"), format_length(at), format_length(long)
    both = lambda method: f"{method} and sharedllm at {a}"  # noqa: E731
    # both cells can be there without a decode time: a run with --decode-steps 0 times the prefill only
    decode_needs = "--decode-steps > 0" if shared and cell("window") else both("window")
    utilisation = {"ratio": shared.get("flops_utilisation")} if shared else {}
    return [
        _target("prefill_scaling", f"sharedllm prefill {b} / {a} <= 4.5", 4.5, True, f"sharedllm at {a} and {b}",
                cell("sharedllm", long), shared, "prefill_s"),
        _target("memory_scaling", f"sharedllm peak memory {b} / {a} <= 1.5", 1.5, True, f"sharedllm at {a} and {b}",
                cell("sharedllm", long), shared, "peak_memory_bytes", normalise=False),
        _target("prefill_vs_full", f"full / sharedllm prefill at {a} >= 10", 10, False, both("full"),
                cell("full"), shared, "prefill_s"),
        _target("prefill_vs_streaming", f"streaming / sharedllm prefill at {a} >= 4", 4, False, both("streaming"),
                cell("streaming"), shared, "prefill_s"),
        _target("prefill_vs_cepe", f"cepe / sharedllm prefill at {a} >= 4", 4, False, both("cepe"),
                cell("cepe"), shared, "prefill_s"),
        _target("memory_vs_full", f"sharedllm / full peak memory at {a} <= 1/3", 1 / 3, True, both("full"),
                shared, cell("full"), "peak_memory_bytes", normalise=False),
        _target("decode_vs_window", f"sharedllm decode step after {a} / base decode at its window <= 1.5", 1.5, True,
                decode_needs, shared, cell("window"), "decode_s"),
        _target("flops_utilisation", f"sharedllm prefill FLOP/s at {a} / matmul peak >= 0.5", 0.5, False,
                f"sharedllm at {a}", utilisation, {"ratio": 1.0}, "ratio", normalise=False),
    ]


# ----------------------------------------------------------------------------------------------------------------
# table and plots


def hardware(meta: dict) -> dict:
    """The run's hardware block; files written before `sharedllm.provenance` kept it in flat keys."""
    if "hardware" in meta:
        return meta["hardware"]
    return dict(device=meta["device"], cpu=meta.get("device_name"), gpu=None, threads=meta["threads"],
                dtype=meta["dtype"], attention=meta.get("attention_backend"), torch=meta.get("torch"),
                transformers=meta.get("transformers"))


def _fmt(value, spec: str, scale: float = 1.0, suffix: str = "") -> str:
    if value is None:  # keep the column aligned
        return "-".rjust(int(re.match(r"\d*", spec).group() or 1) + len(suffix))
    return f"{value * scale:{spec}}{suffix}"


def format_table(results: dict) -> str:
    meta, hw = results["meta"], hardware(results["meta"])
    lines = [
        f"device {hw['device']} ({hw['gpu'] or hw['cpu']}), {hw['dtype']}, {hw['threads']} threads, "
        f"attention {hw['attention']}, torch {hw['torch']}, transformers {hw['transformers']}",
        f"matmul peak {meta['matmul_peak_flops_per_s'] / 1e9:.1f} GFLOP/s (main process); speed-up = reference time / "
        "method time; memory = peak above the loaded model",
        "",
        f"{'method':<10} {'length':>7} {'prefill s':>10} {'decode ms':>10} {'peak MB':>9} {'xfull':>7} {'xstream':>7} "
        f"{'mem/full':>8} {'GFLOP/s':>8} {'%peak':>6}  status",
    ]
    for cell in results["cells"]:
        if cell["status"] != "ok":
            lines.append(f"{cell['method']:<10} {format_length(cell['length']):>7} {cell['status']}: {cell['reason']}")
            continue
        r = cell.get("ratios", {})
        lines.append(
            f"{cell['method']:<10} {format_length(cell['length']):>7} {_fmt(cell['prefill_s'], '10.3f')} "
            f"{_fmt(cell['decode_s'], '10.1f', 1e3)} {_fmt(cell['peak_memory_bytes'], '9.0f', 2**-20)} "
            f"{_fmt(r.get('prefill_speedup_vs_full'), '6.1f', suffix='x')} "
            f"{_fmt(r.get('prefill_speedup_vs_streaming'), '6.1f', suffix='x')} "
            f"{_fmt(r.get('memory_fraction_of_full'), '8.3f')} {_fmt(cell['achieved_flops_per_s'], '8.1f', 1e-9)} "
            f"{_fmt(cell['flops_utilisation'], '5.0f', 100, '%')}  ok ({cell['repeats']} repeats)"
        )
    lines += ["", "targets:"] + [_format_target(t) for t in results["targets"]]
    return "\n".join(lines)


def _format_target(t: dict) -> str:
    if t["met"] is None:
        return f"  [ -- ] {t['target']}: {t['note']}"
    verdict = "MET" if t["met"] else f"MISSED by {t['miss_factor']:.2f}x"
    normalised = t["value_peak_normalised"]
    normalised = "" if normalised is None else f"; machine-speed normalised {normalised:.3g}"
    return f"  [{'ok' if t['met'] else 'MISS':^4}] {t['target']}: {t['value']:.3g} ({verdict}{normalised})"


def figure_suffix(results: dict) -> str:
    """The figures' name suffix, from the run's own hardware block: '' for a CPU run, '-cuda' for a CUDA one (a
    replot of results/bench-cuda.json must not write over the CPU figures)."""
    device = hardware(results["meta"])["device"].split(":")[0]
    return "" if device == "cpu" else f"-{device}"


def plot_results(results: dict, figures_dir: str | Path, suffix: str | None = None) -> list[Path]:
    """Log-log plots: prefill time and decode time per token vs length; peak memory vs length. The files are
    bench_time<suffix>.png and bench_memory<suffix>.png, the suffix by default the run's device (`figure_suffix`)."""
    suffix = figure_suffix(results) if suffix is None else suffix
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figures_dir = Path(figures_dir)
    figures_dir.mkdir(parents=True, exist_ok=True)
    meta, hw = results["meta"], hardware(results["meta"])
    title = f"{Path(str(meta['base_model'])).name}, {hw['device']} {hw['dtype']}, threads={hw['threads']}"
    fig, (ax_prefill, ax_decode) = plt.subplots(1, 2, figsize=(11, 4.2))
    _plot_series(ax_prefill, results, "prefill_s", 1.0, "prefill time (s)", guides=True)
    _plot_series(ax_decode, results, "decode_s", 1e3, "time per generated token (ms)")
    fig.suptitle(title)
    fig.tight_layout()
    time_path = figures_dir / f"bench_time{suffix}.png"
    fig.savefig(time_path, dpi=120)
    plt.close(fig)
    fig, ax = plt.subplots(figsize=(5.8, 4.2))
    _plot_series(ax, results, "peak_memory_bytes", 2**-20, "peak memory above the model (MiB)")
    ax.set_title(title, fontsize=9)
    fig.tight_layout()
    memory_path = figures_dir / f"bench_memory{suffix}.png"
    fig.savefig(memory_path, dpi=120)
    plt.close(fig)
    return [time_path, memory_path]


def _plot_series(ax, results, key, scale, label, guides: bool = False):
    from matplotlib.ticker import NullLocator

    methods = list(dict.fromkeys(c["method"] for c in results["cells"]))
    for method in methods:
        points = [(c["length"], c[key] * scale) for c in results["cells"]
                  if c["method"] == method and c["status"] == "ok" and c.get(key)]
        if points:
            xs, ys = zip(*points)
            ax.plot(xs, ys, marker="o", label=method)
    if guides:
        _slope_guides(ax, results, key, scale)
    ax.set_xscale("log", base=2)
    lengths = sorted({c["length"] for c in results["cells"]})
    ax.set_xticks(lengths, [format_length(n) for n in lengths])
    ax.xaxis.set_minor_locator(NullLocator())  # only the measured lengths as x ticks
    ax.set_yscale("log")
    ax.set_xlabel("input length (tokens)")
    ax.set_ylabel(label)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)


def _slope_guides(ax, results, key, scale):
    """Faint lines of slope 1 (linear) and 2 (quadratic) through the first full cell: compare a method's slope."""
    first = next((c for c in results["cells"] if c["method"] == "full" and c["status"] == "ok"), None)
    lengths = sorted({c["length"] for c in results["cells"]})
    if first is None or len(lengths) < 2:
        return
    x0, y0 = first["length"], first[key] * scale
    xs = [lengths[0], lengths[-1]]
    ax.plot(xs, [y0 * x / x0 for x in xs], color="grey", lw=0.8, ls=":", label="∝ L")
    ax.plot(xs, [y0 * (x / x0) ** 2 for x in xs], color="grey", lw=0.8, ls="--", label="∝ L²")
