"""The context tree (`sharedllm.tree`) on planted scores: which halves are expanded, and the attention scores."""

import pytest
import torch

from sharedllm.tree import (
    attention_half_scores,
    attention_logits,
    attention_token_scores,
    chunk_ranking_scores,
    chunk_statistics,
    compress_node,
    cosine_half_scores,
    search_tree,
    union_order,
    top_leaves,
)


def node_tiling(kept: list[tuple[torch.LongTensor, int]]) -> torch.Tensor:
    """The layout invariant these tests check: (N, C) count of how many kept nodes cover each token, all ones when
    the nodes tile the chunk. kept: (start, length) pairs, start (N,) or (N, S)."""
    n = kept[0][0].shape[0]
    chunk_size = sum(length * start.view(n, -1).shape[1] for start, length in kept)
    positions = torch.arange(chunk_size, device=kept[0][0].device)
    coverage = torch.zeros(n, chunk_size, dtype=torch.long, device=positions.device)
    for start, length in kept:
        starts = start.view(n, -1, 1)  # (N, S, 1)
        coverage += ((positions >= starts) & (positions < starts + length)).sum(dim=1)
    return coverage


def test_tree_picks_planted_half_per_chunk():
    """Per chunk, plant a path: at every level the half on the path has the query as its vector, the other half
    the query's negation. Chunks get different paths, so pairing halves across chunks would be caught."""
    n_chunks, chunk_size, depth, hidden = 6, 64, 4, 8
    torch.manual_seed(0)
    query = torch.randn(n_chunks, hidden)
    paths = torch.randint(0, 2, (n_chunks, depth - 1))  # 1 = expand the right half at that level

    def node_vectors(starts, length):
        level = {32: 0, 16: 1, 8: 2}[length]
        right = paths[:, level].bool()
        left_vec = torch.where(right[:, None], -query, query)
        return torch.stack([left_vec, -left_vec], dim=1)

    kept = search_tree(cosine_half_scores(node_vectors, query), n_chunks, chunk_size, depth, torch.device("cpu"))
    for chunk in range(n_chunks):
        start = 0
        for level, (kept_start, length) in enumerate(kept[: depth - 1]):
            expand_right = bool(paths[chunk, level])
            assert kept_start[chunk] == (start if expand_right else start + length)  # the other half is kept
            start = start + length if expand_right else start
        assert kept[-2][0][chunk] == start and kept[-1][0][chunk] == start + kept[-1][1]
    assert (node_tiling(kept) == 1).all()
    assert [length for _, length in kept] == [32, 16, 8, 4, 4]


def test_recent_selection_expands_most_recent_half():
    kept = search_tree(None, 3, 64, 3, torch.device("cpu"))
    assert [(int(s[0]), n) for s, n in kept] == [(0, 32), (32, 16), (48, 8), (56, 8)]


def test_attention_selection_expands_toward_a_planted_key():
    """One token per chunk has a key aligned with the query: every level expands the half that holds it, and the
    planted token ends up in a leaf."""
    torch.manual_seed(0)
    n, n_heads, n_kv, chunk_size, head_dim, depth = 5, 4, 2, 64, 8, 3
    query = torch.randn(n, n_heads, head_dim)
    keys = 0.1 * torch.randn(n, n_kv, chunk_size, head_dim)
    planted = torch.tensor([0, 17, 33, 50, 63])
    for chunk, token in enumerate(planted.tolist()):
        keys[chunk, 1, token] = 10 * query[chunk, 2]  # head 2 is in kv group 1 (GQA: 2 query heads per kv head)
    token_scores = attention_token_scores(attention_logits(query, keys), "logit")
    kept = search_tree(attention_half_scores(token_scores), n, chunk_size, depth, torch.device("cpu"))
    assert (node_tiling(kept) == 1).all()
    leaf_starts = torch.stack([kept[-2][0], kept[-1][0]], dim=1)  # (N, 2)
    leaf = kept[-1][1]
    in_leaf = ((planted[:, None] >= leaf_starts) & (planted[:, None] < leaf_starts + leaf)).any(dim=1)
    assert in_leaf.all()


def test_attention_token_scores_are_the_best_heads_logit_or_probability():
    query, keys = torch.randn(2, 4, 8), torch.randn(2, 2, 16, 8)
    per_head = torch.stack([torch.stack([query[b, h] @ keys[b, h // 2].T for h in range(4)]) for b in range(2)]) / 8**0.5
    logits = attention_logits(query, keys)
    torch.testing.assert_close(logits, per_head)
    torch.testing.assert_close(attention_token_scores(logits, "logit"), per_head.amax(1))
    torch.testing.assert_close(attention_token_scores(logits, "probability"), per_head.softmax(-1).amax(1))


def test_probability_ranks_chunks_by_each_heads_softmax_over_the_whole_row():
    """Head 0 has large logits everywhere (flat attention); head 1 looks one token of chunk 2 up. The best logit
    picks whatever head 0 likes most (chunk 0); the probability, normalised per head over all the row's chunks,
    picks chunk 2, and equals the best head's softmax probability over the concatenated chunks."""
    torch.manual_seed(0)
    n, chunk_size = 4, 16
    logits = torch.zeros(n, 2, chunk_size)
    logits[:, 0] = 20 + 0.1 * torch.rand(n, chunk_size)
    logits[0, 0, 3] = 20.5
    logits[:, 1] = torch.randn(n, chunk_size)
    logits[2, 1, 7] = 12.0
    real = torch.ones(1, n, dtype=torch.bool)
    by_logit = chunk_ranking_scores(chunk_statistics(logits, "logit")[None], real)
    by_probability = chunk_ranking_scores(chunk_statistics(logits, "probability")[None], real)
    assert int(by_logit.argmax()) == 0 and int(by_probability.argmax()) == 2
    row_softmax = logits.permute(1, 0, 2).reshape(2, -1).softmax(-1).view(2, n, chunk_size)  # (H, n, C)
    torch.testing.assert_close(by_probability[0].exp(), row_softmax.amax(dim=(0, 2)))


def test_chunk_ranking_ignores_padding_slots():
    logits = torch.randn(3, 2, 8)
    real = torch.tensor([[True, True, False]])
    scores = chunk_ranking_scores(chunk_statistics(logits, "probability")[None], real)
    assert scores[0, 2] == float("-inf")
    expected = chunk_ranking_scores(chunk_statistics(logits[:2], "probability")[None], real[:, :2])
    torch.testing.assert_close(scores[:, :2], expected)


@pytest.mark.parametrize("scorer", [attention_token_scores, chunk_statistics])
def test_an_unknown_selection_score_is_refused(scorer):
    with pytest.raises(ValueError, match="unknown selection score"):
        scorer(torch.randn(3, 2, 8), "probabilty")


def test_top_leaves_keeps_the_second_best_leaf_the_descent_loses():
    """Chunk scores: the best token in leaf 0, the second best (a needle) in leaf 5 of 8. The greedy descent follows
    the best token into the left half and compresses leaf 5 away; ranking the leaves keeps both exact."""
    n, chunk_size, depth = 3, 64, 3
    leaf = chunk_size // 2**depth
    scores = torch.zeros(n, chunk_size)
    scores[:, 2], scores[:, 5 * leaf + 3] = 10.0, 9.0
    kept = search_tree(attention_half_scores(scores), n, chunk_size, depth, torch.device("cpu"))
    assert int(kept[-2][0][0]) == 0 and int(kept[-1][0][0]) == leaf  # both exact leaves in the left quarter
    best, others = top_leaves(scores, n, chunk_size, leaf, 2, torch.device("cpu"))
    assert best.tolist() == [[0, 5 * leaf]] * n
    assert others.tolist() == [[1 * leaf, 2 * leaf, 3 * leaf, 4 * leaf, 6 * leaf, 7 * leaf]] * n
    assert (node_tiling([(best, leaf), (others, leaf)]) == 1).all()


def test_top_leaves_lookback_keeps_the_leaf_a_key_near_its_border_leads_into():
    """The best token (a needle's key words) 2 tokens before the end of leaf 0, the value it looks up running on
    into leaf 1, a second best in leaf 5: each leaf by its own tokens keeps leaves 0 and 5 and cuts the value; with
    a lookback of 4 leaf 1 counts the key too and the two leaves that hold the needle are kept; a key in the middle
    of a leaf changes nothing."""
    n, chunk_size, leaf = 2, 64, 8
    scores = torch.zeros(n, chunk_size)
    scores[:, leaf - 2], scores[:, 5 * leaf + 3] = 10.0, 9.0
    scores[1, leaf - 2], scores[1, 3] = 0.0, 10.0  # row 1: the key in the middle of leaf 0
    alone, _ = top_leaves(scores, n, chunk_size, leaf, 2, torch.device("cpu"))
    assert alone.tolist() == [[0, 5 * leaf]] * n
    best, others = top_leaves(scores, n, chunk_size, leaf, 2, torch.device("cpu"), lookback=4)
    assert best.tolist() == [[0, leaf], [0, 5 * leaf]]
    assert (node_tiling([(best, leaf), (others, leaf)]) == 1).all()
    assert top_leaves(scores, n, chunk_size, leaf, 2, torch.device("cpu"), lookback=1)[0].tolist() == alone.tolist()


def test_top_leaves_without_scores_keeps_the_most_recent():
    best, others = top_leaves(None, 2, 64, 16, 1, torch.device("cpu"))
    assert best.tolist() == [[48], [48]] and others.tolist() == [[0, 16, 32], [0, 16, 32]]


def test_union_order_adds_each_later_rankings_best_others():
    first = torch.tensor([[5.0, 4.0, 3.0, 2.0, 1.0, 0.0]])
    second = torch.tensor([[9.0, 1.0, 2.0, 3.0, 4.0, 5.0]])  # item 0 is best under both
    third = torch.tensor([[0.0, 0.0, 0.0, 9.0, 0.0, 8.0]])  # its best, item 3, only after second's 4 and 5
    assert union_order([(first, 2), (second, 2)])[0, :4].tolist() == [0, 1, 4, 5]  # first's 2, then second's 2
    assert union_order([(first, 2), (second, 0)])[0].tolist() == [0, 1, 2, 3, 4, 5]
    assert union_order([(first, 2), (second, 2), (third, 1)])[0, :5].tolist() == [0, 1, 3, 4, 5]
    assert union_order([(first, 2), (third, 1), (second, 2)])[0, :5].tolist() == [0, 1, 3, 4, 5]
    assert union_order([(first, 1), (third, 1), (second, 1)])[0, :3].tolist() == [0, 3, 5]
    scores = torch.randn(3, 10)
    assert torch.equal(union_order([(scores, 4)]), scores.argsort(dim=-1, descending=True, stable=True))
    assert torch.equal(union_order([(scores, 4), (scores, 2)]), scores.argsort(dim=-1, descending=True, stable=True))


def test_top_leaves_second_scores_keep_the_leaf_only_they_find():
    """The query token's scores put leaves 0 and 1 first; a second scoring (the best of several query tokens) finds
    leaf 6, which joins them; where its best is already among them (row 1: leaf 0), its best other leaf joins."""
    n, chunk_size, leaf = 2, 64, 8
    first, second = torch.zeros(n, chunk_size), torch.zeros(n, chunk_size)
    first[:, 3], first[:, leaf + 3], first[:, 2 * leaf + 3] = 10.0, 9.0, 7.0
    second[0, 6 * leaf + 1], second[1, 3], second[1, 5 * leaf] = 8.0, 8.0, 1.0
    alone, _ = top_leaves(first, n, chunk_size, leaf, 2, torch.device("cpu"))
    both, others = top_leaves(first, n, chunk_size, leaf, 2, torch.device("cpu"), second)
    assert alone.tolist() == [[0, leaf]] * n and both.tolist() == [[0, leaf, 6 * leaf], [0, leaf, 5 * leaf]]
    assert (node_tiling([(both, leaf), (others, leaf)]) == 1).all()


def test_attention_logits_of_several_queries_fold_query_major():
    """(N, Q, H, hd) queries give (N, Q * H, C): block q is query q's (N, H, C) logits, GQA groups kept."""
    query, keys = torch.randn(3, 4, 6, 8), torch.randn(3, 2, 16, 8)
    logits = attention_logits(query, keys)
    assert logits.shape == (3, 4 * 6, 16)
    for q in range(4):
        torch.testing.assert_close(logits[:, 6 * q : 6 * (q + 1)], attention_logits(query[:, q], keys))


@pytest.mark.parametrize("mode", ["stride", "stride_last", "mean"])
def test_compress_node_of_several_nodes_is_each_node_in_turn(mode):
    key_value = torch.randn(2, 3, 64, 4)
    starts = torch.tensor([[0, 32, 48], [16, 8, 40]])
    together = compress_node(key_value, starts, 8, 4, mode)
    one_by_one = torch.cat([compress_node(key_value, starts[:, i], 8, 4, mode) for i in range(3)], dim=2)
    torch.testing.assert_close(together, one_by_one)
    assert together.shape == (2, 3, 12, 4)
