"""The comparison's methods by name and what each reads of a comparison's shared settings, and InfLLM's own options.

Light on purpose (no torch, no transformers): eval refuses a wrong method name or a knob no chosen method reads, and
eval and bench a bad `--infllm` value, from this table in a fraction of a second, before any model code loads.
`sharedllm.methods` gives its classes these declarations (`Method.__init_subclass__`), so each is written once.
"""

from dataclasses import dataclass

from sharedllm.knobs import KNOBS


@dataclass(frozen=True)
class MethodReads:
    """What one method takes from a comparison's shared settings (`methods.Method.settings`)."""

    shared_knobs: tuple[str, ...] = ()  # the SharedLLM knobs (KNOBS names) of a comparison this method reads
    reads_adapter: bool = False  # whether a comparison's SharedLLM adapter is this method's
    window_only: bool = False  # predicts only inside its decoder window (older tokens are cut or become context)


WINDOW = ("decoder_window",)
METHOD_READS = {
    "full": MethodReads(),
    "window": MethodReads(WINDOW, window_only=True),
    "streaming": MethodReads(WINDOW),
    "infllm": MethodReads(WINDOW),
    "yarn": MethodReads(),
    # the model's knobs but full_logits: scoring asks for the decoder window's logits itself, whatever it says
    "sharedllm": MethodReads(tuple(name for name in KNOBS if name != "full_logits"), reads_adapter=True,
                             window_only=True),
    # the untrained CEPE-style preset: a comparison's adapter is a SharedLLM one, not an encoder-decoder one (a
    # trained CEPE-style adapter runs as sharedllm)
    "cepe": MethodReads(("chunk_size", "decoder_window", "max_chunks_per_pass"), window_only=True),
}
METHODS = tuple(METHOD_READS)

# InfLLM's own options, all whole numbers (what `--infllm KNOB=VALUE` of eval and bench may set), with their
# defaults; its local window defaults to the comparison's decoder window
INFLLM_DEFAULTS = {"n_sink": 64, "block_size": 128, "n_rep": 4, "topk": 4, "chunk_size": 256}
INFLLM_OPTIONS = (*INFLLM_DEFAULTS, "local_window")


def check_infllm_values(**options) -> None:
    """Refuse InfLLM options it cannot run with (eval and bench call it with --infllm's before loading anything, the
    method when it is built); an option not given keeps its default, the local window a valid decoder window."""
    o = {**INFLLM_DEFAULTS, "local_window": 1, **options}
    if min(o["local_window"], o["block_size"], o["chunk_size"]) < 1 or o["n_sink"] < 0 or o["topk"] < 0:
        raise ValueError("infllm needs local_window, block_size, chunk_size >= 1 and n_sink, topk >= 0")
    if not 1 <= o["n_rep"] <= o["block_size"]:
        raise ValueError(f"infllm needs 1 <= n_rep <= block_size, got n_rep={o['n_rep']}, "
                         f"block_size={o['block_size']}")
