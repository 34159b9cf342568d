"""What one benchmark run measures: the methods, lengths, budgets and the SharedLLM knobs every method shares."""

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from sharedllm.flags import parse_length
from sharedllm.knobs import KNOB_DEFAULTS, KNOBS

if TYPE_CHECKING:
    import torch

BENCH_METHODS = ("sharedllm", "full", "streaming", "infllm", "cepe", "window")
CPU_LENGTHS = ("4K", "8K", "16K", "32K")
CUDA_LENGTHS = ("4K", "8K", "16K", "32K", "64K", "128K")


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
    # the SharedLLM knobs of the comparison (config.KNOBS names); each method reads the ones it uses
    knobs: dict = field(default_factory=lambda: dict(KNOB_DEFAULTS))
    streaming_block: int = 256
    n_sink: int = 4
    # InfLLM knobs over methods.InfLLM's defaults (its local window is knobs["decoder_window"]), e.g. {"topk": 8}
    infllm: dict = field(default_factory=dict)
    matmul_size: int = 2048
    seed: int = 0
    target_length: int = 32768
    target_long_length: int = 131072

    @property
    def torch_dtype(self) -> "torch.dtype":
        import torch  # here: the settings serve `sharedllm bench`'s parser, which loads no model library

        return {"float32": torch.float32, "bfloat16": torch.bfloat16}[self.dtype]

    @property
    def shared(self) -> dict:
        """The settings every method of the comparison takes its part of (`methods.Method.build`)."""
        return {"adapter": self.adapter, **self.knobs}

    def options(self, method: str) -> dict:
        """A method's own options: the flags of the benchmark that are named after one method."""
        own = {"streaming": dict(n_sink=self.n_sink, block_size=self.streaming_block), "infllm": dict(self.infllm)}
        return own.get(method, {})


def resolve_knobs(adapter: str | None, given: dict) -> dict:
    """SharedLLM knobs: explicitly given > the adapter's saved config > the config defaults (config.KNOBS);
    validated as the model would validate them."""
    from sharedllm.knob_rules import read_knobs

    # before any cell runs; an optional knob given as None is switched off (`--selected-leaves none`)
    config = read_knobs(adapter, given)
    return {name: getattr(config, name) for name in KNOBS}
