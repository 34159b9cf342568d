"""InfLLM (Xiao et al. 2024): training-free retrieval of context blocks from the KV cache, on transformers 5's Cache API.

Every past token stays in the cache. A chunk of queries attends to

    n_sink first tokens + the topk memory blocks most relevant to the chunk + the local window + the chunk (causal)

Memory is everything between the sinks and the local window, cut into blocks of `block_size` tokens in text order.
When a block leaves the local window, its `n_rep` representative tokens are those that the chunk's queries (the
tokens right after it) attend to most: the largest q.k, summed over heads and queries. A block's relevance to a
later chunk is the sum of that chunk's q.k over the block's representative keys; the `topk` most relevant blocks are
attended, one choice per layer shared by all heads (as InfLLM does), made again for every chunk and decode step.

Positions: the attended tokens are renumbered contiguously (sinks, retrieved blocks in text order, local window,
chunk), as our StreamingLLM does, so no distance exceeds the number of attended tokens and all stay inside the
base's trained window (InfLLM itself gives every memory token one distance; both keep distances trained). Keys are
cached rotated at their text positions and re-rotated when attended (RoPE rotations compose). Representative keys
are stored un-rotated and the queries are rotated to a fixed distance `local_window` for scoring, so a block's
relevance does not depend on how far back it lies.

How it plugs into a transformers model: `InfLLMCache` is a Cache of `GrowingLayer`s (DynamicLayers: all keys and
values, as transformers stores them, appended without re-copying) plus each layer's representative keys;
`infllm_attention` is registered as an attention implementation, and `methods.InfLLM` switches the base's
`config._attn_implementation` to it for the duration of a forward, handing it the cache through the forward's
keyword arguments (`infllm_cache=`).
"""

import contextlib
import functools

import torch
import torch.nn.functional as F
from transformers import AttentionInterface
from transformers.cache_utils import Cache, DynamicLayer
from transformers.masking_utils import AttentionMaskInterface

from sharedllm.rope import rotate

ATTENTION_NAME = "sharedllm_infllm"


def group_heads(query: torch.Tensor, n_kv_heads: int) -> torch.Tensor:
    """(B, H, n, D) -> (B, H_kv, H / H_kv, n, D): the query heads that share each key/value head (GQA)."""
    b, h, n, d = query.shape
    return query.view(b, n_kv_heads, h // n_kv_heads, n, d)


def select_blocks(query: torch.Tensor, rep_keys: torch.Tensor, n_rep: int, topk: int) -> torch.Tensor:
    """Indices (B, k) in increasing order of the topk blocks most relevant to the chunk's queries.

    query: (B, H, n, D), rotated to the scoring distance; rep_keys: (B, H_kv, n_blocks * n_rep, D), un-rotated.
    Relevance of a block = sum over heads, queries and representative keys of q.k; sums commute with the dot
    product, so the queries of a key/value head are summed first.
    """
    summed = group_heads(query, rep_keys.shape[1]).sum(dim=(2, 3))  # (B, H_kv, D)
    scores = torch.einsum("bkd,bkmd->bm", summed.float(), rep_keys.float())  # (B, n_blocks * n_rep)
    relevance = scores.view(scores.shape[0], -1, n_rep).sum(-1)  # (B, n_blocks)
    k = min(topk, relevance.shape[1])
    return relevance.topk(k, dim=-1).indices.sort(dim=-1).values


class GrowingLayer(DynamicLayer):
    """A DynamicLayer that appends into preallocated buffers instead of `torch.cat`-ing the whole cache per chunk,
    which copies O(S) every chunk: O(S^2 / chunk) in all, terabytes at 128K. The buffers start at `reserve` tokens
    and double when full; `keys` / `values` are views of the filled part, so the rest of DynamicLayer is unchanged."""

    def __init__(self, reserve: int = 0):
        super().__init__()
        self.reserve = reserve

    def update(self, key_states: torch.Tensor, value_states: torch.Tensor, *args, **kwargs):
        if not self.is_initialized:
            self.lazy_initialization(key_states, value_states)
            self._buffers = None
        length, n = self.get_seq_length(), key_states.shape[-2]
        if self._buffers is None or length + n > self._buffers[0].shape[-2]:
            capacity = max(self.reserve, 2 * (length + n))
            grown = tuple(s.new_empty((*s.shape[:-2], capacity, s.shape[-1])) for s in (key_states, value_states))
            if length:
                grown[0][..., :length, :], grown[1][..., :length, :] = self.keys, self.values
            self._buffers = grown
        self._buffers[0][..., length : length + n, :] = key_states
        self._buffers[1][..., length : length + n, :] = value_states
        self.keys, self.values = (b[..., : length + n, :] for b in self._buffers)
        return self.keys, self.values


class InfLLMCache(Cache):
    """All keys and values (rotated at their text positions) plus, per layer, the closed blocks' representative keys.

    `reserve`: tokens to preallocate per layer (the input length when known), so nothing is copied as it grows.
    """

    def __init__(self, rotary_emb: torch.nn.Module, n_sink: int, local_window: int, block_size: int, n_rep: int,
                 topk: int, reserve: int = 0):
        super().__init__(layer_class_to_replicate=functools.partial(GrowingLayer, reserve))
        self.rotary_emb = rotary_emb
        self.n_sink, self.local_window, self.block_size = n_sink, local_window, block_size
        self.n_rep, self.topk = n_rep, topk
        self.rep_keys: dict[int, torch.Tensor] = {}  # layer -> (B, H_kv, n_closed_blocks * n_rep, D), un-rotated
        self.selected: dict[int, torch.Tensor] = {}  # layer -> (B, k) blocks the last chunk attended (inspection)

    def memory_end(self, first_new: int) -> int:
        """End of the memory blocks for a chunk starting at text position `first_new`: the local window then holds
        the last >= local_window (and < local_window + block_size) tokens before the chunk."""
        local_start = first_new - self.local_window
        return self.n_sink + max(0, (local_start - self.n_sink) // self.block_size) * self.block_size

    def close_blocks(self, layer: int, query: torch.Tensor, keys: torch.Tensor, memory_end: int) -> None:
        """Pick the representative keys of the blocks that left the local window before this chunk.

        query: (B, H, n, D) of the chunk; keys: (B, H_kv, S, D), all cached keys, both at their text positions (the
        distances between them are within the local window plus the chunk: trained distances).
        """
        bs, n_rep = self.block_size, self.n_rep
        done = self.rep_keys[layer].shape[2] // n_rep if layer in self.rep_keys else 0
        n_blocks = (memory_end - self.n_sink) // bs
        if n_blocks <= done:
            return
        first = self.n_sink + done * bs
        block_keys = keys[:, :, first:memory_end]  # (B, H_kv, new_blocks * bs, D)
        summed = group_heads(query, keys.shape[1]).sum(dim=(2, 3))  # (B, H_kv, D)
        received = torch.einsum("bkd,bksd->bs", summed.float(), block_keys.float())  # attention each token received
        best = received.view(received.shape[0], n_blocks - done, bs).topk(n_rep, dim=-1).indices  # (B, new, n_rep)
        offsets = first + bs * torch.arange(n_blocks - done, device=keys.device)[:, None]  # (new, 1)
        positions = (best + offsets).flatten(1)  # (B, new * n_rep) text positions of the representatives
        index = positions[:, None, :, None].expand(-1, keys.shape[1], -1, keys.shape[-1])
        reps = rotate(keys.gather(2, index), -positions, self.rotary_emb)  # un-rotated: angle 0
        previous = self.rep_keys.get(layer)
        self.rep_keys[layer] = reps if previous is None else torch.cat([previous, reps], dim=2)

    def attended(self, layer: int, query: torch.Tensor, keys: torch.Tensor, values: torch.Tensor):
        """Keys and values (B, H_kv, S', D) the chunk attends to: sinks, retrieved blocks, local window and chunk,
        renumbered contiguously (re-rotated so that the local window and the chunk keep their positions)."""
        n, total = query.shape[2], keys.shape[2]
        memory_end = self.memory_end(total - n)
        if memory_end == self.n_sink:  # no memory yet: every token is a sink or in the local window
            return keys, values
        self.close_blocks(layer, query, keys, memory_end)
        first_new, bs = total - n, self.block_size
        # score with every query at distance local_window from angle 0 (its text position is first_new + i)
        to_fixed = self.local_window - torch.arange(first_new, total, device=query.device)[None]  # (1, n)
        blocks = select_blocks(rotate(query, to_fixed, self.rotary_emb), self.rep_keys[layer], self.n_rep, self.topk)
        self.selected[layer] = blocks
        k = blocks.shape[1]
        token = self.n_sink + (blocks[..., None] * bs + torch.arange(bs, device=keys.device)).flatten(1)  # (B, k * bs)
        # the j-th retrieved block moves to [memory_end - (k - j) * bs, ...): right before the local window
        target = memory_end - k * bs + torch.arange(k * bs, device=keys.device)[None]  # (1, k * bs)
        index = token[:, None, :, None].expand(-1, keys.shape[1], -1, keys.shape[-1])
        block_keys = rotate(keys.gather(2, index), target - token, self.rotary_emb)
        sink_shift = torch.full((1, self.n_sink), memory_end - k * bs - self.n_sink, device=keys.device)
        sink_keys = rotate(keys[:, :, : self.n_sink], sink_shift, self.rotary_emb)
        return (torch.cat([sink_keys, block_keys, keys[:, :, memory_end:]], dim=2),
                torch.cat([values[:, :, : self.n_sink], values.gather(2, index), values[:, :, memory_end:]], dim=2))


def infllm_attention(module, query, key, value, attention_mask, scaling=None, dropout=0.0, infllm_cache=None, **kwargs):
    """Attention implementation: query (B, H, n, D) over what `infllm_cache` selects from key / value (B, H_kv, S, D),
    the whole cache as its `update` returned it. The chunk is causal within itself and sees every selected past key."""
    if infllm_cache is None:
        raise ValueError(f"{ATTENTION_NAME} attention needs the InfLLMCache as the forward's `infllm_cache=` argument")
    keys, values = infllm_cache.attended(module.layer_idx, query, key, value)
    n, past = query.shape[2], keys.shape[2] - query.shape[2]
    mask = torch.ones(n, keys.shape[2], dtype=torch.bool, device=query.device).tril(diagonal=past)  # (n, S')
    out = F.scaled_dot_product_attention(query, keys, values, attn_mask=mask, scale=scaling, enable_gqa=True)
    return out.transpose(1, 2).contiguous(), None  # (B, n, H, D), as the attention interface returns it


def _no_mask(*args, **kwargs):
    return None  # infllm_attention builds its own mask over the keys it selects


AttentionInterface.register(ATTENTION_NAME, infllm_attention)
AttentionMaskInterface.register(ATTENTION_NAME, _no_mask)


@contextlib.contextmanager
def infllm_attention_on(config):
    """Route the model's attention through `infllm_attention` for the duration of the block (not thread-safe)."""
    original = config._attn_implementation
    config._attn_implementation = ATTENTION_NAME
    try:
        yield
    finally:
        config._attn_implementation = original
