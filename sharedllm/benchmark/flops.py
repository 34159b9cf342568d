"""The analytic prefill FLOPs of every benchmarked method (docs/benchmark.md derives them): what the achieved
FLOP/s and the utilisation of the matmul peak are computed from."""

import math


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


def prefill_flops(method: str, length: int, text_config, knobs: dict, described: dict | None = None) -> int:
    """Useful FLOPs of one prefill of `length` tokens (matmuls and attention; norms, RoPE, softmax left out, and
    InfLLM's block scoring, a few representative keys per block). `knobs`: the comparison's SharedLLM knobs;
    `described`: the method's `describe()`, which streaming and infllm need (their windows, blocks, sinks)."""
    dims = _layer_dims(text_config)
    head = 2 * dims["d"] * dims["vocab"]  # lm_head on the last position only
    n_layers, window = dims["n_layers"], knobs["decoder_window"]
    if method == "full":
        return _decoder_flops(dims, length, n_layers) + head
    if method == "window":
        return _decoder_flops(dims, min(length, window), n_layers) + head
    if method == "streaming":  # describe() gives the block as methods.StreamingLLM clamps it
        keys = _streaming_attention_keys(length, described["block_size"], described["window"])
        return n_layers * (_linear_flops_per_token(dims) * length + 4 * dims["h"] * keys) + head
    if method == "infllm":
        keys = _infllm_attention_keys(length, described)
        return n_layers * (_linear_flops_per_token(dims) * length + 4 * dims["h"] * keys) + head
    if method in ("sharedllm", "cepe"):
        return _sharedllm_flops(dims, length, _method_knobs(method, knobs, n_layers)) + head
    raise ValueError(f"no FLOP formula for method {method!r}")


def _method_knobs(method: str, knobs: dict, n_layers: int) -> dict:
    if method == "cepe":  # as methods.CEPE: every layer injected, no tree, a node is the whole chunk
        return {**knobs, "n_injected_layers": n_layers, "tree_depth": 0, "tokens_per_node": knobs["chunk_size"],
                "leaf_tokens_per_node": None}
    return knobs


def _sharedllm_flops(dims: dict, length: int, knobs: dict) -> int:
    """Lower model (M layers over n chunks of C) + query (layer 0 over the window) + upper model (N layers over
    the window W) + cross-attention (q/o projections and attention over n * P * (D + 1) keys in M layers)."""
    chunk, window, m = knobs["chunk_size"], knobs["decoder_window"], knobs["n_injected_layers"]
    n_chunks = math.ceil(max(0, length - window) / chunk)
    w = length - n_chunks * chunk
    context_keys = n_chunks * _context_tokens_per_chunk(knobs)
    # the lower pass runs M - 1 whole layers; of the last one only the key/value projections (ContextEncoder.run_lower)
    last_kv = 2 * 2 * dims["d"] * dims["kv"] * chunk if m > 1 else 0
    lower = n_chunks * (_decoder_flops(dims, chunk, m - 1 if m > 1 else m) + last_kv)
    query = _decoder_flops(dims, w, 1)  # a cached prefill always computes it (chunks may roll in later)
    upper = _decoder_flops(dims, w, dims["n_layers"])
    cross = m * (2 * 2 * dims["d"] * dims["h"] * w + 4 * dims["h"] * w * context_keys) if n_chunks else 0
    return lower + query + upper + cross


def _context_tokens_per_chunk(knobs: dict) -> int:
    """Compressed keys per chunk and injected layer, as config.SharedLLMConfig.context_tokens_per_chunk counts them:
    P per node of the D - 1 coarse levels and the leaf budget (default P) for the two kept leaves; no tree: one node."""
    leaf = knobs.get("leaf_tokens_per_node") or knobs["tokens_per_node"]
    if knobs["tree_depth"] == 0:
        return leaf
    return knobs["tokens_per_node"] * (knobs["tree_depth"] - 1) + 2 * leaf
