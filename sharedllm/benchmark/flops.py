"""The analytic prefill FLOPs of every benchmarked method (docs/benchmark.md derives them): what the achieved
FLOP/s and the utilisation of the matmul peak are computed from."""

import math

from sharedllm.config import SharedLLMConfig


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
    InfLLM's block scoring, a few representative keys per block, and SharedLLM's cosine node scores). `knobs`: the
    comparison's SharedLLM knobs (config defaults for any not given); `described`: the method's `describe()`, which
    streaming and infllm need (their windows, blocks, sinks)."""
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
        return _sharedllm_flops(dims, length, _method_config(method, knobs, n_layers)) + head
    raise ValueError(f"no FLOP formula for method {method!r}")


def _method_config(method: str, knobs: dict, n_layers: int) -> SharedLLMConfig:
    """The config the method's model is built with (its derived sizes, e.g. `scoring_layer`, `overlap_length`,
    `context_tokens_per_chunk`, are the ones the model uses). sharedllm: the comparison's knobs. cepe
    (methods.CEPE): only the knobs it shares (`CEPE.shared_knobs`), the defaults for the rest (cross injection,
    query selection: not the comparison's), then every layer injected, no tree, a node the whole chunk."""
    if method == "cepe":
        from sharedllm.methods import CEPE  # lazy: the formulas need no model code

        shared = {name: knobs[name] for name in CEPE.shared_knobs if knobs.get(name) is not None}
        return SharedLLMConfig(**CEPE.preset(n_layers, shared))
    return SharedLLMConfig(**knobs)


def _sharedllm_flops(dims: dict, length: int, config: SharedLLMConfig) -> int:
    """A cached prefill of SharedLLMForCausalLM (`_full_forward`, what methods.SharedLLM.prefill times): the query
    (layers below the scoring layer over the window W) + the lower model (M layers over n chunks of C, each after
    its overlap prefix under joint injection) + the chunk scoring of tree_selection "attention" + the upper model
    (N layers over W) reading k of the n chunks' compressed keys: cross injection with its own q/o projections
    and attention in M layers, joint injection inside the layers' own softmax, with the attention sink."""
    chunk, window, m = config.chunk_size, config.decoder_window, config.n_injected_layers
    n_chunks = math.ceil(max(0, length - window) / chunk)
    w = length - n_chunks * chunk
    joint = config.injection == "joint"
    attention_selection = config.tree_selection == "attention"
    # _query_vectors runs the layers below the scoring layer (or query_layer, where that is higher) over the window
    # for attention selection, else layer 0; always, in a cached prefill
    query = _decoder_flops(dims, w, max(config.scoring_layer, config.query_scoring_layer) if attention_selection else 1)
    sink = _lower_pass_flops(dims, 1, dims["n_layers"]) if joint else 0  # ContextEncoder.sink, chunks or not
    upper = _decoder_flops(dims, w, dims["n_layers"])
    if not n_chunks:  # no context: the upper model is the plain base over the window
        return query + sink + upper
    lower = sum(_lower_pass_flops(dims, chunk + prefix, m) for prefix in _chunk_prefixes(n_chunks, config))
    # context_encoder.top_chunks gathers config.chunks_read best chunks when context_chunks = k is set
    read = n_chunks if config.chunks_read is None else min(n_chunks, config.chunks_read)
    read_keys = read * config.context_tokens_per_chunk
    if joint:  # every window query also reads the sink in all N layers and the read chunks' keys in M layers
        context = 4 * dims["h"] * w * (dims["n_layers"] + m * read_keys)
    else:  # a new cross-attention in M layers: its q and o projections, and attention over the read keys
        context = m * (2 * 2 * dims["d"] * dims["h"] * w + 4 * dims["h"] * w * read_keys)
    # attention selection (ContextEncoder.attention_token_scores): per chunk, the scoring layer's query projection
    # of the row's V query states (config.n_query_vectors) and their logits against the chunk's C keys; cosine
    # scores of other selections left out
    per_query = 2 * dims["d"] * dims["h"] + 2 * dims["h"] * chunk
    scoring = n_chunks * config.n_query_vectors * per_query if attention_selection else 0
    return query + sink + lower + scoring + upper + context


def _lower_pass_flops(dims: dict, tokens: int, n_layers: int) -> int:
    """ContextEncoder.run_lower over one sequence of `tokens`: n_layers - 1 whole layers, then of the last one only
    the key/value projections, the only part of it that is read (one whole layer when n_layers is 1)."""
    if n_layers == 1:
        return _decoder_flops(dims, tokens, 1)
    return _decoder_flops(dims, tokens, n_layers - 1) + 2 * 2 * dims["d"] * dims["kv"] * tokens


def _chunk_prefixes(n_chunks: int, config: SharedLLMConfig) -> list[int]:
    """Tokens the lower model reads before each chunk (ContextEncoder.tokens_before): config.overlap_length (none
    under cross injection), for the text's first chunk only its start token (BOS; the rest is padding, left out)."""
    return [min(config.overlap_length, 1)] + [config.overlap_length] * (n_chunks - 1)
