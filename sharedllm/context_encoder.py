"""The lower model: what SharedLLM does to the context chunks before the upper model reads them.

The embedding and bottom M layers of the base model encode each whole chunk of C tokens (chunk index c as a rotary
offset: its tokens sit at positions c + 0..C-1), the context tree picks the nodes with the row's query vector, and
each kept node becomes P key/value positions per injected layer (`sharedllm.tree`). A batch's result is an
`EncodedContext`, which the upper model's cross-attention reads (`SharedLLMForCausalLM._injected_context`).

With node_encoding="chunk" (the default) the pass is split in two so that a document can be encoded once
(`sharedllm.context_cache`): `ContextEncoder.lower_chunks` (question-independent: keys/values of every token, and
the node vectors the tree compares, as `LowerChunks`) and `ContextEncoder.select_nodes` (tree search +
compression for a query). node_encoding="node" is the reference encoding: every node encoded alone.
"""

from dataclasses import dataclass

import torch
from torch import nn
from transformers import DynamicCache, PreTrainedModel
from transformers.masking_utils import create_causal_mask, create_sliding_window_causal_mask
from transformers.models.llama.modeling_llama import apply_rotary_pos_emb

from sharedllm.compat import cache_argument
from sharedllm.config import SharedLLMConfig
from sharedllm.injection import head_states
from sharedllm.rope import rotate
from sharedllm.rows import gather_tokens
from sharedllm.tree import (
    attention_half_scores,
    attention_logits,
    attention_token_scores,
    chunk_ranking_scores,
    chunk_statistics,
    compress_node,
    cosine_half_scores,
    search_tree,
    top_leaves,
    union_order,
)


def chunk_views(keys: list[torch.Tensor], values: list[torch.Tensor]) -> list[torch.Tensor]:
    """Per layer (N, Hkv, T, hd) keys and values -> N per-chunk (2M, Hkv, T, hd) views of one new tensor: each
    chunk's M layers' keys, then its values."""
    return list(torch.stack([*keys, *values]).unbind(1))


@dataclass
class EncodedContext:
    """What each row's upper model reads, chunk by chunk: row b's chunks in text order, each (2M, Hkv, K, hd), its
    M injected layers' keys then values, K = config.context_tokens_per_chunk.

    Why a list of chunks, not one (B, Hkv, n * K, hd) tensor per layer: a reading that keeps every token of a chunk
    (tree_depth 0) hands on the lower pass's own tensors, which a context cache or the evaluation memo already
    holds, instead of a second copy of every chunk (at 128K, 5.4 GB for SmolLM2-135M in fp32); and a top-k reading
    picks its chunks without copying the others. `layers` makes the tensors the attention reads."""

    chunks: list[list[torch.Tensor]]
    n_chunks: torch.LongTensor  # (B,) len(chunks[b]), on the model's device
    per_chunk: int  # K
    # (B, n, V * H) or (B, n, V * H, 2), -inf past a row's chunks: each chunk's `tree.chunk_statistics` under the
    # row's V query states (config.n_query_vectors: the Q query tokens', the query token's heads last;
    # config.context_chunks ranks chunks by them); None when not asked for
    chunk_scores: torch.Tensor | None = None

    def layers(self) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        """Per injected layer (B, Hkv, n * K, hd) keys and values, n = the most chunks of a row, zeros past a row's
        chunks: one new tensor. The chunks become views of it, so that this context and what reads it hold one copy
        of them, not two (the tensors they were stay wherever else they are held: a context cache, the memo)."""
        first = self.chunks[int(self.n_chunks.argmax())][0]
        n_max, per_chunk = int(self.n_chunks.max()), self.per_chunk
        allocate = torch.empty if bool((self.n_chunks == n_max).all()) else torch.zeros
        stacked = allocate(first.shape[0], len(self.chunks), first.shape[1], n_max * per_chunk, first.shape[-1],
                           dtype=first.dtype, device=first.device)  # (2M, B, Hkv, n * K, hd)
        views = [[stacked[:, b, :, j * per_chunk : (j + 1) * per_chunk] for j in range(len(row))]
                 for b, row in enumerate(self.chunks)]
        for row, row_views in zip(self.chunks, views):
            for chunk, view in zip(row, row_views):
                view.copy_(chunk)
        self.chunks = views
        n_layers = first.shape[0] // 2
        return list(stacked[:n_layers]), list(stacked[n_layers:])

    def select(self, index: torch.LongTensor) -> "EncodedContext":
        scores = None if self.chunk_scores is None else self.chunk_scores[index]
        return EncodedContext([self.chunks[i] for i in index.tolist()], self.n_chunks[index], self.per_chunk, scores)


@dataclass
class LowerChunks:
    """The lower model's pass over N whole chunks, before any query: all that a question's tree search and node
    compression read (with node_encoding="chunk"), so a document's chunks can be encoded once and kept."""

    # per chunk (2M, Hkv, C, hd): its M injected layers' post-RoPE keys (positions c + 0..C-1), then their values
    chunks: list[torch.Tensor]
    # (N, 2**(D-1), hidden): normed layer-0 state at the end of every shortest compared node; None where they were
    # not asked for (a selection that compares no node vectors)
    node_vectors: torch.Tensor | None

    def layer_keys(self, layer: int) -> torch.Tensor:
        """(N, Hkv, C, hd) injected layer `layer`'s keys of every chunk (a copy)."""
        return torch.stack([chunk[layer] for chunk in self.chunks])

    def select(self, index: torch.LongTensor) -> "LowerChunks":
        vectors = None if self.node_vectors is None else self.node_vectors[index]
        return LowerChunks([self.chunks[i] for i in index.tolist()], vectors)


class LowerChunksMemo:
    """A `lower` for `ContextEncoder.encode_by_chunk` that runs the lower pass once per distinct chunk and hands the
    kept result back after. A chunk's pass depends on its tokens, the tokens read before it and, with cross
    injection, its chunk index (its rotary offset); joint injection encodes every chunk at -C..-1, so there a chunk
    of text is the same pass wherever it falls in an input (overlapping windows of one document share theirs).
    Why: full_logits scores span j from a forward over j chunks, j - 1 of which the spans before it encoded; without
    it the chunk passes grow as (L / C)**2. The price is the lower keys/values of every chunk kept for the call:
    M layers x C tokens per chunk, what a full-attention KV cache of those layers would hold."""

    def __init__(self, encoder: "ContextEncoder"):
        self.encoder = encoder
        self.by_index = not encoder.chunks_share_positions
        # per key, one chunk's pass: (2M, Hkv, C, hd) its M layers' keys then values in one tensor of its own (not a
        # view of its pass's: a chunk kept for the next input would hold the whole pass), and its node vectors. One
        # allocation a chunk, not 2M: those small blocks, scattered among the passes' activations, kept freed heap
        # resident (3 passkey trials at 32K peaked at 6.09 GB with them, 5.57 GB without, 4.17 GB of it live:
        # `scripts/passkey_memory.py`). An encoded context that keeps every token of a chunk reads these same
        # tensors (`ContextEncoder.select_nodes`).
        self.kept: dict[tuple, tuple[torch.Tensor, torch.Tensor | None]] = {}

    def chunk_keys(self, chunk_ids, chunk_index, before) -> list[tuple]:
        """What each of the (N, C) chunks' pass depends on (its index only where the pass reads it)."""
        ids, prefix = chunk_ids.cpu().numpy(), before.cpu().numpy()  # one copy each
        index = chunk_index.tolist() if self.by_index else [None] * len(ids)
        return [(index[i], ids[i].tobytes(), prefix[i].tobytes()) for i in range(len(ids))]

    def start_input(self, chunk_ids, chunk_index, before) -> None:
        """Before an input's first pass, all its chunks: forget every kept chunk it does not read, so that across
        inputs the memo holds one input's chunks, never two (at 128K, 6 GB for SmolLM2-135M in fp32)."""
        wanted = set(self.chunk_keys(chunk_ids, chunk_index, before))
        self.kept = {key: value for key, value in self.kept.items() if key in wanted}

    def __call__(self, chunk_ids, chunk_index, before) -> LowerChunks:
        keys = self.chunk_keys(chunk_ids, chunk_index, before)
        missing = list({key: i for i, key in enumerate(keys) if key not in self.kept}.values())
        if missing:
            picked = torch.tensor(missing, device=chunk_ids.device)
            fresh = self.encoder.lower_chunks(chunk_ids[picked], chunk_index[picked], before[picked])
            for j, i in enumerate(missing):
                vectors = None if fresh.node_vectors is None else fresh.node_vectors[j].clone()
                self.kept[keys[i]] = (fresh.chunks[j].clone(), vectors)
        parts = [self.kept[key] for key in keys]
        vectors = None if parts[0][1] is None else torch.stack([v for _, v in parts])
        return LowerChunks([chunk for chunk, _ in parts], vectors)


# ----------------------------------------------------------------------------------------------------------------
# The base model's own masks (shared with the upper model), and its last lower layer's keys
# ----------------------------------------------------------------------------------------------------------------


def self_attention_masks(text_config, inputs_embeds, attention_mask, past_key_values, position_ids) -> dict:
    """Per layer type, the masks the base model itself would build (causal; sliding window where it has one)."""
    kwargs = dict(
        config=text_config,
        inputs_embeds=inputs_embeds,
        attention_mask=attention_mask,
        **cache_argument(past_key_values),
        position_ids=position_ids,
    )
    masks = {"full_attention": create_causal_mask(**kwargs)}
    layer_types = getattr(text_config, "layer_types", None) or []
    if "sliding_attention" in layer_types or getattr(text_config, "sliding_window", None):
        masks["sliding_attention"] = create_sliding_window_causal_mask(**kwargs)
    return masks


def layer_mask(text_config, masks: dict, layer_index: int):
    layer_types = getattr(text_config, "layer_types", None)
    if layer_types:
        return masks[layer_types[layer_index]]
    return masks.get("sliding_attention", masks["full_attention"])  # Mistral: every layer slides if configured


def _rotated_keys_and_values(layer: nn.Module, hidden: torch.Tensor, position_embeddings) -> tuple:
    """(N, T, hidden) -> post-RoPE keys and values (N, Hkv, T, hd), as the layer's own attention computes them."""
    attention = layer.self_attn
    normed = layer.input_layernorm(hidden)
    shape = (*hidden.shape[:-1], -1, attention.head_dim)
    keys = head_states(attention.k_proj, getattr(attention, "k_norm", None), normed, attention.head_dim).transpose(1, 2)
    values = attention.v_proj(normed).view(shape).transpose(1, 2)
    cos, sin = position_embeddings
    keys, _ = apply_rotary_pos_emb(keys, keys, cos, sin)
    return keys, values


# ----------------------------------------------------------------------------------------------------------------
# The encoder
# ----------------------------------------------------------------------------------------------------------------


class ContextEncoder:
    """Chunks -> compressed key/values, with the base model's own embedding, bottom layers, norm and rotary.

    Not an nn.Module: it holds references to modules that `SharedLLMForCausalLM` already owns (the base's decoder
    stack and the adapter's cross-attention), so the model's parameters, state dict and `.to()` see each module
    once, where it belongs. The config is the model's own object: knobs changed on it apply here too.
    """

    def __init__(self, config: SharedLLMConfig, base: PreTrainedModel, cross_attention: nn.ModuleList):
        self.config = config
        self.decoder = base.model  # embed_tokens, layers, norm, rotary_emb
        # "attention" selection scores tokens with the query of one injected layer (`config.scoring_layer`): its
        # cross-attention's (injection "cross"), or its own self-attention's (injection "joint", which reads the
        # context with it). Read from the config at call time: the knob may change after construction.
        self.cross_attention = cross_attention

    def scoring_projections(self, index: int | None = None) -> tuple[nn.Module, nn.Module, nn.Module | None]:
        """(norm, q_proj, per-head query norm or None) that turn a hidden state entering injected layer `index`
        (default: the scoring layer) into that layer's query."""
        index = self.config.scoring_layer if index is None else index
        if self.config.injection == "cross":
            cross = self.cross_attention[index]
            return cross.norm, cross.q_proj, cross.q_norm
        layer = self.decoder.layers[index]
        return layer.input_layernorm, layer.self_attn.q_proj, getattr(layer.self_attn, "q_norm", None)

    def encode(self, input_ids, start, n_chunks, first_chunk_index, query, lower=None, previous=None) -> EncodedContext:
        """Encode the first n_chunks[b] whole chunks of row b's real tokens (which begin at start[b]); chunk j of
        row b has chunk index first_chunk_index[b] + j; query (B, hidden), or (B, Q, hidden) for attention
        selection, is each row's tree query (`SharedLLMForCausalLM._query_vectors`). `lower`: see
        `encode_by_chunk`. previous (B, S): the S = chunk_overlap tokens before each row's first chunk (None: the
        row starts there), read by joint injection (`tokens_before`).

        Only real chunks are encoded, `max_chunks_per_pass` at a time so that peak memory does not grow with the
        input. Returns each row's chunks (`EncodedContext`).
        """
        cfg = self.config
        batch, n_max, chunk_size = n_chunks.shape[0], int(n_chunks.max()), cfg.chunk_size
        chunk_ids, _ = gather_tokens(input_ids, start, n_chunks * chunk_size, n_max * chunk_size, left_pad=False)
        chunk_ids = chunk_ids.view(batch, n_max, chunk_size)
        chunk_valid = torch.arange(n_max, device=input_ids.device)[None, :] < n_chunks[:, None]  # (B, n)
        rows, slots = chunk_valid.nonzero(as_tuple=True)  # row-major: each row's chunks in order
        chunk_index = first_chunk_index[rows] + slots
        before = self.tokens_before(chunk_ids.view(batch * n_max, chunk_size), previous, n_max)
        before = before.view(batch, n_max, before.shape[-1])
        if isinstance(lower, LowerChunksMemo):
            lower.start_input(chunk_ids[rows, slots], chunk_index, before[rows, slots])
        if cfg.node_encoding == "chunk":
            encode = lambda ids, index, q, prev: self.encode_by_chunk(ids, index, q, prev, lower)  # noqa: E731
        else:
            encode = lambda ids, index, q, prev: (self.encode_by_node(ids, index, q), None)  # noqa: E731
        chunks = [[] for _ in range(batch)]
        scores = None
        for first in range(0, rows.shape[0], cfg.max_chunks_per_pass):
            part = slice(first, first + cfg.max_chunks_per_pass)
            part_rows, part_slots = rows[part], slots[part]
            part_chunks, part_scores = encode(
                chunk_ids[part_rows, part_slots], chunk_index[part], query[part_rows], before[part_rows, part_slots]
            )
            if part_scores is not None:
                if scores is None:  # padding slots score -inf
                    scores = part_scores.new_full((batch, n_max, *part_scores.shape[1:]), float("-inf"))
                scores[part_rows, part_slots] = part_scores
            for row, chunk in zip(part_rows.tolist(), part_chunks):
                chunks[row].append(chunk)
        return EncodedContext(chunks, n_chunks, cfg.context_tokens_per_chunk, scores)

    # -- node_encoding="chunk": one lower pass per chunk, then the question's selection -------------------------

    def encode_by_chunk(self, chunk_ids, chunk_index, query, before=None, lower=None):
        """One lower pass per whole chunk; node vectors and node key/values are read from that pass.

        `lower(chunk_ids, chunk_index, before) -> LowerChunks` replaces that pass (a context cache hands back
        stored ones). Returns the N chunks' (2M, Hkv, K, hd) keys and values (`select_nodes`), and (N,) chunk scores
        (None unless config.context_chunks asks for them)."""
        cfg = self.config
        lowered = (lower or self.lower_chunks)(chunk_ids, chunk_index, before)
        logits = None
        if cfg.tree_selection == "attention":  # computed once: the tree search and the chunk ranking both read them
            logits = self.selection_logits(query, lowered, chunk_index)
        chunks = self.select_nodes(lowered, query, chunk_index, logits)
        scores = None if cfg.context_chunks is None else chunk_statistics(logits, cfg.selection_score)
        return chunks, scores

    def lower_chunks(self, chunk_ids, chunk_index, before=None, node_vectors: bool | None = None) -> LowerChunks:
        """The question-independent half of `encode_by_chunk`: the lower model over (N, C) chunks, chunk index as
        the rotary offset. Only the node vectors the tree can compare are kept: the ends of nodes of C / 2**(D-1)
        tokens and their multiples (none when D < 2: no level makes a choice). `node_vectors` (default: whether
        this config's selection compares them, i.e. tree_selection="query") asks for them; a context cache always
        does, since it may answer questions under another selection. before (N, S): the tokens before each chunk
        in the text (`tokens_before`), read by joint injection only."""
        cfg = self.config
        n, chunk_size = chunk_ids.shape
        positions = self.chunk_offsets(chunk_index)[:, None] + torch.arange(chunk_size, device=chunk_ids.device)[None, :]
        if cfg.injection == "joint":
            layer0, keys, values = self.run_lower_after(chunk_ids, positions, before)
        else:
            layer0, keys, values = self.run_lower(chunk_ids, positions, cfg.n_injected_layers)
        if node_vectors is None:
            node_vectors = cfg.tree_selection == "query"
        if not node_vectors:
            vectors = None
        elif cfg.tree_depth >= 2:
            shortest = chunk_size // 2 ** (cfg.tree_depth - 1)
            vectors = self.decoder.norm(layer0[:, shortest - 1 :: shortest])
        else:
            vectors = layer0.new_empty(n, 0, layer0.shape[-1])
        return LowerChunks(chunk_views(keys, values), vectors)

    @property
    def chunks_share_positions(self) -> bool:
        """Whether every chunk is encoded at the same positions (`chunk_offsets`), so that a chunk's lower pass does
        not depend on its index: joint injection's."""
        return self.config.injection == "joint"

    def chunk_offsets(self, chunk_index: torch.LongTensor) -> torch.LongTensor:
        """(N,) rotary position of each chunk's first token. Cross injection: the chunk index (the paper's
        chunk-level positions). Joint injection: -C for every chunk, so that all chunks sit just before the decoder
        window (positions 0..) within the base's trained range at any input length, as InfLLM places its blocks."""
        if self.chunks_share_positions:
            return torch.full_like(chunk_index, -self.config.chunk_size)
        return chunk_index

    def run_lower_after(self, chunk_ids, positions, before):
        """Joint injection's lower pass: each (N, C) chunk read after its prefix `before` (N, S) (default
        `tokens_before`), whose tokens then leave the output. The prefix takes the attention sink's part and gives
        the chunk's first tokens their left context; a chunk encoded alone makes its own first token the sink, and
        that key soaks up the window's attention (joint-injection probe, passkey at 8K: alone 0/4, after the one
        token before it 8/10, after the 64 before it 10/10). Prefixes are left-padded with -1 (a text's first chunk
        has only BOS before it); chunks with prefixes of equal length are run together, without padding."""
        if before is None:
            before = self.tokens_before(chunk_ids, None)
        prefix_lengths = (before >= 0).sum(1)  # (N,)
        lengths = prefix_lengths.unique().tolist() or [0]
        prefix = lambda rows, n_prefix: before[rows, before.shape[1] - n_prefix :]  # noqa: E731
        if len(lengths) == 1:
            return self._run_lower_with_prefix(chunk_ids, positions, prefix(slice(None), lengths[0]))
        layer0 = keys = values = None
        for n_prefix in lengths:
            rows = (prefix_lengths == n_prefix).nonzero()[:, 0]
            part0, part_keys, part_values = self._run_lower_with_prefix(
                chunk_ids[rows], positions[rows], prefix(rows, n_prefix)
            )
            if layer0 is None:
                allocate = lambda t: t.new_empty(chunk_ids.shape[0], *t.shape[1:])  # noqa: E731
                layer0, keys, values = allocate(part0), [allocate(k) for k in part_keys], [allocate(v) for v in part_values]
            for stored, new in zip([layer0, *keys, *values], [part0, *part_keys, *part_values]):
                stored[rows] = new
        return layer0, keys, values

    def _run_lower_with_prefix(self, chunk_ids, positions, prefix):
        """`run_lower` over (N, P + C) prefix + chunk, the prefix at the P positions before the chunk's; the output
        keeps the chunk's C tokens only."""
        n_prefix = prefix.shape[1]
        prefix_positions = positions[:, :1] - torch.arange(n_prefix, 0, -1, device=positions.device)
        layer0, keys, values = self.run_lower(
            torch.cat([prefix, chunk_ids], dim=1), torch.cat([prefix_positions, positions], dim=1),
            self.config.n_injected_layers,
        )
        return layer0[:, n_prefix:], [k[:, :, n_prefix:] for k in keys], [v[:, :, n_prefix:] for v in values]

    def sink(self) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        """Joint injection's attention sink: per layer of the base, all of them, (1, Hkv, 1, hd) keys and values of
        the text's start token read alone, just before the chunks (position -C - 1, where a text's first chunk has
        it). The decoder window reads it in every layer, with the chunks in the injected ones. Why: a window that
        sees the context through its own attention has no sink left (its first token has context before it, the
        chunks' prefixes are left out), and without one the base's attention goes astray: book perplexity at 2K
        rose from 3.21 nats (full attention) to 3.79; with this token, 3.21. The layers above M need it as much:
        their window's first token no longer grew a sink's state below them (results/experiments/frontier/)."""
        start = torch.tensor([[self.text_start_token()]], device=self.decoder.embed_tokens.weight.device)
        _, keys, values = self.run_lower(start, torch.full_like(start, -self.config.chunk_size - 1),
                                         self.config.text_config.num_hidden_layers)
        return keys, values

    def text_start_token(self) -> int:
        """What joint injection reads before a text's first chunk: the base's BOS (else EOS, else 0)."""
        text_config = self.config.text_config
        for token_id in (text_config.bos_token_id, text_config.eos_token_id, 0):
            token_id = (token_id[0] if token_id else None) if isinstance(token_id, list) else token_id
            if token_id is not None:
                return int(token_id)

    def text_start_prefix(self, rows: int, device) -> torch.LongTensor:
        """(rows, S) what joint injection reads before a text's first chunk: BOS, left-padded with -1."""
        prefix = torch.full((rows, self.config.overlap_length), -1, dtype=torch.long, device=device)
        prefix[:, -1:] = self.text_start_token()
        return prefix

    def tokens_before(self, chunk_ids: torch.LongTensor, previous, chunks_per_row: int | None = None) -> torch.LongTensor:
        """(N, C) consecutive chunks (rows of `chunks_per_row`, default all N in one row) -> (N, S) the S =
        chunk_overlap tokens before each in the text: the previous chunk's last S tokens; for a row's first chunk
        `previous` ((rows, S), that row's tokens before it), or where that is None `text_start_prefix`."""
        n, chunk_size = chunk_ids.shape
        overlap = self.config.overlap_length
        if n == 0 or overlap == 0:
            return chunk_ids.new_empty(n, overlap)
        tails = chunk_ids[:, chunk_size - overlap :].reshape(-1, chunks_per_row or n, overlap)  # (rows, per_row, S)
        if previous is None:
            previous = self.text_start_prefix(tails.shape[0], chunk_ids.device)
        return torch.cat([previous[:, None].to(tails), tails[:, :-1]], dim=1).reshape(n, overlap)

    def select_nodes(self, lowered: LowerChunks, query, chunk_index, logits=None):
        """The question-dependent half: search each chunk's tree with its row's query (N, hidden) (or rank its
        leaves, config.selected_leaves), then compress the kept nodes (chunk_index (N,) is each chunk's rotary
        offset). logits: `attention_logits` of this query where the caller has them (computed here otherwise).
        Returns the N chunks' (2M, Hkv, K, hd) keys then values; a chunk kept whole is the lowered tensor itself."""
        cfg = self.config
        n, chunk_size = len(lowered.chunks), cfg.chunk_size
        table = lowered.node_vectors

        def node_vectors(starts, length):  # (N, 2) -> (N, 2, hidden): the stored vector at each node's last token
            slot = (starts + length) // (chunk_size // table.shape[1]) - 1
            return table.gather(1, slot[:, :, None].expand(-1, -1, table.shape[-1]))

        token_scores, several_scores = None, None
        if cfg.tree_selection == "attention":
            if logits is None:
                logits = self.selection_logits(query, lowered, chunk_index)
            heads = logits.shape[1] // cfg.n_query_vectors
            token_scores = attention_token_scores(logits[:, -heads:], cfg.selection_score)  # the query token's
            if cfg.query_tokens > 1:  # the best of the Q tokens', which add their best leaf
                several_scores = attention_token_scores(logits[:, -cfg.query_tokens * heads :], cfg.selection_score)
            half_scores = attention_half_scores(token_scores)
        elif cfg.tree_selection == "query":
            half_scores = cosine_half_scores(node_vectors, query)
        else:
            half_scores = None
        device = lowered.chunks[0].device
        if cfg.selected_leaves is None:
            kept = [(start, length, cfg.node_budget(length))
                    for start, length in search_tree(half_scores, n, chunk_size, cfg.tree_depth, device)]
        else:
            best, others = top_leaves(token_scores, n, chunk_size, cfg.leaf_length, cfg.selected_leaves, device,
                                      several_scores, cfg.leaf_lookback)
            kept = [(best, cfg.leaf_length, cfg.node_budget(cfg.leaf_length)),
                    (others, cfg.leaf_length, cfg.tokens_per_node)]
        if len(kept) == 1 and kept[0][1] == kept[0][2] == chunk_size:  # every token: no copy of what `lower` holds
            return lowered.chunks

        def compress(chunk, i):  # chunk i's (2M, Hkv, C, hd) -> (2M, Hkv, K, hd): its kept nodes, in every layer
            return torch.cat([compress_node(chunk, start.view(n, -1)[i].expand(chunk.shape[0], -1), length, budget,
                                            cfg.node_compression) for start, length, budget in kept], dim=2)

        # chunk by chunk: stacking the chunks first would copy the whole lower pass once more
        return [compress(chunk, i) for i, chunk in enumerate(lowered.chunks)]

    def selection_logits(self, query, lowered: LowerChunks, chunk_index) -> torch.Tensor:
        """(N, V * H, C) what attention selection scores with, from the rows' (N, V, hidden) query states
        (`SharedLLMForCausalLM._query_vectors`, V = config.n_query_vectors) and the lower pass's keys (`LowerChunks`):
        the Q query tokens' logits at the scoring layer, preceded, with a separate query_layer, by the same tokens'
        logits at that layer (they rank m more chunks); the query token's heads always last."""
        cfg = self.config
        if cfg.n_query_vectors == cfg.query_tokens:
            return self.attention_logits(query, lowered.layer_keys(cfg.scoring_layer), chunk_index)
        n, layer = cfg.query_tokens, cfg.query_scoring_layer
        return torch.cat([self.attention_logits(query[:, :n], lowered.layer_keys(layer), chunk_index, layer),
                          self.attention_logits(query[:, n:], lowered.layer_keys(cfg.scoring_layer), chunk_index)],
                         dim=1)

    @torch.no_grad()
    def attention_logits(self, query_hidden, keys, chunk_index, layer: int | None = None) -> torch.Tensor:
        """(N, Q * H, C) attention logits of an injected layer's queries (default the scoring layer's; from the Q
        query tokens' hidden states entering that layer, (N, Q, hidden), or (N, hidden) for one) against each chunk
        token's key of that layer, query-major (`tree.attention_logits`). Every query is rotated to sit just after
        the chunk it scores, so a chunk's selection depends on its own tokens only, never on how many chunks precede
        the query (forward and cached generation then select alike)."""
        n, n_kv, chunk_size, head_dim = keys.shape
        norm, q_proj, q_norm = self.scoring_projections(layer)
        query = head_states(q_proj, q_norm, norm(query_hidden), head_dim).view(n, -1, 1, head_dim)  # (N, Q * H, 1, hd)
        cos, sin = self.decoder.rotary_emb(query, (self.chunk_offsets(chunk_index) + chunk_size)[:, None])
        query, _ = apply_rotary_pos_emb(query, query, cos, sin)
        n_queries = 1 if query_hidden.dim() == 2 else query_hidden.shape[1]
        return attention_logits(query.view(n, n_queries, -1, head_dim), keys)

    # -- node_encoding="node": the reference ---------------------------------------------------------------------

    def encode_by_node(self, chunk_ids, chunk_index, query):
        """The reference encoding: every candidate and kept node is encoded alone, with local positions. Returns the
        N chunks' (2M, Hkv, K, hd) keys then values."""
        cfg = self.config
        n, chunk_size = chunk_ids.shape
        arange = lambda length: torch.arange(length, device=chunk_ids.device)  # noqa: E731

        def node_tokens(starts, length):  # starts (N, S) -> ids (N*S, length), positions (N*S, length)
            ids = chunk_ids.gather(1, (starts[:, :, None] + arange(length)).reshape(n, -1)).reshape(-1, length)
            positions = (chunk_index[:, None, None] + arange(length)).expand(n, starts.shape[1], length)
            return ids, positions.reshape(-1, length)

        def node_vectors(starts, length):  # both halves through layer 0 in one call
            layer0, _, _ = self.run_lower(*node_tokens(starts, length), n_layers=1)
            return self.decoder.norm(layer0[:, -1]).view(n, 2, -1)

        half_scores = cosine_half_scores(node_vectors, query) if cfg.tree_selection == "query" else None
        kept = search_tree(half_scores, n, chunk_size, cfg.tree_depth, chunk_ids.device)
        keys, values = [[] for _ in range(cfg.n_injected_layers)], [[] for _ in range(cfg.n_injected_layers)]
        for start, length in kept:  # one batched call per kept level
            _, node_keys, node_values = self.run_lower(*node_tokens(start[:, None], length), cfg.n_injected_layers)
            zero = torch.zeros_like(start)
            for i in range(cfg.n_injected_layers):
                budget = cfg.node_budget(length)
                keys[i].append(compress_node(node_keys[i], zero, length, budget, cfg.node_compression))
                values[i].append(compress_node(node_values[i], zero, length, budget, cfg.node_compression))
        return chunk_views([torch.cat(k, dim=2) for k in keys], [torch.cat(v, dim=2) for v in values])

    # -- the base model's bottom layers ---------------------------------------------------------------------------

    @torch.no_grad()  # the lower model is the frozen base: its keys/values and node vectors take no gradient
    def run_lower(self, input_ids, positions, n_layers):
        """Embedding + bottom `n_layers` layers over unpadded sequences.

        input_ids, positions: (N, T). Returns layer-0 output (N, T, hidden) and per-layer post-RoPE keys and values
        (N, Hkv, T, hd).
        """
        text_config = self.config.text_config
        hidden = self.decoder.embed_tokens(input_ids)
        position_embeddings = self.decoder.rotary_emb(hidden, positions)
        masks = self_attention_masks(text_config, hidden, None, None, None)
        recorder = DynamicCache()  # collects each layer's keys/values as the attention computes them
        layer0 = None
        # only the keys/values of the last layer are ever read: skip its attention output and MLP (not layer 0,
        # whose output gives the node vectors); its keys are k_proj(input_layernorm(h)) then RoPE, as in every base
        # loading.check_supported accepts
        full_layers = max(n_layers - 1, 1)
        for index, layer in enumerate(self.decoder.layers[:full_layers]):
            # the undecorated forward: with gradient checkpointing on, GradientCheckpointingLayer's wrapper drops the
            # recorder in training mode; this pass is frozen and gradient-free, so there is nothing to checkpoint
            forward = getattr(type(layer).forward, "__wrapped__", type(layer).forward)
            hidden = forward(
                layer,
                hidden,
                attention_mask=layer_mask(text_config, masks, index),
                position_embeddings=position_embeddings,
                position_ids=positions,
                **cache_argument(recorder),
                use_cache=True,
            )
            layer0 = hidden if index == 0 else layer0
        if full_layers < n_layers:
            last = self.decoder.layers[n_layers - 1]
            recorder.update(*_rotated_keys_and_values(last, hidden, position_embeddings), n_layers - 1)
        keys = [recorder.layers[i].keys for i in range(n_layers)]
        values = [recorder.layers[i].values for i in range(n_layers)]
        return layer0, keys, values


def top_chunks(context: EncodedContext, k: int, recent: int = 0, query_tokens: int = 1,
               extra: int = 0, query_vectors: int | None = None) -> EncodedContext:
    """Each row's k best-scoring real chunks, its `recent` last chunks always among them, and with query_tokens Q > 1
    the `extra` best others under the best of the Q queries at the scoring layer and, where the scores hold V = 2Q
    query states (query_vectors = config.n_query_vectors: the Q tokens' at query_layer first), the `extra` best of
    the rest under the Q queries at query_layer (`tree.union_order`), in their original order: r chunks instead
    of n, r = config.chunks_read (k + extra, + extra more with query_layer), so that what reads them costs r
    chunks, not n (picked, not copied). A row with fewer real chunks keeps them all (they
    come first: real chunks are the row's first slots and score above padding's -inf)."""
    scores, vectors = context.chunk_scores, query_vectors or query_tokens  # scores (B, n, V * H, ...)
    n, heads, several = scores.shape[1], scores.shape[2] // vectors, query_tokens * scores.shape[2] // vectors
    slot = torch.arange(n, device=scores.device)[None, :]
    real = slot < context.n_chunks[:, None]
    last = real & (slot >= (context.n_chunks - recent)[:, None])  # (B, n) the row's `recent` last real chunks
    rankings = [(chunk_ranking_scores(scores[:, :, -heads:], real).masked_fill(last, float("inf")), k)]
    if query_tokens > 1:  # the Q tokens at the scoring layer (the last Q * H columns), then at query_layer (the first)
        rankings.append((chunk_ranking_scores(scores[:, :, -several:], real), extra))
    if vectors > query_tokens:
        rankings.append((chunk_ranking_scores(scores[:, :, :several], real), extra))
    k_read = sum(count for _, count in rankings)
    if n <= k_read:
        return context
    best = union_order(rankings)[:, :k_read].sort(dim=1).values  # (B, k_read)
    chunks = [[row[j] for j in picks if j < len(row)] for row, picks in zip(context.chunks, best.tolist())]
    return EncodedContext(chunks, context.n_chunks.clamp(max=k_read), context.per_chunk,
                          gather_slots(context.chunk_scores, best))


def spaced_positions(keys: list[torch.Tensor], sink, n_chunks: torch.LongTensor, per_chunk: int, spacing: int,
                     rotary_emb: nn.Module) -> tuple[list[torch.Tensor], tuple]:
    """`chunk_spacing` g > 0: the chunks read, each encoded at -C..-1 (stacked), spread out in their order (they are
    gathered in text order): chunk j of a row's n moved by (j - n + 1)g, the last one where it was, and the sink
    with the first, just before it (in every layer: one place for one token). g = C lays them side by side. Keys are
    post-RoPE, so each moves by one more rotation.

    keys: per injected layer (B, Hkv, r * K, hd), K = per_chunk; sink: per layer of the base (keys, values), keys
    (1, Hkv, 1, hd). Returns the keys moved and the sink with its keys moved per row, (B, Hkv, 1, hd)."""
    reference = keys[0]
    chunk = torch.arange(reference.shape[2], device=reference.device) // per_chunk  # (r * K,) each slot's chunk
    # (B, r * K): padding slots (chunk >= n_b) stay where they are; they are masked
    shift = ((chunk[None, :] - n_chunks[:, None] + 1) * spacing).clamp(max=0)
    sink_shift = ((1 - n_chunks.clamp(min=1)) * spacing)[:, None]  # (B, 1)
    sink_keys, sink_values = sink
    batch = reference.shape[0]
    moved = [rotate(k, shift, rotary_emb) for k in keys]
    moved_sink = [rotate(k.expand(batch, -1, -1, -1), sink_shift, rotary_emb) for k in sink_keys]
    return moved, (moved_sink, sink_values)


def gather_slots(scores: torch.Tensor, index: torch.LongTensor) -> torch.Tensor:
    """scores (B, n, ...) at chunk slots index (B, m) -> (B, m, ...)."""
    return scores.gather(1, index.view(*index.shape, *[1] * (scores.dim() - 2)).expand(-1, -1, *scores.shape[2:]))


def append_chunks(context: EncodedContext, new: EncodedContext) -> EncodedContext:
    """Append each row's new chunks after its existing ones (rows hold different numbers of chunks)."""
    if not any(context.chunks):
        return new
    chunks = [old + fresh for old, fresh in zip(context.chunks, new.chunks)]
    n_total = context.n_chunks + new.n_chunks
    scores = None
    if context.chunk_scores is not None:  # (B, n, ...): each row's old scores, then its new ones, then -inf
        old, fresh = context.chunk_scores, new.chunk_scores
        scores = old.new_full((len(chunks), int(n_total.max()), *old.shape[2:]), float("-inf"))
        for b, (n_old, n_new) in enumerate(zip(context.n_chunks.tolist(), new.n_chunks.tolist())):
            scores[b, :n_old] = old[b, :n_old]
            scores[b, n_old : n_old + n_new] = fresh[b, :n_new]
    return EncodedContext(chunks, n_total, context.per_chunk, scores)
