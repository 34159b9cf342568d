"""The grid of (method, length) cells: each cell in a fresh subprocess (clean peak memory) or in this process,
longer lengths skipped once a method got too slow; the cells written to a side file after every cell, which
replaces the result JSON only when the grid is done."""

import contextlib
import json
import os
import subprocess
import sys
import tempfile
from dataclasses import asdict
from pathlib import Path

import torch

from sharedllm import provenance
from sharedllm.cli import InputError

from .measure import measure_cell, measure_matmul_peak, skipped_cell
from .report import finish, measured_any
from .settings import BenchSettings

WORKER_FLAG = "--bench-worker"


def load_base(path, settings: BenchSettings):
    from sharedllm.loading import load_causal_lm

    model, _ = load_causal_lm(path, dtype=settings.torch_dtype, tokenizer_required=False)
    return model.to(settings.device)


def _set_threads(settings: BenchSettings) -> None:
    if settings.threads:
        torch.set_num_threads(settings.threads)


@contextlib.contextmanager
def _threads(settings: BenchSettings):
    """settings.threads for the duration of a benchmark; the caller's setting afterwards."""
    before = torch.get_num_threads()
    _set_threads(settings)
    try:
        yield
    finally:
        torch.set_num_threads(before)


# ----------------------------------------------------------------------------------------------------------------
# isolation: a cell in a fresh process


def worker_main(spec_path: str, out_path: str) -> None:
    """Entry of a cell subprocess (`python -m sharedllm.benchmark --bench-worker SPEC OUT`): load the base, measure
    one cell, write its record as JSON."""
    spec = json.loads(Path(spec_path).read_text())
    settings = BenchSettings(**spec["settings"])
    _set_threads(settings)
    record = measure_cell(load_base(spec["base"], settings), spec["method"], spec["length"], settings)
    Path(out_path).write_text(json.dumps(record))


def run_cell_isolated(base_path: str, method: str, length: int, settings: BenchSettings, workdir: Path) -> dict:
    """Run one cell in a fresh Python process (clean peak RSS, nothing cached from other cells)."""
    spec_path, out_path = workdir / f"{method}-{length}.spec.json", workdir / f"{method}-{length}.out.json"
    spec_path.write_text(json.dumps(dict(base=str(base_path), method=method, length=length, settings=asdict(settings))))
    command = [sys.executable, "-m", "sharedllm.benchmark", WORKER_FLAG, str(spec_path), str(out_path)]
    # the worker imports this package from where this process found it, installed or not
    package_root = str(provenance.REPO)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [package_root, os.environ.get("PYTHONPATH")]))}
    done = subprocess.run(command, capture_output=True, text=True, env=env)
    if done.returncode != 0 or not out_path.exists():
        tail = (done.stderr or done.stdout).strip().splitlines()[-3:]
        killed = " (killed: out of memory?)" if done.returncode in (-9, 137) else ""
        return skipped_cell(method, length, f"worker exit {done.returncode}{killed}: {' | '.join(tail)}", "failed")
    return json.loads(out_path.read_text())


def _run_cell_in_process(base, method, length, settings) -> dict:
    try:
        return measure_cell(base, method, length, settings)
    except (RuntimeError, MemoryError, ValueError) as error:  # e.g. out of memory: record it, go on with the grid
        return skipped_cell(method, length, f"{type(error).__name__}: {str(error).splitlines()[0][:300]}", "failed")


# ----------------------------------------------------------------------------------------------------------------
# the grid


def _skip_reason(method: str, length: int, settings: BenchSettings, previous: dict | None) -> str | None:
    """Why a cell is not run: over the method's length cap, or its previous length failed or took too long."""
    cap = settings.max_length.get(method)
    if cap is not None and length > cap:
        return f"length {length} > --max-length {method}={cap}"
    if previous is None:
        return None
    if previous["status"] != "ok":
        return f"not run: {previous['status']} at {previous['length']}"
    if previous["prefill_s"] > settings.max_seconds:
        took = f"prefill at {previous['length']} took {previous['prefill_s']:.1f} s"
        return f"{took} > --max-seconds {settings.max_seconds:g}"
    return None


def _last_cell(cells: list[dict], method: str) -> dict | None:
    return next((c for c in reversed(cells) if c["method"] == method), None)


def environment(base_config, settings: BenchSettings, base_label: str) -> dict:
    """The run's header: provenance (hardware, versions, command, commit), the base model and every setting."""
    return dict(
        **provenance.record(settings.device, settings.dtype,
                            attention=_attention_backend(base_config, settings.device)),
        base_model=base_label,
        model_layers=base_config.num_hidden_layers,
        model_hidden=base_config.hidden_size,
        settings=asdict(settings),
    )


def _attention_backend(base_config, device: str) -> str:
    name = getattr(base_config, "_attn_implementation", None) or "sdpa"
    if name == "sdpa" and device.startswith("cuda"):
        backends = torch.backends.cuda
        flags = dict(flash=backends.flash_sdp_enabled(), mem_efficient=backends.mem_efficient_sdp_enabled())
        return f"sdpa ({', '.join(k for k, v in flags.items() if v) or 'math'})"
    return f"{name} (CPU)" if not device.startswith("cuda") else name


def partial_path(output: str | Path) -> Path:
    """Where a running grid keeps its cells: beside the result JSON (bench-cpu.json -> bench-cpu.partial.json)."""
    output = Path(output)
    return output.with_name(f"{output.stem}.partial{output.suffix}")


def refuse_to_replace(output: str | Path, overwrite: bool) -> None:
    """A run replaces a result only when asked: the committed one took 25 minutes, an interrupted one's cells too.
    With `overwrite`, an older interrupted run's cells are discarded now; the result itself is replaced only once the
    grid is done."""
    output = Path(output)
    partial = partial_path(output)
    if overwrite:
        partial.unlink(missing_ok=True)
    elif output.exists():
        raise InputError(f"{output} exists: pass --overwrite to replace it (and its figures) once this grid is done, "
                         "or another --output")
    elif partial.exists():
        raise InputError(f"{partial} holds the cells of an interrupted run: move it away, or pass --overwrite to "
                         "discard it")


def run_benchmark(base, settings: BenchSettings, output: str | Path | None = None, progress: bool = True,
                  overwrite: bool = False) -> dict:
    """Measure every (method, length) of the grid. `base` is a model path (needed when settings.isolate) or a loaded
    causal LM (in-process only). With `output`, the cells go to `partial_path(output)` after every cell, and that
    file replaces `output` once the grid is done and at least one cell ran: an interrupted or wholly failed grid
    leaves the previous `output` as it was, its own cells in the partial file. An `output` or partial file that
    exists is refused (`InputError`, a ValueError) before anything runs, unless `overwrite` (`--overwrite`)."""
    partial = None
    if output:
        refuse_to_replace(output, overwrite)
        output, partial = Path(output), partial_path(output)
    with _threads(settings):
        results = _run_grid(base, settings, partial, progress)
    if partial and measured_any(results):
        partial.replace(output)  # a rename: a reader sees the previous file or the new one, whole
    return results


def _run_grid(base, settings: BenchSettings, partial: Path | None, progress: bool) -> dict:
    from tqdm.auto import tqdm

    if settings.isolate and not isinstance(base, (str, os.PathLike)):
        raise ValueError("isolate=True runs each cell in a subprocess, which loads the base from a path; pass a path")
    loaded = base if not isinstance(base, (str, os.PathLike)) else None
    if loaded is None and not settings.isolate:
        loaded = load_base(base, settings)
    config = loaded.config if loaded is not None else _load_config(base)
    label = str(base) if loaded is None else (getattr(loaded, "name_or_path", "") or type(loaded).__name__)
    meta = environment(config, settings, label)
    meta["matmul_peak_flops_per_s"] = measure_matmul_peak(settings.device, settings.torch_dtype, settings.matmul_size)
    results = dict(meta=meta, cells=[], targets=[])
    grid = [(length, method) for length in sorted(settings.lengths) for method in settings.methods]
    with tempfile.TemporaryDirectory(prefix="sharedllm-bench-") as workdir:
        for length, method in tqdm(grid, desc="bench", disable=not progress):
            previous = _last_cell(results["cells"], method)
            reason = _skip_reason(method, length, settings, previous)
            if reason:
                cell = skipped_cell(method, length, reason)
            elif settings.isolate:
                cell = run_cell_isolated(base, method, length, settings, Path(workdir))
            else:
                cell = _run_cell_in_process(loaded, method, length, settings)
            results["cells"].append(cell)
            finish(results, settings.target_length, settings.target_long_length)
            if partial:
                provenance.write_json(partial, results)
    return results


def _load_config(path):
    from transformers import AutoConfig

    from sharedllm.loading import hub_model_not_found, resolve_base_path

    path = resolve_base_path(path)
    try:
        return AutoConfig.from_pretrained(path)
    except OSError as error:
        raise hub_model_not_found(path, error) from None
