"""Measuring one (method, length) cell: clocks, peak memory, the matmul peak, and the prefill / decode loop over
the method's own `prefill` / `step` (the calls `Method.generate` makes)."""

import contextlib
import ctypes
import gc
import re
import statistics
import time
from pathlib import Path

import torch

from .flops import prefill_flops
from .settings import BenchSettings


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def timed(device: str, fn, *args):
    """(fn(*args), seconds), with the device synchronised before and after."""
    _sync(device)
    start = time.perf_counter()
    out = fn(*args)
    _sync(device)
    return out, time.perf_counter() - start


def _proc_status_bytes(field_name: str) -> int:
    """VmRSS / VmHWM of this process from /proc/self/status, in bytes."""
    match = re.search(rf"^{field_name}:\s+(\d+) kB", Path("/proc/self/status").read_text(), re.MULTILINE)
    return int(match.group(1)) * 1024


class PeakMemory:
    """Peak memory above a baseline taken at `reset()`.

    CPU: the kernel's resident-set high-water mark (VmHWM), reset by writing 5 to /proc/self/clear_refs; freed
    heap is first returned to the OS (malloc_trim) so that the run cannot hide inside memory freed earlier.
    CUDA: torch.cuda.max_memory_allocated after reset_peak_memory_stats (tensor memory, not the caching pool).
    """

    def __init__(self, device: str):
        self.device = device
        self.baseline = 0
        self.method = "cuda max_memory_allocated" if device.startswith("cuda") else "VmHWM - VmRSS (clear_refs reset)"

    def reset(self) -> None:
        gc.collect()
        if self.device.startswith("cuda"):
            torch.cuda.synchronize()
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats()
            self.baseline = torch.cuda.memory_allocated()
            return
        with contextlib.suppress(OSError, AttributeError):
            ctypes.CDLL("libc.so.6").malloc_trim(0)
        try:
            Path("/proc/self/clear_refs").write_text("5")  # resets VmHWM to the current RSS
        except OSError:
            self.method = "VmHWM - VmRSS (not resettable: includes earlier peaks)"
        self.baseline = _proc_status_bytes("VmRSS")

    def peak(self) -> int:
        """Bytes of the peak above the baseline."""
        if self.device.startswith("cuda"):
            torch.cuda.synchronize()
            return torch.cuda.max_memory_allocated() - self.baseline
        return max(0, _proc_status_bytes("VmHWM") - self.baseline)


@torch.no_grad()
def measure_matmul_peak(device="cpu", dtype: torch.dtype = torch.float32, size: int = 2048, repeats: int = 5) -> float:
    """FLOP/s of a (size x size) @ (size x size) matmul, median over repeats: the machine's practical peak."""
    a = torch.randn(size, size, device=device, dtype=dtype)
    b = torch.randn(size, size, device=device, dtype=dtype)
    out = torch.empty(size, size, device=device, dtype=dtype)
    torch.mm(a, b, out=out)  # warm-up: thread pool, kernel selection
    times = [timed(device, torch.mm, a, b)[1] for _ in range(repeats)]
    return 2 * size**3 / statistics.median(times)


def bench_ids(length: int, vocab_size: int, seed: int, device: str) -> torch.Tensor:
    """Random token ids: cost does not depend on the text, and every method of a length gets the same ids."""
    generator = torch.Generator().manual_seed(seed + length)
    return torch.randint(0, vocab_size, (length,), generator=generator).to(device)


def _decode(method, logits, steps: int, device: str) -> list[float]:
    """Seconds of each of `steps` greedy steps after `logits`."""
    times = []
    for _ in range(steps):
        token = logits.argmax().view(1)
        logits, seconds = timed(device, method.step, token)
        times.append(seconds)
    return times


@torch.inference_mode()
def measure_cell(base, name: str, length: int, settings: BenchSettings) -> dict:
    """Prefill / decode timings and peak memory of one (method, length) on a loaded base model."""
    from sharedllm.methods import load_method

    device = settings.device
    method = load_method(name, base, shared=settings.shared, **settings.options(name))
    ids = bench_ids(length, base.config.vocab_size, settings.seed, device)
    # warm-up on a short prompt: first-call costs (kernel selection, thread pool, lazy init) stay out of the timings
    warm = min(length, settings.knobs["decoder_window"] + settings.knobs["chunk_size"])
    _decode(method, method.prefill(ids[:warm]), 2, device)
    memory = PeakMemory(device)
    prefill_times, step_times, peaks, started = [], [], {"prefill": [], "all": []}, time.perf_counter()
    for _ in range(settings.repeats):
        method.reset()  # drop the previous repeat's cache, then measure this repeat's peak from a clean baseline
        memory.reset()
        logits, seconds = timed(device, method.prefill, ids)
        prefill_times.append(seconds)
        peaks["prefill"].append(memory.peak())
        step_times += _decode(method, logits, settings.decode_steps, device)
        peaks["all"].append(memory.peak())
        if time.perf_counter() - started > settings.cell_seconds:
            break  # a slow cell gets fewer repeats rather than stalling the grid
    method.reset()
    matmul_peak = measure_matmul_peak(device, settings.torch_dtype, settings.matmul_size)
    described = method.describe()
    flops = prefill_flops(name, length, base.config, settings.knobs, described)
    return _cell_record(name, length, described, flops, prefill_times, step_times, peaks, memory, matmul_peak)


def _cell_record(name, length, described, flops, prefill_times, step_times, peaks, memory, matmul_peak) -> dict:
    prefill = statistics.median(prefill_times)
    return dict(
        method=name,
        length=length,
        status="ok",
        reason=None,
        method_config=described,
        repeats=len(prefill_times),
        prefill_s=prefill,
        prefill_s_all=prefill_times,
        decode_s=statistics.median(step_times) if step_times else None,
        decode_s_mean=statistics.fmean(step_times) if step_times else None,
        decode_s_max=max(step_times) if step_times else None,
        decode_steps=len(step_times),
        # SharedLLM / CEPE roll C tokens into context once every C steps (the slow step, decode_s_max); spread
        # over those C steps it adds (max - median) / C to the typical step
        decode_s_amortized=_amortized_step(name, described, step_times),
        # medians over repeats: the RSS high-water mark moves by tens of MB from run to run on the CPU
        peak_memory_bytes=int(statistics.median(peaks["all"])),  # prefill + decode steps
        prefill_peak_memory_bytes=int(statistics.median(peaks["prefill"])),
        peak_memory_bytes_all=peaks["all"],
        memory_baseline_bytes=memory.baseline,
        memory_method=memory.method,
        prefill_flops=flops,
        achieved_flops_per_s=flops / prefill,
        matmul_peak_flops_per_s=matmul_peak,
        flops_utilisation=flops / prefill / matmul_peak,
    )


# methods that roll chunk_size tokens into context at once while decoding (one slow step per chunk_size steps)
ROLLING_METHODS = ("sharedllm", "cepe")


def _amortized_step(name: str, described: dict, step_times: list[float]) -> float | None:
    if not step_times:
        return None
    typical = statistics.median(step_times)
    period = described["chunk_size"] if name in ROLLING_METHODS else 1
    return typical + (max(step_times) - typical) / period if period > 1 else typical


def skipped_cell(method: str, length: int, reason: str, status: str = "skipped") -> dict:
    return dict(method=method, length=length, status=status, reason=reason)
