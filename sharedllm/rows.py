"""Row bookkeeping: where each row's real tokens are, and how a row splits into context chunks and decoder window.

The split rule (docs/method.md): a row of L real tokens gives k = ceil(max(0, L - Ld) / C) whole chunks of context
from its start; the remaining L - k*C tokens are its decoder window. Rows are padded on either side; these helpers
find, take and re-pack each row's real tokens.
"""

import torch


def real_token_spans(attention_mask: torch.Tensor) -> tuple[torch.LongTensor, torch.LongTensor]:
    """(B, L) 0/1 mask -> start (B,), length (B,) of each row's contiguous real tokens (left or right padding)."""
    mask = attention_mask.bool()
    length = mask.sum(dim=1)
    if (length == 0).any():
        raise ValueError("every row needs at least one real token (attention_mask has an all-zero row)")
    start = mask.long().argmax(dim=1)
    positions = torch.arange(mask.shape[1], device=mask.device)
    contiguous = (mask == ((positions >= start[:, None]) & (positions < (start + length)[:, None]))).all()
    if not contiguous:
        raise ValueError("attention_mask must mark one contiguous run of real tokens per row (left or right padding)")
    return start, length


def context_chunk_counts(length: torch.LongTensor, chunk_size: int, decoder_window: int) -> torch.LongTensor:
    """k = ceil(max(0, L - Ld) / C) whole chunks of context for a row of L tokens."""
    return (length - decoder_window).clamp(min=0).add(chunk_size - 1).div(chunk_size, rounding_mode="floor")


def gather_tokens(
    input_ids: torch.LongTensor, first: torch.LongTensor, count: torch.LongTensor, width: int, left_pad: bool
) -> tuple[torch.LongTensor, torch.LongTensor]:
    """Take count[b] tokens of row b starting at first[b] into a (B, width) tensor padded on one side.

    Returns (ids (B, width), mask (B, width)); padding ids are 0.
    """
    slots = torch.arange(width, device=input_ids.device)[None, :]  # (1, W)
    offset = slots - (width - count[:, None]) if left_pad else slots  # slot -> index within the taken span
    mask = (offset >= 0) & (offset < count[:, None])
    index = (first[:, None] + offset).clamp(0, input_ids.shape[1] - 1)
    ids = torch.where(mask, input_ids.gather(1, index), torch.zeros_like(index))
    return ids, mask.long()


def mask_positions(mask: torch.Tensor) -> torch.LongTensor:
    """(B, W) 0/1 mask -> position ids 0.. of each row's real tokens (padding, which is masked, gets 0 before them
    and the last position after them)."""
    return (mask.cumsum(1) - 1).clamp(min=0)


def left_align(ids: torch.LongTensor, keep: torch.Tensor) -> tuple[torch.LongTensor, torch.LongTensor]:
    """Keep the marked tokens of each row (order preserved), packed to the right: (B, W') ids and mask."""
    count = keep.sum(dim=1)
    width = int(count.max())
    # stable sort puts dropped tokens first and kept tokens last, in their original order
    order = torch.sort(keep.long(), dim=1, stable=True).indices[:, -width:]
    packed = ids.gather(1, order)
    mask = torch.arange(width, device=ids.device)[None, :] >= (width - count)[:, None]
    return torch.where(mask, packed, torch.zeros_like(packed)), mask.long()
