"""Row bookkeeping (`sharedllm.rows`): the split rule at its boundaries, and taking / re-packing real tokens."""

import pytest
import torch

from sharedllm.rows import context_chunk_counts, gather_tokens, left_align, mask_positions, real_token_spans


def test_split_rule_at_its_boundaries():
    """C = 16, Ld = 32: context starts one token past the window, in whole chunks; the window keeps Ld - C + 1..Ld."""
    length = torch.tensor([1, 32, 33, 48, 49, 100])
    chunks = context_chunk_counts(length, chunk_size=16, decoder_window=32)
    assert chunks.tolist() == [0, 0, 1, 1, 2, 5]
    window = length - 16 * chunks
    assert ((window >= 17) & (window <= 32))[chunks > 0].all()


def test_real_token_spans_either_padding_side_and_refusals():
    mask = torch.tensor([[0, 0, 1, 1, 1], [1, 1, 0, 0, 0]])
    start, length = real_token_spans(mask)
    assert start.tolist() == [2, 0] and length.tolist() == [3, 2]
    with pytest.raises(ValueError, match="all-zero row"):
        real_token_spans(torch.tensor([[0, 0]]))
    with pytest.raises(ValueError, match="contiguous"):
        real_token_spans(torch.tensor([[1, 0, 1]]))


@pytest.mark.parametrize("left_pad", [True, False])
def test_gather_tokens_takes_each_rows_span(left_pad):
    ids = torch.arange(10)[None].expand(2, -1) + torch.tensor([[0], [100]])
    taken, mask = gather_tokens(ids, first=torch.tensor([1, 4]), count=torch.tensor([3, 2]), width=3, left_pad=left_pad)
    expected = [[1, 2, 3], [0, 104, 105]] if left_pad else [[1, 2, 3], [104, 105, 0]]
    assert taken.tolist() == expected
    assert mask.tolist() == [[1, 1, 1], [0, 1, 1] if left_pad else [1, 1, 0]]
    assert mask_positions(mask)[mask.bool()].tolist() == [0, 1, 2, 0, 1]  # each row's real tokens count from 0


def test_left_align_keeps_order_and_packs_right():
    ids = torch.tensor([[5, 6, 7, 8], [1, 2, 3, 4]])
    keep = torch.tensor([[1, 0, 1, 1], [0, 0, 0, 1]]).bool()
    packed, mask = left_align(ids, keep)
    assert packed.tolist() == [[5, 7, 8], [0, 0, 4]]
    assert mask.tolist() == [[1, 1, 1], [0, 0, 1]]
