"""Attention-scored tree selection and the exact finest level, on the model (issue #10 levers; tree: test_tree.py)."""

import pytest
import torch

from conftest import tiny_model
from sharedllm.modeling import SharedLLMForCausalLM


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
