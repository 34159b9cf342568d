"""The query-aware context tree, vectorised over all chunks of a batch.

A chunk of C tokens is the root. At each level above the last, it is split into contiguous halves; the half
whose node vector is closer (cosine) to the query is expanded (split again) and the other half is kept at this
level's granularity. At the last level both halves are kept. Pairing is always within one chunk: the chunk
axis N is a batch axis here and halves of different chunks never meet. Per chunk the kept nodes are one of
C/2, one of C/4, ..., and two of C/2**D: they tile the chunk. Each kept node becomes P key/value positions.

Shapes: N = chunks (all rows of the batch flattened), Hkv = key/value heads, T = tokens, hd = head dim.
"""

from collections.abc import Callable

import torch
import torch.nn.functional as F

# node_vectors(starts (N, 2), length) -> (N, 2, hidden): vectors of the left and right half at one level.
NodeVectorFn = Callable[[torch.LongTensor, int], torch.Tensor]


def search_tree(
    node_vectors: NodeVectorFn,
    query: torch.Tensor | None,
    n_chunks: int,
    chunk_size: int,
    depth: int,
    selection: str,
    device: torch.device,
) -> list[tuple[torch.LongTensor, int]]:
    """Walk the tree of every chunk at once. Returns the kept nodes as (start (N,), length) pairs, D+1 of them.

    `query` is (N, hidden): the query vector repeated for each chunk of its row. `node_vectors` is only called
    for the levels where a choice is made (selection == "query" and level < depth).
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
        if selection == "query":
            vectors = node_vectors(starts, length)  # (N, 2, hidden)
            similarity = F.cosine_similarity(vectors.float(), query.float()[:, None, :], dim=-1)  # (N, 2)
            expand_right = similarity[:, 1] > similarity[:, 0]
        else:  # "recent": always expand the most recent half
            expand_right = torch.ones(n_chunks, dtype=torch.bool, device=device)
        kept.append((torch.where(expand_right, starts[:, 0], starts[:, 1]), length))
        parent_start = torch.where(expand_right, starts[:, 1], starts[:, 0])
    return kept


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
    """Compress the node [start, start + length) of every chunk to `n_kept` positions.

    key_value: (N, Hkv, T, hd) keys or values of whole chunks (or of the nodes alone, with start = 0).
    Returns (N, Hkv, n_kept, hd).
    """
    n, n_heads, _, head_dim = key_value.shape
    if mode == "mean":
        offsets = torch.arange(length, device=key_value.device)
    else:
        offsets = compression_offsets(length, n_kept, mode, key_value.device)
    index = (start[:, None] + offsets[None, :])[:, None, :, None].expand(n, n_heads, -1, head_dim)
    gathered = key_value.gather(2, index)  # (N, Hkv, len(offsets), hd)
    if mode == "mean":
        gathered = gathered.view(n, n_heads, n_kept, length // n_kept, head_dim).mean(dim=3)
    return gathered


def node_tiling(kept: list[tuple[torch.LongTensor, int]]) -> torch.Tensor:
    """(N, C) count of how many kept nodes cover each token: all ones when the nodes tile the chunk."""
    chunk_size = sum(length for _, length in kept)
    n = kept[0][0].shape[0]
    positions = torch.arange(chunk_size, device=kept[0][0].device)
    coverage = torch.zeros(n, chunk_size, dtype=torch.long, device=positions.device)
    for start, length in kept:
        coverage += ((positions[None] >= start[:, None]) & (positions[None] < start[:, None] + length)).long()
    return coverage
