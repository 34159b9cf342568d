"""The query-aware context tree, vectorised over all chunks of a batch.

A chunk of C tokens is the root. At each level above the last, it is split into contiguous halves; the half
that scores higher against the query is expanded (paper: cosine of node vectors; or the injected layer's own
attention logits, as Quest / InfLLM score blocks) (split again) and the other half is kept at this
level's granularity. At the last level both halves are kept. Pairing is always within one chunk: the chunk
axis N is a batch axis here and halves of different chunks never meet. Per chunk the kept nodes are one of
C/2, one of C/4, ..., and two of C/2**D: they tile the chunk. Each kept node becomes P key/value positions.

`top_leaves` is the flat alternative (config.selected_leaves): every leaf of C/2**D tokens is ranked at once by its
best token, the n best keep the leaf budget and every other leaf keeps P positions, as Quest and InfLLM pick
blocks. The greedy descent commits at the root to the half holding the single best token, so a needle whose leaf
ranks second in its chunk is compressed away (docs/method.md, "The context tree", item 8).

Shapes: N = chunks (all rows of the batch flattened), Hkv = key/value heads, T = tokens, hd = head dim.
"""

from collections.abc import Callable

import torch
import torch.nn.functional as F

# half_scores(starts (N, 2), length) -> (N, 2): how strongly each half of every chunk matches the query at one level.
HalfScoreFn = Callable[[torch.LongTensor, int], torch.Tensor]


def cosine_half_scores(node_vectors: Callable[[torch.LongTensor, int], torch.Tensor], query: torch.Tensor) -> HalfScoreFn:
    """The paper's score: cosine between each half's node vector (N, 2, hidden) and the query vector (N, hidden)."""
    return lambda starts, length: F.cosine_similarity(  # noqa: E731
        node_vectors(starts, length).float(), query.float()[:, None, :], dim=-1
    )


def attention_half_scores(token_scores: torch.Tensor) -> HalfScoreFn:
    """Score a half by its best token: max over the half of (N, C) per-token attention scores (Quest / InfLLM style)."""

    def scores(starts: torch.LongTensor, length: int) -> torch.Tensor:
        n, chunk_size = token_scores.shape
        per_node = token_scores.view(n, chunk_size // length, length).amax(dim=-1)  # (N, C / length)
        return per_node.gather(1, starts // length)

    return scores


def attention_logits(query: torch.Tensor, keys: torch.Tensor) -> torch.Tensor:
    """query (N, H, hd), or (N, Q, H, hd) for Q query tokens, and post-RoPE keys (N, Hkv, C, hd) -> (N, Q * H, C):
    each query head's logit for every token (against its GQA group's key), scaled by 1/sqrt(hd) as the layer's own
    softmax sees it. Several queries fold into the head axis, query-major (head q * H + h): every score below takes
    the best (query, head) as it takes the best head, and the last query's heads are the last H."""
    n, n_heads, head_dim = query.shape[0], query.shape[-2], query.shape[-1]
    n_kv = keys.shape[1]
    grouped = query.reshape(n, -1, n_kv, n_heads // n_kv, head_dim)  # (N, Q, Hkv, G, hd): GQA groups
    logits = torch.einsum("nqkgd,nktd->nqkgt", grouped.float(), keys.float()) * head_dim**-0.5
    return logits.reshape(n, -1, keys.shape[2])


def attention_token_scores(logits: torch.Tensor, score: str) -> torch.Tensor:
    """(N, H, C) logits -> (N, C) token scores. logit: the best head's logit (Quest / InfLLM). probability: the best
    head's attention probability over the chunk's tokens, so that a head with large logits everywhere does not
    outvote one that looks a single token up."""
    if score == "logit":
        return logits.amax(dim=1)
    if score == "probability":
        return logits.softmax(dim=-1).amax(dim=1)
    raise ValueError(f"unknown selection score {score!r} (logit or probability)")


def chunk_statistics(logits: torch.Tensor, score: str) -> torch.Tensor:
    """(N, H, C) logits -> what ranks a chunk against the others (`chunk_ranking_scores`), per head: logit: (N, H)
    each head's best token logit. probability: (N, H, 2) each head's best logit and log-sum-exp over the chunk, from
    which each head's attention is normalised over all of a row's chunks at ranking time."""
    if score == "logit":
        return logits.amax(dim=-1)
    if score == "probability":
        return torch.stack([logits.amax(dim=-1), logits.logsumexp(dim=-1)], dim=-1)
    raise ValueError(f"unknown selection score {score!r} (logit or probability)")


def chunk_ranking_scores(statistics: torch.Tensor, real: torch.Tensor) -> torch.Tensor:
    """(B, n, H) or (B, n, H, 2) `chunk_statistics` of a row's chunk slots and real (B, n) -> (B, n) scores, -inf off
    the real chunks. logit: the chunk's best token logit under the best head. probability: each chunk's best token
    probability under the best head, each head's softmax taken over every token of the row's real chunks (one
    head's normaliser sums its chunks' log-sum-exps)."""
    if statistics.dim() == 3:
        return statistics.amax(dim=-1).masked_fill(~real, float("-inf"))
    best, log_total = statistics.unbind(dim=-1)  # (B, n, H) each
    row_log_total = log_total.masked_fill(~real[..., None], float("-inf")).logsumexp(dim=1, keepdim=True)  # (B, 1, H)
    return (best - row_log_total).amax(dim=-1).masked_fill(~real, float("-inf"))


def union_order(rankings: list[tuple[torch.Tensor, int]]) -> torch.LongTensor:
    """Several scorings (R, L) of the same L items, each with a count n -> (R, L) an order whose first items are
    the n_1 best under the first scoring, then the n_2 best among the others under the second, and so on; every
    group in the first scoring's order (config.query_tokens: first the query token's scores, then the best of
    several query tokens' at the scoring layer and, with query_layer, at that layer). With one scoring, or counts
    of 0 after the first, it is the first's ranking."""
    (first, n_first), later = rankings[0], rankings[1:]
    rank_first = first.argsort(dim=-1, descending=True, stable=True).argsort(dim=-1)  # (R, L) each item's rank
    chosen = rank_first < n_first
    for scores, n in later:
        others = scores.masked_fill(chosen, float("-inf"))
        chosen = chosen | (others.argsort(dim=-1, descending=True, stable=True).argsort(dim=-1) < n)
    order_key = rank_first - chosen.long() * first.shape[-1]  # the chosen items first, each group in first's order
    return order_key.argsort(dim=-1)


def search_tree(
    half_scores: HalfScoreFn | None, n_chunks: int, chunk_size: int, depth: int, device: torch.device
) -> list[tuple[torch.LongTensor, int]]:
    """Walk the tree of every chunk at once. Returns the kept nodes as (start (N,), length) pairs, D+1 of them.

    `half_scores` is only called for the levels where a choice is made (level < depth): the higher-scoring half is
    expanded. None always expands the most recent half (the "recent" ablation, no query awareness).
    """
    parent_start = torch.zeros(n_chunks, dtype=torch.long, device=device)
    if depth == 0:
        return [(parent_start, chunk_size)]
    kept = []
    length = chunk_size
    for level in range(1, depth + 1):
        length //= 2
        starts = torch.stack([parent_start, parent_start + length], dim=1)  # (N, 2): left, right half
        if level == depth:
            kept += [(starts[:, 0], length), (starts[:, 1], length)]
            break
        if half_scores is None:
            expand_right = torch.ones(n_chunks, dtype=torch.bool, device=device)
        else:
            score = half_scores(starts, length)  # (N, 2)
            expand_right = score[:, 1] > score[:, 0]
        kept.append((torch.where(expand_right, starts[:, 0], starts[:, 1]), length))
        parent_start = torch.where(expand_right, starts[:, 1], starts[:, 0])
    return kept


def top_leaves(token_scores: torch.Tensor | None, n_chunks: int, chunk_size: int, leaf_length: int, n_selected: int,
               device: torch.device, second_scores: torch.Tensor | None = None,
               lookback: int = 0) -> tuple[torch.LongTensor, torch.LongTensor]:
    """Rank every leaf of every chunk by its best token in `token_scores` (N, C), counting the `lookback` tokens
    before the leaf as its own (a key matched there is looked up for the value that follows it, in this leaf); None
    ranks the most recent leaves first (the "recent" ablation). `second_scores` (N, C): a second scoring whose best
    leaf among the others is selected too (`union_order`). Returns the starts of the n_selected (+ 1) best leaves
    (N, n) and of the others (N, C / leaf_length - n), each in ascending order of position."""
    n_leaves = chunk_size // leaf_length

    def per_leaf(scores):  # (N, C) -> (N, L) each leaf's best token, its `lookback` tokens before it included
        if scores is None:
            return torch.arange(n_leaves, device=device, dtype=torch.float).expand(n_chunks, -1)
        padded = torch.nn.functional.pad(scores, (lookback, 0), value=float("-inf"))  # (N, s + C)
        return padded.unfold(-1, lookback + leaf_length, leaf_length).amax(dim=-1)  # windows [start - s, end)

    leaf_scores = per_leaf(token_scores)
    rankings = [(leaf_scores, n_selected)] + ([] if second_scores is None else [(per_leaf(second_scores), 1)])
    order = union_order(rankings)
    n_selected = sum(n for _, n in rankings)
    selected, others = order[:, :n_selected].sort(dim=-1).values, order[:, n_selected:].sort(dim=-1).values
    return selected * leaf_length, others * leaf_length


def compression_offsets(length: int, n_kept: int, mode: str, device: torch.device) -> torch.LongTensor:
    """Offsets inside a node of `length` tokens of the `n_kept` positions a stride compression keeps."""
    steps = torch.arange(n_kept, device=device)
    if mode == "stride":  # uniform stride from the node's first token (the reference)
        return steps * length // n_kept
    if mode == "stride_last":  # uniform stride ending at the node's last token, which a causal encoder fills most
        return (steps + 1) * length // n_kept - 1
    raise ValueError(f"no stride offsets for node_compression={mode!r}")


def compress_node(
    key_value: torch.Tensor, start: torch.LongTensor, length: int, n_kept: int, mode: str
) -> torch.Tensor:
    """Compress the nodes [start, start + length) of every chunk to `n_kept` positions each.

    key_value: (N, Hkv, T, hd) keys or values of whole chunks (or of the nodes alone, with start = 0); start: (N,)
    one node per chunk, or (N, S) S nodes of the same length per chunk. Returns (N, Hkv, S * n_kept, hd).
    """
    n, n_heads, _, head_dim = key_value.shape
    starts = start.view(n, -1)  # (N, S)
    if mode == "mean":
        offsets = torch.arange(length, device=key_value.device)
    else:
        offsets = compression_offsets(length, n_kept, mode, key_value.device)
    index = (starts[:, :, None] + offsets[None, None, :]).view(n, 1, -1, 1).expand(n, n_heads, -1, head_dim)
    gathered = key_value.gather(2, index)  # (N, Hkv, S * len(offsets), hd)
    if mode == "mean":
        gathered = gathered.view(n, n_heads, -1, length // n_kept, head_dim).mean(dim=3)
    return gathered
