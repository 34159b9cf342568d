"""The lower model (`sharedllm.context_encoder`): shapes, rotary offsets, the last layer's shortcut, appending
chunks, and what it keeps (no state of its own; node vectors only where the tree compares them)."""

import pytest
import torch
from conftest import encoded_context, tiny_model
from test_model import wrap

from sharedllm.compat import cache_argument


def test_append_chunks_keeps_each_rows_old_chunks():
    """Row 0 holds no chunk and gains one, row 1 holds three and gains none (the issue-14 repro)."""
    from sharedllm.context_encoder import append_chunks

    old = torch.zeros(2, 1, 6, 1)
    old[1, 0, :, 0] = torch.tensor([1.0, 1, 2, 2, 3, 3])
    new = torch.full((2, 1, 2, 1), 9.0)
    merged = append_chunks(
        encoded_context([old], [old], torch.tensor([0, 3]), 2), encoded_context([new], [new], torch.tensor([1, 0]), 2)
    )
    assert merged.n_chunks.tolist() == [1, 3]
    assert merged.layers()[0][0][1, 0, :, 0].tolist() == [1, 1, 2, 2, 3, 3]
    assert merged.layers()[0][0][0, 0, :2, 0].tolist() == [9, 9]


@pytest.mark.parametrize("stat_shape", [(), (3, 2)])  # selection_score logit: (B, n); probability: (B, n, H, 2)
def test_append_chunks_keeps_each_rows_chunk_scores(stat_shape):
    from sharedllm.context_encoder import append_chunks

    kv = lambda n: torch.zeros(2, 1, 2 * n, 1)  # noqa: E731
    old_scores = torch.arange(2 * 3).float().view(2, 3, *[1] * len(stat_shape)).expand(2, 3, *stat_shape)
    new_scores = torch.full((2, 1, *stat_shape), 9.0)
    merged = append_chunks(encoded_context([kv(3)], [kv(3)], torch.tensor([1, 3]), 2, old_scores),
                           encoded_context([kv(1)], [kv(1)], torch.tensor([1, 0]), 2, new_scores))
    first = merged.chunk_scores.reshape(2, 3, -1)[..., 0]  # capacity: the most chunks of a row
    assert first[0, :2].tolist() == [0, 9] and first[1, :3].tolist() == [3, 4, 5]


@pytest.mark.parametrize("depth,per_node", [(2, 2), (3, 2), (0, 4)])
def test_context_shapes_and_compression(depth, per_node):
    model = wrap(tiny_model("llama"), tree_depth=depth, tokens_per_node=per_node)
    ids = torch.randint(3, 128, (2, 100))
    cache_holder = {}
    original = model.context_encoder.encode

    def spy(*args, **kwargs):
        cache_holder["context"] = original(*args, **kwargs)
        return cache_holder["context"]

    model.context_encoder.encode = spy
    with torch.no_grad():
        model(ids)
    context = cache_holder["context"]
    per_chunk = per_node * (depth + 1)
    assert context.per_chunk == per_chunk == model.config.context_tokens_per_chunk
    layer_keys, _ = context.layers()
    assert len(layer_keys) == model.config.n_injected_layers
    for keys in layer_keys:
        assert keys.shape == (2, 2, 5 * per_chunk, 16)  # (B, Hkv, chunks * P * (D + 1), head_dim)


def test_chunk_rotary_offsets_are_applied():
    """Two identical chunks: the second's keys are the first's rotated by one more position (offset c = 1)."""
    from transformers.models.llama.modeling_llama import apply_rotary_pos_emb

    model = wrap(tiny_model("llama"), tree_depth=0, tokens_per_node=16)  # keep every token: no compression
    chunk = torch.randint(3, 128, (16,))
    with torch.no_grad():
        chunks = model.context_encoder.encode_by_chunk(torch.stack([chunk, chunk]), torch.tensor([0, 1]), torch.zeros(2, 64))[0]
        first, second = chunks[0][0:1], chunks[1][0:1]  # layer 0's keys, (1, Hkv, 16, hd)
        cos, sin = model.decoder.rotary_emb(first, torch.ones(1, 16, dtype=torch.long))
        shifted, _ = apply_rotary_pos_emb(first, first, cos, sin)
    assert not torch.allclose(first, second, atol=1e-4)
    assert torch.allclose(shifted, second, atol=1e-4)


@pytest.mark.parametrize("arch_name", ["llama", "qwen2", "qwen3"])
def test_last_lower_layer_shortcut_gives_the_layers_own_keys(arch_name):
    """The lower pass computes only keys/values in its last layer; they must equal the full layer's."""
    from transformers import DynamicCache

    model = wrap(tiny_model(arch_name), n_injected_layers=3)
    ids = torch.randint(3, 128, (2, 16))
    positions = torch.arange(16)[None].expand(2, -1) + 1
    with torch.no_grad():
        _, keys, values = model.context_encoder.run_lower(ids, positions, 3)
        hidden = model.decoder.embed_tokens(ids)
        rope = model.decoder.rotary_emb(hidden, positions)
        cache = DynamicCache()
        for layer in model.decoder.layers[:3]:
            hidden = layer(hidden, position_embeddings=rope, position_ids=positions, **cache_argument(cache), use_cache=True)
    for i in range(3):
        assert torch.allclose(keys[i], cache.layers[i].keys, atol=1e-5)
        assert torch.allclose(values[i], cache.layers[i].values, atol=1e-5)


def test_the_encoder_owns_no_state():
    """The encoder reads the model's own modules and config: no parameter, buffer or state-dict key of its own."""
    model = wrap(tiny_model("llama"))
    encoder = model.context_encoder
    assert encoder.decoder is model.decoder and encoder.config is model.config
    assert encoder.scoring_projections()[1] is model.cross_attention[-1].q_proj
    assert {name.split(".")[0] for name in model.state_dict()} == {"base", "cross_attention"}


@pytest.mark.parametrize("selection", ["query", "attention", "recent"])
def test_node_vectors_only_where_the_selection_compares_them(selection):
    """Only "query" selection compares node vectors: the others skip them and select exactly the same nodes."""
    model = wrap(tiny_model("llama"), tree_selection=selection)  # C = 16, D = 2: two 8-token halves per chunk
    encoder = model.context_encoder
    chunks, index = torch.randint(3, 128, (3, 16)), torch.arange(3)
    with torch.no_grad():
        lowered = encoder.lower_chunks(chunks, index)
        asked = encoder.lower_chunks(chunks, index, node_vectors=True)
        assert (lowered.node_vectors is not None) == (selection == "query")
        assert asked.node_vectors.shape == (3, 2, 64)
        query = torch.randn(3, 64)
        selected = encoder.select_nodes(lowered, query, index)
        asked_selected = encoder.select_nodes(asked, query, index)
    assert all(torch.equal(a, b) for a, b in zip(selected, asked_selected))


def test_a_reading_that_keeps_every_token_holds_one_copy_of_the_chunks():
    """tree_depth 0: the encoded context's chunks are the context cache's and the memo's own tensors (no second
    copy of every chunk), and after `layers` a context holds the attention's tensor, not its old chunks as well."""
    from functools import partial

    from sharedllm.context_cache import ContextCache
    from sharedllm.context_encoder import LowerChunksMemo

    storage = lambda tensor: tensor.untyped_storage().data_ptr()  # noqa: E731
    model = wrap(tiny_model("llama"), tree_depth=0, tokens_per_node=16)  # C = 16 kept whole
    ids, zero, n = torch.randint(3, 128, (1, 100)), torch.zeros(1, dtype=torch.long), torch.tensor([4])
    with torch.no_grad():
        query = model._query_vectors(ids, zero, torch.tensor([99]))
        document = ContextCache.encode(model, ids[0, :64])  # the same 4 chunks
        memo = LowerChunksMemo(model.context_encoder)
        encoded = {name: model.context_encoder.encode(ids, zero, n, zero, query, lower)
                   for name, lower in dict(cache=partial(document.lower_chunks, model), memo=memo, fresh=None).items()}
    assert [storage(chunk) for chunk in encoded["cache"].chunks[0]] == [storage(document.stored)] * 4
    assert {storage(chunk) for chunk in encoded["memo"].chunks[0]} == {storage(kept) for kept, _ in memo.kept.values()}
    assert len(memo.kept) == 4
    keys, values = encoded["fresh"].layers()
    assert {storage(chunk) for chunk in encoded["fresh"].chunks[0]} == {storage(keys[0])}
    for name in ("cache", "memo"):
        torch.testing.assert_close(torch.stack(encoded[name].layers()[0]), torch.stack(keys))
    assert storage(memo.kept[next(iter(memo.kept))][0]) != storage(encoded["memo"].chunks[0][0])  # a view of layers'


def test_encoded_context_layers_pad_rows_with_fewer_chunks():
    from sharedllm.context_encoder import EncodedContext

    chunk = lambda value: torch.full((4, 1, 2, 3), float(value))  # noqa: E731  (2M = 4, Hkv = 1, K = 2, hd = 3)
    context = EncodedContext([[chunk(1)], [chunk(2), chunk(3)]], torch.tensor([1, 2]), per_chunk=2)
    keys, values = context.layers()
    assert len(keys) == len(values) == 2 and keys[0].shape == (2, 1, 4, 3)
    assert keys[1][:, 0, :, 0].tolist() == [[1, 1, 0, 0], [2, 2, 3, 3]]
    assert values[0][1, 0, :, 0].tolist() == [2, 2, 3, 3]
