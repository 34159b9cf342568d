"""`sharedllm bench`: prefill time, per-token decode time and peak memory against input length.

One base model, every method of the efficiency comparison, one run (docs/benchmark.md says how to read it):

    sharedllm  SharedLLM (a trained adapter, or untrained: the cost is the same)
    full       the base model with full attention over the whole prompt
    streaming  StreamingLLM (sinks + recent window), the prompt fed in blocks
    infllm     InfLLM (sinks + local window + top-k retrieved context blocks), the prompt fed in chunks
    cepe       the encoder-decoder variant: every layer cross-attends to an uncompressed full-depth encoding
    window     the base model on the last decoder_window tokens only (the floor)

Per (method, length) cell: prefill time (prompt in, first next-token logits out; logits of the last position
only), time per greedy decode step after the prompt, peak memory over prefill + decode (CPU: peak RSS above the
pre-run RSS, in a fresh subprocess per cell; CUDA: max_memory_allocated above the pre-run allocation), and the
achieved FLOP/s of the prefill against a matmul peak measured in the same process.

Python API:

    settings = BenchSettings(lengths=(4096, 8192), repeats=1)
    results = run_benchmark(model_path_or_loaded_model, settings)   # dict, as written to the JSON file
    print(format_table(results)); plot_results(results, "docs/figures")
"""

import argparse
import contextlib
import ctypes
import gc
import json
import math
import os
import platform
import re
import shlex
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch

from sharedllm.assets import DEFAULT_ADAPTER

BENCH_METHODS = ("sharedllm", "full", "streaming", "infllm", "cepe", "window")
# SharedLLM knobs used when no adapter dir is given (an adapter's own config wins unless a knob is passed)
DEFAULT_KNOBS = dict(chunk_size=256, decoder_window=512, n_injected_layers=4, tree_depth=3, tokens_per_node=16)
KNOB_NAMES = (*DEFAULT_KNOBS, "max_chunks_per_pass")
CPU_LENGTHS = ("4K", "8K", "16K", "32K")
CUDA_LENGTHS = ("4K", "8K", "16K", "32K", "64K", "128K")
WORKER_FLAG = "--bench-worker"


# ----------------------------------------------------------------------------------------------------------------
# settings


def parse_length(text: str | int) -> int:
    """'4K' / '4k' -> 4096, '128K' -> 131072, '1M' -> 1048576, '3000' -> 3000."""
    match = re.fullmatch(r"\s*(\d+)\s*([kKmM]?)\s*", str(text))
    if not match:
        raise argparse.ArgumentTypeError(f"not a length: {text!r} (use e.g. 4096, 4K, 128K)")
    return int(match.group(1)) * {"": 1, "k": 1024, "m": 1024**2}[match.group(2).lower()]


def format_length(n: int) -> str:
    return f"{n // 1024}K" if n % 1024 == 0 else str(n)


@dataclass
class BenchSettings:
    """Everything a cell needs besides the model; JSON-serialisable so that a worker process gets the same."""

    methods: tuple[str, ...] = BENCH_METHODS
    lengths: tuple[int, ...] = tuple(parse_length(n) for n in CPU_LENGTHS)
    repeats: int = 3
    decode_steps: int = 16
    max_seconds: float = 300.0  # skip a method's longer lengths once one prefill took longer than this
    cell_seconds: float = 30.0  # stop repeating a cell once it has used this long (at least one repeat)
    max_length: dict[str, int] = field(default_factory=dict)  # per-method cap, e.g. {"full": 32768}
    device: str = "cpu"
    dtype: str = "float32"
    threads: int | None = None
    isolate: bool = True  # one fresh subprocess per cell (clean peak memory, no allocator carry-over)
    adapter: str | None = None
    knobs: dict = field(default_factory=lambda: dict(DEFAULT_KNOBS))
    streaming_block: int = 256
    n_sink: int = 4
    # InfLLM knobs over methods.InfLLM's defaults (its local window is knobs["decoder_window"]), e.g. {"topk": 8}
    infllm: dict = field(default_factory=dict)
    matmul_size: int = 2048
    seed: int = 0
    target_length: int = 32768
    target_long_length: int = 131072

    @property
    def torch_dtype(self) -> torch.dtype:
        return {"float32": torch.float32, "bfloat16": torch.bfloat16}[self.dtype]


def resolve_knobs(adapter: str | None, given: dict) -> dict:
    """SharedLLM knobs: explicitly given > the adapter's saved config > DEFAULT_KNOBS."""
    knobs = dict(DEFAULT_KNOBS)
    if adapter:
        from sharedllm.config import SharedLLMConfig

        saved = SharedLLMConfig.from_pretrained(adapter)
        knobs.update({k: getattr(saved, k) for k in KNOB_NAMES})
    knobs.update({k: v for k, v in given.items() if v is not None})
    return knobs


# ----------------------------------------------------------------------------------------------------------------
# measuring: clocks, memory, matmul peak


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def _timed(device: str, fn, *args):
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
    times = [_timed(device, torch.mm, a, b)[1] for _ in range(repeats)]
    return 2 * size**3 / statistics.median(times)


# ----------------------------------------------------------------------------------------------------------------
# analytic prefill FLOPs (docs/benchmark.md derives them)


def _layer_dims(text_config) -> dict:
    head_dim = getattr(text_config, "head_dim", None) or text_config.hidden_size // text_config.num_attention_heads
    return dict(
        d=text_config.hidden_size,
        h=text_config.num_attention_heads * head_dim,  # query / attention width
        kv=text_config.num_key_value_heads * head_dim,
        f=text_config.intermediate_size,
        n_layers=text_config.num_hidden_layers,
        vocab=text_config.vocab_size,
    )


def _linear_flops_per_token(dims: dict) -> int:
    """One decoder layer, one token: q, k, v, o projections and the gated MLP (2 FLOPs per multiply-add)."""
    d, h, kv, f = dims["d"], dims["h"], dims["kv"], dims["f"]
    return 2 * (d * h + 2 * d * kv + h * d + 3 * d * f)


def _causal_attention_flops(dims: dict, tokens: int, cached: int = 0) -> int:
    """QK^T and AV of `tokens` causal queries after `cached` keys: query i sees cached + i + 1 keys (4*h per key)."""
    keys = tokens * cached + tokens * (tokens + 1) // 2
    return 4 * dims["h"] * keys


def _decoder_flops(dims: dict, tokens: int, n_layers: int) -> int:
    return n_layers * (_linear_flops_per_token(dims) * tokens + _causal_attention_flops(dims, tokens))


def _streaming_attention_keys(length: int, block: int, window: int) -> int:
    """Sum over fed tokens of the keys each attends to: the cache is cut to window - block before each block."""
    total, cached = 0, 0
    for first in range(0, length, block):
        n = min(block, length - first)
        cached = min(cached, window - n)
        total += n * cached + n * (n + 1) // 2
        cached += n
    return total


def _infllm_attention_keys(length: int, infllm: dict) -> int:
    """Sum over fed tokens of the keys each attends to under methods.InfLLM's knobs (`describe()`): per chunk, the
    sinks, min(topk, closed blocks) blocks and the local window (as infllm.InfLLMCache.memory_end cuts it)."""
    n_sink, local, bs, chunk = infllm["n_sink"], infllm["local_window"], infllm["block_size"], infllm["chunk_size"]
    total = 0
    for first in range(0, length, chunk):
        n = min(chunk, length - first)
        memory_end = n_sink + max(0, (first - local - n_sink) // bs) * bs
        retrieved = min(infllm["topk"], (memory_end - n_sink) // bs) * bs
        past = first if memory_end == n_sink else n_sink + retrieved + first - memory_end  # sinks, blocks, local
        total += n * past + n * (n + 1) // 2
    return total


def prefill_flops(method: str, length: int, text_config, knobs: dict, streaming_block=256, n_sink=4,
                  infllm: dict | None = None) -> int:
    """Useful FLOPs of one prefill of `length` tokens (matmuls and attention; norms, RoPE, softmax left out, and
    InfLLM's block scoring, a few representative keys per block). `infllm`: methods.InfLLM.describe()."""
    dims = _layer_dims(text_config)
    head = 2 * dims["d"] * dims["vocab"]  # lm_head on the last position only
    n_layers, window = dims["n_layers"], knobs["decoder_window"]
    if method == "full":
        return _decoder_flops(dims, length, n_layers) + head
    if method == "window":
        return _decoder_flops(dims, min(length, window), n_layers) + head
    if method == "streaming":
        block = min(streaming_block, window - n_sink)  # as methods.StreamingLLM clamps it
        keys = _streaming_attention_keys(length, block, window)
        return n_layers * (_linear_flops_per_token(dims) * length + 4 * dims["h"] * keys) + head
    if method == "infllm":
        keys = _infllm_attention_keys(length, infllm)
        return n_layers * (_linear_flops_per_token(dims) * length + 4 * dims["h"] * keys) + head
    if method in ("sharedllm", "cepe"):
        return _sharedllm_flops(dims, length, _method_knobs(method, knobs, n_layers)) + head
    raise ValueError(f"no FLOP formula for method {method!r}")


def _method_knobs(method: str, knobs: dict, n_layers: int) -> dict:
    if method == "cepe":  # as methods.CEPE: every layer injected, no tree, a node is the whole chunk
        return {**knobs, "n_injected_layers": n_layers, "tree_depth": 0, "tokens_per_node": knobs["chunk_size"]}
    return knobs


def _sharedllm_flops(dims: dict, length: int, knobs: dict) -> int:
    """Lower model (M layers over n chunks of C) + query (layer 0 over the window) + upper model (N layers over
    the window W) + cross-attention (q/o projections and attention over n * P * (D + 1) keys in M layers)."""
    chunk, window, m = knobs["chunk_size"], knobs["decoder_window"], knobs["n_injected_layers"]
    n_chunks = math.ceil(max(0, length - window) / chunk)
    w = length - n_chunks * chunk
    context_keys = n_chunks * knobs["tokens_per_node"] * (knobs["tree_depth"] + 1)
    # the lower pass runs M - 1 whole layers; of the last one only the key/value projections (modeling._run_lower)
    last_kv = 2 * 2 * dims["d"] * dims["kv"] * chunk if m > 1 else 0
    lower = n_chunks * (_decoder_flops(dims, chunk, m - 1 if m > 1 else m) + last_kv)
    query = _decoder_flops(dims, w, 1)  # a cached prefill always computes it (chunks may roll in later)
    upper = _decoder_flops(dims, w, dims["n_layers"])
    cross = m * (2 * 2 * dims["d"] * dims["h"] * w + 4 * dims["h"] * w * context_keys) if n_chunks else 0
    return lower + query + upper + cross


# ----------------------------------------------------------------------------------------------------------------
# runners: one prefill (prompt -> next-token logits) and one decode step per method, state kept in between


class BaseRunner:
    """The base model with its own KV cache; `window` keeps only the last that many prompt tokens."""

    def __init__(self, base, window: int | None = None):
        self.base, self.window, self.cache = base, window, None

    def reset(self):
        self.cache = None

    def _feed(self, ids):
        hidden = self.base.model(ids[None], past_key_values=self.cache, use_cache=True).last_hidden_state
        return self.base.lm_head(hidden[:, -1])[0]  # logits of the last position only

    def prefill(self, ids):
        from transformers import DynamicCache

        self.cache = DynamicCache(config=self.base.config)
        return self._feed(ids[-self.window :] if self.window else ids)

    def step(self, token):
        return self._feed(token.view(1))


class StreamingRunner(BaseRunner):
    """methods.StreamingLLM or methods.InfLLM: the prompt fed block by block (chunk by chunk) into the method's cache."""

    def __init__(self, method):
        super().__init__(method.base)
        self.method = method

    def _feed(self, ids):
        return self.method.feed(self.cache, ids)

    def prefill(self, ids):
        self.cache = self.method.new_cache()
        return self._feed(ids)


class SharedLLMRunner(BaseRunner):
    """SharedLLMForCausalLM's cached path, as `generate` drives it (an empty cache starts a cached prefill)."""

    def __init__(self, model):
        super().__init__(model.base)
        self.model = model

    def prefill(self, ids):
        from transformers import DynamicCache

        out = self.model(ids[None], past_key_values=DynamicCache(), use_cache=True, logits_to_keep=1)
        self.cache = out.past_key_values
        return out.logits[0, -1]

    def step(self, token):
        out = self.model(token.view(1, 1), past_key_values=self.cache, use_cache=True, logits_to_keep=1)
        return out.logits[0, -1]


def build_runner(method: str, base, settings: BenchSettings):
    from sharedllm.methods import load_method

    knobs = settings.knobs
    if method == "full":
        return BaseRunner(base)
    if method == "window":
        return BaseRunner(base, window=knobs["decoder_window"])
    if method == "streaming":
        streaming = load_method("streaming", base, decoder_window=knobs["decoder_window"], n_sink=settings.n_sink,
                                block_size=settings.streaming_block)
        return StreamingRunner(streaming)
    if method == "infllm":
        return StreamingRunner(load_method("infllm", base, decoder_window=knobs["decoder_window"], **settings.infllm))
    if method == "sharedllm":
        return SharedLLMRunner(load_method("sharedllm", base, adapter=settings.adapter, **knobs).model)
    if method == "cepe":
        cepe_knobs = {k: v for k, v in knobs.items() if k in ("chunk_size", "decoder_window", "max_chunks_per_pass")}
        return SharedLLMRunner(load_method("cepe", base, **cepe_knobs).model)
    raise ValueError(f"unknown bench method {method!r}; valid: {', '.join(BENCH_METHODS)}")


# ----------------------------------------------------------------------------------------------------------------
# one cell


def bench_ids(length: int, vocab_size: int, seed: int, device: str) -> torch.Tensor:
    """Random token ids: cost does not depend on the text, and every method of a length gets the same ids."""
    generator = torch.Generator().manual_seed(seed + length)
    return torch.randint(0, vocab_size, (length,), generator=generator).to(device)


def _decode(runner, logits, steps: int, device: str) -> list[float]:
    times = []
    for _ in range(steps):
        token = logits.argmax()
        logits, seconds = _timed(device, runner.step, token)
        times.append(seconds)
    return times


@torch.inference_mode()
def measure_cell(base, method: str, length: int, settings: BenchSettings) -> dict:
    """Prefill / decode timings and peak memory of one (method, length) on a loaded base model."""
    device = settings.device
    runner = build_runner(method, base, settings)
    ids = bench_ids(length, base.config.vocab_size, settings.seed, device)
    # warm-up on a short prompt: first-call costs (kernel selection, thread pool, lazy init) stay out of the timings
    warm = min(length, settings.knobs["decoder_window"] + settings.knobs["chunk_size"])
    _decode(runner, runner.prefill(ids[:warm]), 2, device)
    memory = PeakMemory(device)
    prefill_times, step_times, peaks, started = [], [], {"prefill": [], "all": []}, time.perf_counter()
    for _ in range(settings.repeats):
        runner.reset()  # drop the previous repeat's cache, then measure this repeat's peak from a clean baseline
        memory.reset()
        logits, seconds = _timed(device, runner.prefill, ids)
        prefill_times.append(seconds)
        peaks["prefill"].append(memory.peak())
        step_times += _decode(runner, logits, settings.decode_steps, device)
        peaks["all"].append(memory.peak())
        if time.perf_counter() - started > settings.cell_seconds:
            break  # a slow cell gets fewer repeats rather than stalling the grid
    runner.reset()
    matmul_peak = measure_matmul_peak(device, settings.torch_dtype, settings.matmul_size)
    described = runner.method.describe() if method == "infllm" else None
    return _cell_record(method, length, settings, base.config, prefill_times, step_times, peaks, memory, matmul_peak,
                        described)


def _cell_record(method, length, settings, text_config, prefill_times, step_times, peaks, memory, matmul_peak,
                 infllm=None) -> dict:
    prefill = statistics.median(prefill_times)
    flops = prefill_flops(method, length, text_config, settings.knobs, settings.streaming_block, settings.n_sink,
                          infllm)
    return dict(
        method=method,
        length=length,
        status="ok",
        reason=None,
        repeats=len(prefill_times),
        prefill_s=prefill,
        prefill_s_all=prefill_times,
        decode_s=statistics.median(step_times) if step_times else None,
        decode_s_mean=statistics.fmean(step_times) if step_times else None,
        decode_s_max=max(step_times) if step_times else None,
        decode_steps=len(step_times),
        # SharedLLM / CEPE roll C tokens into context once every C steps (the slow step, decode_s_max); spread
        # over those C steps it adds (max - median) / C to the typical step
        decode_s_amortized=_amortized_step(method, settings, step_times),
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


def _amortized_step(method: str, settings: BenchSettings, step_times: list[float]) -> float | None:
    if not step_times:
        return None
    typical = statistics.median(step_times)
    period = settings.knobs["chunk_size"] if method in ("sharedllm", "cepe") else 1
    return typical + (max(step_times) - typical) / period if period > 1 else typical


def skipped_cell(method: str, length: int, reason: str, status: str = "skipped") -> dict:
    return dict(method=method, length=length, status=status, reason=reason)


# ----------------------------------------------------------------------------------------------------------------
# isolation: a cell in a fresh process


def load_base(path, settings: BenchSettings):
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(str(path), dtype=settings.torch_dtype)
    return model.to(settings.device).eval()


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


def _worker_main(spec_path: str, out_path: str) -> None:
    """Entry of a cell subprocess: load the base, measure one cell, write its record as JSON."""
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
    package_root = str(Path(__file__).resolve().parents[1])
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [package_root, os.environ.get("PYTHONPATH")]))}
    done = subprocess.run(command, capture_output=True, text=True, env=env)
    if done.returncode != 0 or not out_path.exists():
        tail = (done.stderr or done.stdout).strip().splitlines()[-3:]
        killed = " (killed: out of memory?)" if done.returncode in (-9, 137) else ""
        return skipped_cell(method, length, f"worker exit {done.returncode}{killed}: {' | '.join(tail)}", "failed")
    return json.loads(out_path.read_text())


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


def environment(base_config, settings: BenchSettings, base_label: str) -> dict:
    import transformers

    device_name = torch.cuda.get_device_name() if settings.device.startswith("cuda") else _cpu_name()
    return dict(
        device=settings.device,
        device_name=device_name,
        dtype=settings.dtype,
        threads=torch.get_num_threads(),
        cpu_count=os.cpu_count(),
        attention_backend=_attention_backend(base_config, settings.device),
        torch=torch.__version__,
        transformers=transformers.__version__,
        python=platform.python_version(),
        platform=platform.platform(),
        command=shlex.join(sys.argv),
        base_model=base_label,
        model_layers=base_config.num_hidden_layers,
        model_hidden=base_config.hidden_size,
        date=time.strftime("%Y-%m-%d %H:%M:%S %Z"),
        settings=asdict(settings),
    )


def _cpu_name() -> str:
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or "cpu"


def _attention_backend(base_config, device: str) -> str:
    name = getattr(base_config, "_attn_implementation", None) or "sdpa"
    if name == "sdpa" and device.startswith("cuda"):
        backends = torch.backends.cuda
        flags = dict(flash=backends.flash_sdp_enabled(), mem_efficient=backends.mem_efficient_sdp_enabled())
        return f"sdpa ({', '.join(k for k, v in flags.items() if v) or 'math'})"
    return f"{name} (CPU)" if not device.startswith("cuda") else name


def run_benchmark(base, settings: BenchSettings, output: str | Path | None = None, progress: bool = True) -> dict:
    """Measure every (method, length) of the grid. `base` is a model path (needed when settings.isolate) or a loaded
    causal LM (in-process only). Writes the JSON after every cell when `output` is given, so an interrupted grid
    keeps what it measured."""
    with _threads(settings):
        return _run_grid(base, settings, output, progress)


def _run_grid(base, settings: BenchSettings, output, progress: bool) -> dict:
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
            finish(results, settings)
            if output:
                write_json(results, output)
    return results


def _load_config(path):
    from transformers import AutoConfig

    return AutoConfig.from_pretrained(str(path))


def _run_cell_in_process(base, method, length, settings) -> dict:
    try:
        return measure_cell(base, method, length, settings)
    except (RuntimeError, MemoryError, ValueError) as error:  # e.g. out of memory: record it, go on with the grid
        return skipped_cell(method, length, f"{type(error).__name__}: {str(error).splitlines()[0][:300]}", "failed")


def _last_cell(cells: list[dict], method: str) -> dict | None:
    return next((c for c in reversed(cells) if c["method"] == method), None)


def finish(results: dict, settings: BenchSettings) -> dict:
    """(Re)compute the derived numbers: ratios per cell and the issue's targets."""
    compute_ratios(results["cells"])
    results["targets"] = check_targets(results["cells"], settings.target_length, settings.target_long_length)
    return results


def write_json(results: dict, path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(results, indent=1))
    tmp.replace(path)  # atomic: a reader never sees half a file
    return path


# ----------------------------------------------------------------------------------------------------------------
# ratios and targets


def _ok(cells: list[dict], method: str, length: int) -> dict | None:
    return next((c for c in cells if c["method"] == method and c["length"] == length and c["status"] == "ok"), None)


def _quotient(a, b):
    return a / b if a is not None and b else None


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
                both("window"), shared, cell("window"), "decode_s"),
        _target("flops_utilisation", f"sharedllm prefill FLOP/s at {a} / matmul peak >= 0.5", 0.5, False,
                f"sharedllm at {a}", utilisation, {"ratio": 1.0}, "ratio", normalise=False),
    ]


# ----------------------------------------------------------------------------------------------------------------
# reporting: table and plots


def _fmt(value, spec: str, scale: float = 1.0, suffix: str = "") -> str:
    if value is None:  # keep the column aligned
        return "-".rjust(int(re.match(r"\d*", spec).group() or 1) + len(suffix))
    return f"{value * scale:{spec}}{suffix}"


def format_table(results: dict) -> str:
    meta = results["meta"]
    lines = [
        f"device {meta['device']} ({meta['device_name']}), {meta['dtype']}, {meta['threads']} threads, "
        f"attention {meta['attention_backend']}, torch {meta['torch']}, transformers {meta['transformers']}",
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


def plot_results(results: dict, figures_dir: str | Path, suffix: str = "") -> list[Path]:
    """Log-log plots: prefill time and decode time per token vs length; peak memory vs length."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figures_dir = Path(figures_dir)
    figures_dir.mkdir(parents=True, exist_ok=True)
    meta = results["meta"]
    title = f"{Path(str(meta['base_model'])).name}, {meta['device']} {meta['dtype']}, threads={meta['threads']}"
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


# ----------------------------------------------------------------------------------------------------------------
# command line


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", default=None,
                        help="base causal LM path or hub id (default: the project's SmolLM2-135M)")
    parser.add_argument("--adapter", default=None,
                        help=f"SharedLLM adapter dir (default: {DEFAULT_ADAPTER} if present, else an untrained model)")
    parser.add_argument("--methods", nargs="+", default=list(BENCH_METHODS), choices=BENCH_METHODS)
    parser.add_argument("--lengths", nargs="+", type=parse_length, default=None,
                        help=f"input lengths, e.g. 4K 8K (default: {' '.join(CPU_LENGTHS)} on cpu, "
                        f"{' '.join(CUDA_LENGTHS)} on cuda)")
    parser.add_argument("--repeats", type=int, default=3, help="prefill runs per cell; the median is reported")
    parser.add_argument("--decode-steps", type=int, default=16, help="greedy steps timed after each prefill")
    parser.add_argument("--max-seconds", type=float, default=300.0,
                        help="skip a method's longer lengths once one of its prefills took longer than this")
    parser.add_argument("--cell-seconds", type=float, default=30.0,
                        help="stop repeating a cell once it has used this long (it always runs once)")
    parser.add_argument("--max-length", nargs="+", default=[], metavar="METHOD=LENGTH",
                        help="per-method length cap, e.g. full=32K streaming=32K (recorded as skipped)")
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--dtype", choices=["float32", "bfloat16"], default="float32")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    knobs = parser.add_argument_group("SharedLLM knobs (default: the adapter's, else the values shown)")
    for name in KNOB_NAMES:
        knobs.add_argument(f"--{name.replace('_', '-')}", type=int, default=None, dest=name,
                           help=f"default {DEFAULT_KNOBS.get(name, 'the model config')}")
    parser.add_argument("--streaming-block", type=int, default=256, help="StreamingLLM prefill block size (tokens)")
    parser.add_argument("--n-sink", type=int, default=4, help="StreamingLLM attention sinks")
    parser.add_argument("--infllm", nargs="+", default=[], metavar="KNOB=VALUE",
                        help="InfLLM knobs (n_sink, block_size, n_rep, topk, chunk_size, local_window) over its "
                             "defaults; its local window defaults to --decoder-window")
    parser.add_argument("--no-isolate", dest="isolate", action="store_false",
                        help="run every cell in this process (faster, but peak memory is less reliable)")
    parser.add_argument("--output", default=None, help="result JSON (default: results/bench-<device>.json)")
    parser.add_argument("--figures", default="docs/figures", help="folder of bench_time.png and bench_memory.png")
    parser.add_argument("--target-length", type=parse_length, default=32768, help="length the targets are judged at")
    parser.add_argument("--target-long-length", type=parse_length, default=131072,
                        help="long length of the scaling targets")
    parser.add_argument("--replot", default=None, metavar="JSON",
                        help="only redo the table, targets and plots from a result JSON")
    parser.add_argument("--seed", type=int, default=0)


def settings_from_args(args) -> BenchSettings:
    adapter = args.adapter or (str(DEFAULT_ADAPTER) if (DEFAULT_ADAPTER / "config.json").exists() else None)
    lengths = args.lengths or [parse_length(n) for n in (CUDA_LENGTHS if args.device == "cuda" else CPU_LENGTHS)]
    caps = {}
    for item in args.max_length:
        method, _, length = item.partition("=")
        if method not in BENCH_METHODS or not length:
            raise SystemExit(f"--max-length wants METHOD=LENGTH with METHOD in {BENCH_METHODS}, got {item!r}")
        caps[method] = parse_length(length)
    infllm = {}
    for item in args.infllm:
        knob, _, value = item.partition("=")
        if not value.isdigit():
            raise SystemExit(f"--infllm wants KNOB=INTEGER, got {item!r}")
        infllm[knob] = int(value)
    return BenchSettings(
        methods=tuple(args.methods), infllm=infllm, lengths=tuple(lengths), repeats=args.repeats, decode_steps=args.decode_steps,
        max_seconds=args.max_seconds, cell_seconds=args.cell_seconds, max_length=caps, device=args.device,
        dtype=args.dtype, threads=args.threads,
        isolate=args.isolate, adapter=adapter, knobs=resolve_knobs(adapter, {k: getattr(args, k) for k in KNOB_NAMES}),
        streaming_block=args.streaming_block, n_sink=args.n_sink, seed=args.seed,
        target_length=args.target_length, target_long_length=args.target_long_length,
    )


def run(args) -> int:
    suffix = "" if args.device == "cpu" else f"-{args.device}"
    if args.replot:
        results = json.loads(Path(args.replot).read_text())
        compute_ratios(results["cells"])  # re-derived, so that the targets can be judged at other lengths too
        results["targets"] = check_targets(results["cells"], args.target_length, args.target_long_length)
    else:
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        model = args.model
        if model is None:
            from sharedllm.assets import default_model_path

            model = str(default_model_path())
        settings = settings_from_args(args)
        output = args.output or f"results/bench-{args.device}.json"
        results = run_benchmark(model, settings, output=output)
        print(f"wrote {output}")
    print(format_table(results))
    for path in plot_results(results, args.figures, suffix):
        print(f"wrote {path}")
    return 0


if __name__ == "__main__" and len(sys.argv) == 4 and sys.argv[1] == WORKER_FLAG:
    _worker_main(sys.argv[2], sys.argv[3])
