"""Attention-scored tree selection and the exact finest level (issue #10 levers)."""

import pytest
import torch

from conftest import tiny_model
from sharedllm.modeling import SharedLLMForCausalLM
from sharedllm.tree import attention_half_scores, attention_token_scores, node_tiling, search_tree


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
    kept = search_tree(attention_half_scores(attention_token_scores(query, keys)), n, chunk_size, depth, torch.device("cpu"))
    assert (node_tiling(kept) == 1).all()
    leaf_starts = torch.stack([kept[-2][0], kept[-1][0]], dim=1)  # (N, 2)
    leaf = kept[-1][1]
    in_leaf = ((planted[:, None] >= leaf_starts) & (planted[:, None] < leaf_starts + leaf)).any(dim=1)
    assert in_leaf.all()


def test_attention_token_scores_are_the_best_head_logit():
    query, keys = torch.randn(2, 4, 8), torch.randn(2, 2, 16, 8)
    expected = torch.stack(
        [torch.stack([query[b, h] @ keys[b, h // 2].T for h in range(4)]).amax(0) for b in range(2)]
    )
    torch.testing.assert_close(attention_token_scores(query, keys), expected)


def wrap(**knobs):
    base = tiny_model("llama")
    return SharedLLMForCausalLM.from_base(base, n_injected_layers=2, chunk_size=32, decoder_window=48, **knobs)


@pytest.mark.parametrize("selection", ["attention", "query"])
def test_exact_leaves_keep_every_leaf_token(selection):
    model = wrap(tree_depth=2, tokens_per_node=4, leaf_tokens_per_node=8, tree_selection=selection)
    assert model.config.context_tokens_per_chunk == 4 * 1 + 2 * 8
    ids = torch.randint(3, 128, (1, 48 + 64))
    zero = torch.zeros(1, dtype=torch.long)
    query = model._query_vectors(ids, zero, torch.tensor([111]))
    context = model.context_encoder.encode(ids, zero, torch.tensor([2]), zero, query)
    assert context.keys[0].shape[2] == 2 * 20


def test_attention_selection_generate_equals_forward():
    """Cached generation (chunks rolling in with a grown context) selects as a full forward does."""
    torch.manual_seed(0)
    model = wrap(tree_depth=2, tokens_per_node=4, leaf_tokens_per_node=8, tree_selection="attention")
    with torch.no_grad():
        for attention in model.cross_attention:
            attention.o_proj.weight.normal_(std=0.5)
    ids = torch.randint(3, 128, (1, 70))
    out = model.generate(ids, max_new_tokens=40, do_sample=False, min_new_tokens=40)
    query_index = ids.shape[1] - 1
    for step in (0, 15, 39):
        prefix = out[:, : ids.shape[1] + step]
        expected = model(prefix, query_position=query_index).logits[0, -1].argmax()
        assert int(out[0, ids.shape[1] + step]) == int(expected)


def test_attention_selection_needs_chunk_encoding():
    with pytest.raises(ValueError, match="needs node_encoding='chunk'"):
        wrap(tree_depth=2, tokens_per_node=4, tree_selection="attention", node_encoding="node")


def test_leaf_budget_must_fit_the_leaf():
    with pytest.raises(ValueError, match="leaf_tokens_per_node must be between 1 and the leaf length"):
        wrap(tree_depth=2, tokens_per_node=4, leaf_tokens_per_node=9)
