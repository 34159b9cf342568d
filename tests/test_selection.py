"""Attention-scored tree selection and the exact finest level, on the model (issue #10 levers; tree: test_tree.py)."""

import pytest
import torch

from conftest import encoded_context, tiny_model
from sharedllm.config import ATTENTION_ONLY_KNOBS
from sharedllm.flags import knob_flag
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
    assert context.layers()[0][0].shape[2] == 2 * 20


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


@pytest.mark.parametrize("layer", [0, 2])
def test_selection_layer_scores_with_that_layers_query_and_keys(layer, monkeypatch):
    """selection_layer s: the query is the hidden state entering layer s over the query's window (the base's own),
    projected by layer s's q_proj, and scored against layer s's keys of the chunks."""
    base = tiny_model("llama")
    model = SharedLLMForCausalLM.from_base(base, injection="joint", n_injected_layers=4, chunk_size=32,
                                          decoder_window=48, tree_depth=2, tokens_per_node=4,
                                          tree_selection="attention", selection_layer=layer)
    ids = torch.randint(3, 128, (1, 48 + 64))
    zero = torch.zeros(1, dtype=torch.long)
    with torch.no_grad():
        query = model._query_vectors(ids, zero, torch.tensor([111]))
        window = ids[:, 64:]  # the query's window: the 48 tokens after the 2 chunks
        expected = base(window, output_hidden_states=True).hidden_states[layer][:, -1:]  # (1, Q = 1, hidden)
        assert torch.allclose(query, expected, atol=1e-5)
        seen = []
        logits = model.context_encoder.attention_logits
        monkeypatch.setattr(model.context_encoder, "attention_logits",
                            lambda q, keys, index: seen.append(keys) or logits(q, keys, index))
        lowered = model.context_encoder.lower_chunks(ids[0, :64].view(2, 32), torch.arange(2))
        model.context_encoder.select_nodes(lowered, query.expand(2, -1, -1), torch.arange(2))
    torch.testing.assert_close(seen[0], lowered.layer_keys(layer), rtol=0, atol=0)
    assert model.context_encoder.scoring_projections()[1] is base.model.layers[layer].self_attn.q_proj


def test_selection_layer_must_be_injected():
    with pytest.raises(ValueError, match="selection_layer must be an injected layer, 0..1"):
        wrap(tree_selection="attention", selection_layer=2)


def test_top_chunks_gathers_the_k_best_real_chunks_per_row():
    from sharedllm.context_encoder import top_chunks

    # each chunk's best logit under one head (B, n, H = 1); row 1 holds 3 chunks
    scores = torch.tensor([[0.1, 0.9, 0.5, 0.7], [3.0, -1.0, 2.0, float("-inf")]])[..., None]
    slot_chunk = torch.arange(4).repeat_interleave(2).float()  # 2 slots per chunk, each holding its chunk's index
    keys = slot_chunk[None, None, :, None].expand(2, 1, 8, 1)
    context = encoded_context([keys], [keys + 10], torch.tensor([4, 3]), per_chunk=2, chunk_scores=scores)

    def chunks_read(k):
        read = top_chunks(context, k)
        keys, values = read.layers()
        assert torch.equal(values[0], keys[0] + 10)
        return keys[0][:, 0, ::2, 0].long().tolist(), read.n_chunks.tolist()

    assert chunks_read(2) == ([[1, 3], [0, 2]], [2, 2])
    # a row with <= k chunks keeps them all, first, then padding
    assert chunks_read(3) == ([[1, 2, 3], [0, 1, 2]], [3, 3])
    assert top_chunks(context, 9) is context
    # the r last real chunks are read whatever their score: row 0's chunk 3 (0.7) and row 1's chunk 2 (2.0) are
    # last, and so already among the best; with r = 2 row 0 also reads chunk 2 (0.5) and row 1 chunk 1 (-1.0)
    read = top_chunks(context, 2, recent=2)
    assert read.layers()[0][0][:, 0, ::2, 0].long().tolist() == [[2, 3], [1, 2]]
    read = top_chunks(context, 3, recent=1)
    assert read.layers()[0][0][:, 0, ::2, 0].long().tolist() == [[1, 2, 3], [0, 1, 2]]


def test_context_chunks_reads_only_the_best_chunk():
    """context_chunks = 1, joint injection, chunks read alone (overlap 0) at shared positions: the window's logits
    are those of the same model given that one chunk alone, for exactly one of the chunks; with every chunk read
    they differ."""
    base = tiny_model("llama")
    knobs = dict(injection="joint", n_injected_layers=4, chunk_size=16, decoder_window=24, tree_depth=0,
                 tokens_per_node=16, tree_selection="attention", chunk_overlap=0)
    top1 = SharedLLMForCausalLM.from_base(base, context_chunks=1, **knobs).eval()
    every = SharedLLMForCausalLM.from_base(base, **knobs).eval()
    chunks = torch.randint(3, 128, (3, 16), generator=torch.Generator().manual_seed(2))
    window = torch.randint(3, 128, (24,), generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        out = top1(torch.cat([*chunks, window])[None]).logits
        alone = [every(torch.cat([chunk, window])[None]).logits for chunk in chunks]
        assert sum(torch.allclose(out, logits, atol=1e-5) for logits in alone) == 1
        assert not torch.allclose(out, every(torch.cat([*chunks, window])[None]).logits, atol=1e-3)


@pytest.mark.parametrize("injection, recent, score, query_tokens, query_layer, k", [
    ("cross", 0, "logit", 1, None, 2), ("joint", 0, "logit", 1, None, 2), ("joint", 1, "logit", 1, None, 2),
    ("joint", 0, "probability", 1, None, 2), ("joint", 0, "probability", 5, None, 2), ("cross", 0, "logit", 5, None, 2),
    ("joint", 0, "probability", 5, 0, 2), ("cross", 0, "logit", 5, 0, 2), ("joint", 0, "probability", 5, 0, 0),
])
def test_context_chunks_generate_equals_forward(injection, recent, score, query_tokens, query_layer, k):
    """Chunks rolling in during generation are ranked with the others under the prefill's query (and the most
    recent one is then the new one), as a forward over the whole sequence with the same query ranks them."""
    torch.manual_seed(0)
    model = wrap(tree_depth=2, tokens_per_node=4, leaf_tokens_per_node=8, tree_selection="attention",
                 context_chunks=k, recent_chunks=recent, injection=injection, selection_score=score,
                 query_tokens=query_tokens, query_chunks=int(query_tokens > 1), query_layer=query_layer,
                 selected_leaves=2 if query_tokens > 1 else None)  # Q = 1: the greedy tree, as before
    if injection == "cross":
        with torch.no_grad():
            for attention in model.cross_attention:
                attention.o_proj.weight.normal_(std=0.5)
    ids = torch.randint(3, 128, (1, 90))
    out = model.generate(ids, max_new_tokens=40, do_sample=False, min_new_tokens=40, output_logits=True,
                         return_dict_in_generate=True)
    query_index = ids.shape[1] - 1
    for step in (0, 15, 39):
        prefix = out.sequences[:, : ids.shape[1] + step]
        expected = model(prefix, query_position=query_index).logits[0, -1]
        assert torch.allclose(out.logits[step][0], expected, atol=1e-4), step


def test_context_chunks_checks():
    with pytest.raises(ValueError, match="context_chunks.*0 with query_chunks above 0"):
        wrap(context_chunks=0, tree_selection="attention")
    # 0 with query_chunks: only the query tokens choose (m at the scoring layer, m more at query_layer)
    assert wrap(context_chunks=0, query_chunks=1, query_tokens=3, query_layer=0, tree_selection="attention",
                tree_depth=2, tokens_per_node=4, selected_leaves=1).config.chunks_read == 2
    with pytest.raises(ValueError, match="recent_chunks counts among the context_chunks"):
        wrap(context_chunks=2, recent_chunks=3, tree_selection="attention")
    with pytest.raises(ValueError, match="recent_chunks counts among the context_chunks"):
        wrap(recent_chunks=1, tree_selection="attention")


@pytest.mark.parametrize("injection, knobs, per_chunk, read", [
    ("cross", {}, 4 * 1 + 2 * 8, 2),
    ("joint", {}, 4 * 1 + 2 * 8, 2),
    # query_tokens adds one exact leaf per chunk to the selected_leaves and query_chunks chunks to the k read
    ("joint", dict(selected_leaves=1, query_tokens=3, query_chunks=1), 2 * 8 + 2 * 4, 3),
    # and with query_layer, query_chunks more ranked by the Q tokens at that layer
    ("joint", dict(selected_leaves=1, query_tokens=3, query_chunks=1, query_layer=0), 2 * 8 + 2 * 4, 4),
])
def test_context_chunks_attend_over_k_chunks_only(injection, knobs, per_chunk, read):
    """The cost of reading: the injected layers get k (+ query_chunks) chunks' key/values, not n (the others are not
    gathered), each chunk its per-chunk budget; config.chunks_read (what the FLOP count assumes) is that k."""
    model = wrap(tree_depth=2, tokens_per_node=4, leaf_tokens_per_node=8, tree_selection="attention",
                 context_chunks=2, injection=injection, **knobs)
    assert model.config.context_tokens_per_chunk == per_chunk
    ids = torch.randint(3, 128, (1, 48 + 5 * 32))
    zero = torch.zeros(1, dtype=torch.long)
    query = model._query_vectors(ids, zero, torch.tensor([ids.shape[1] - 1]))
    context = model.context_encoder.encode(ids, zero, torch.tensor([5]), zero, query)
    assert context.layers()[0][0].shape[2] == 5 * per_chunk
    injected = model._injected_context(context, model.context_encoder.sink() if injection == "joint" else None)
    assert {keys.shape[2] for keys in injected.keys} == {read * per_chunk}
    assert model.config.chunks_read == read


@pytest.mark.parametrize("selection", ["attention", "recent"])
def test_selected_leaves_budget_and_generate_equals_forward(selection):
    """n best leaves at the leaf budget, every other leaf at P: the per-chunk budget says so, the encoded context
    has it, and cached generation (chunks rolling in) selects as a full forward does."""
    torch.manual_seed(0)
    model = wrap(tree_depth=2, tokens_per_node=2, leaf_tokens_per_node=8, tree_selection=selection, selected_leaves=1)
    assert model.config.context_tokens_per_chunk == 1 * 8 + 3 * 2
    with torch.no_grad():
        for attention in model.cross_attention:
            attention.o_proj.weight.normal_(std=0.5)
    ids = torch.randint(3, 128, (1, 48 + 64))
    zero = torch.zeros(1, dtype=torch.long)
    query = model._query_vectors(ids, zero, torch.tensor([111]))
    assert model.context_encoder.encode(ids, zero, torch.tensor([2]), zero, query).layers()[0][0].shape[2] == 2 * 14
    out = model.generate(ids[:, :70], max_new_tokens=30, do_sample=False, min_new_tokens=30)
    for step in (0, 29):
        prefix = out[:, : 70 + step]
        assert int(out[0, 70 + step]) == int(model(prefix, query_position=69).logits[0, -1].argmax())


def test_selected_leaves_keeps_the_planted_leaf_exact(monkeypatch):
    """With attention logits planted in one leaf, that leaf's keys reach the context uncompressed."""
    model = wrap(tree_depth=2, tokens_per_node=2, leaf_tokens_per_node=8, tree_selection="attention", selected_leaves=1)
    encoder = model.context_encoder
    ids = torch.randint(3, 128, (1, 64))
    lowered = encoder.lower_chunks(ids.view(2, 32), torch.arange(2))
    scores = torch.zeros(2, 32)
    scores[0, 19], scores[1, 2] = 1.0, 1.0  # leaf 2 (tokens 16..23) of chunk 0, leaf 0 of chunk 1
    chunks = encoder.select_nodes(lowered, None, torch.arange(2), scores[:, None, :])  # (N, H = 1, C) logits
    torch.testing.assert_close(chunks[0][0, :, :8], lowered.chunks[0][0, :, 16:24])  # layer 0's keys
    torch.testing.assert_close(chunks[1][0, :, :8], lowered.chunks[1][0, :, 0:8])


@pytest.mark.parametrize("knobs, message", [
    (dict(tree_selection="query", selected_leaves=1), "tree_selection 'attention' or 'recent'"),
    (dict(tree_selection="attention", selected_leaves=5), "needs tree_depth >= 1, selected_leaves <= 2\\*\\*tree_depth"),
    (dict(tree_selection="attention", tree_depth=0, selected_leaves=1), "tree_depth >= 1"),
])
def test_selected_leaves_checks(knobs, message):
    with pytest.raises(ValueError, match=message):
        wrap(**{"tree_depth": 2, "tokens_per_node": 2, **knobs})


# a value that switches each attention-only knob on, with what it needs besides (every other knob stays off)
ATTENTION_ONLY_ON = {
    "selection_layer": ({"selection_layer": 0}, {}),
    "selection_score": ({"selection_score": "probability"}, {}),
    "query_tokens": ({"query_tokens": 4}, {}),
    "query_chunks": ({"query_chunks": 1}, {"query_tokens": 4, "context_chunks": 1}),
    "query_layer": ({"query_layer": 0}, {"query_chunks": 1, "query_tokens": 4, "context_chunks": 1}),
    "context_chunks": ({"context_chunks": 2}, {}),
    "recent_chunks": ({"recent_chunks": 1}, {"context_chunks": 2}),
    "leaf_lookback": ({"leaf_lookback": 2}, {"selected_leaves": 1}),
    "chunk_spacing": ({"chunk_spacing": 8}, {"context_chunks": 2, "injection": "joint"}),
}


def test_attention_only_table_covers_the_contract():
    assert set(ATTENTION_ONLY_ON) == set(ATTENTION_ONLY_KNOBS)


@pytest.mark.parametrize("selection", ["query", "recent"])
@pytest.mark.parametrize("name", sorted(ATTENTION_ONLY_KNOBS))
def test_attention_only_knobs_need_attention_selection(name, selection):
    """Each knob only attention selection reads is refused under another selection (it would do nothing), in one
    error that names every such knob set and the flag that switches it off; the same knobs build with attention."""
    on, needs = ATTENTION_ONLY_ON[name]
    knobs = {"tree_depth": 2, "tokens_per_node": 4, **needs, **on}
    wrap(tree_selection="attention", **knobs)
    set_names = [knob for knob in ATTENTION_ONLY_KNOBS if knob in knobs]
    with pytest.raises(ValueError, match=f"tree_selection='{selection}' does not score") as error:
        wrap(tree_selection=selection, **knobs)
    for knob in set_names:
        assert f"{knob}=" in str(error.value) and knob_flag(knob) in str(error.value)


def test_query_tokens_are_the_last_window_states_entering_the_scoring_layer():
    """query_tokens Q: the hidden states entering the scoring layer at the query token and the Q - 1 before it, over
    the query's window; where the window holds fewer, the query token's state stands in."""
    base = tiny_model("llama")
    model = SharedLLMForCausalLM.from_base(base, injection="joint", n_injected_layers=4, chunk_size=32,
                                          decoder_window=48, tree_depth=2, tokens_per_node=4,
                                          tree_selection="attention", selection_layer=2, query_tokens=4)
    ids = torch.randint(3, 128, (2, 48 + 64))
    zero = torch.zeros(2, dtype=torch.long)
    with torch.no_grad():
        # row 0's query token ends the input (window: the 48 tokens after 2 chunks); row 1's is its second token
        query = model._query_vectors(ids, zero, torch.tensor([111, 1]))
        full = base(ids[:1, 64:], output_hidden_states=True).hidden_states[2][0]
        short = base(ids[1:, :2], output_hidden_states=True).hidden_states[2][0]
    assert query.shape == (2, 4, base.config.hidden_size)
    torch.testing.assert_close(query[0], full[-4:], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(query[1], torch.stack([short[1], short[1], short[0], short[1]]), atol=1e-5, rtol=1e-5)


def test_query_layer_ranks_chunks_by_the_query_tokens_at_its_own_layer():
    """query_layer L2: the Q query tokens' states entering L2 come first, their states entering the scoring layer L1
    follow; the chunk scores are then those of a model scoring at L2 followed by those of one scoring at L1, and the
    leaves chosen are L1's; query_layer equal to the scoring layer changes nothing."""
    torch.manual_seed(0)
    base = tiny_model("llama")
    knobs = dict(injection="joint", n_injected_layers=4, chunk_size=32, decoder_window=48, tree_depth=2,
                 tokens_per_node=4, selected_leaves=1, tree_selection="attention", selection_score="probability",
                 query_tokens=3, query_chunks=1, context_chunks=1)
    split = SharedLLMForCausalLM.from_base(base, selection_layer=3, query_layer=1, **knobs)
    at_1 = SharedLLMForCausalLM.from_base(base, selection_layer=1, **knobs)
    at_3 = SharedLLMForCausalLM.from_base(base, selection_layer=3, **knobs)
    same = SharedLLMForCausalLM.from_base(base, selection_layer=3, query_layer=3, **knobs)
    ids = torch.randint(3, 128, (1, 48 + 96))
    zero, query_index = torch.zeros(1, dtype=torch.long), torch.tensor([143])
    with torch.no_grad():
        hidden = base(ids[:, 96:], output_hidden_states=True).hidden_states  # the window: 48 tokens after 3 chunks
        query = split._query_vectors(ids, zero, query_index)
        torch.testing.assert_close(query, torch.cat([hidden[1][:, -3:], hidden[3][:, -3:]], dim=1), atol=1e-5, rtol=1e-5)
        encoded = {}
        for name, model in dict(split=split, at_1=at_1, at_3=at_3, same=same).items():
            query = model._query_vectors(ids, zero, query_index)
            encoded[name] = model.context_encoder.encode(ids, zero, torch.tensor([3]), zero, query)
    assert split.config.n_query_vectors == 6 and same.config.n_query_vectors == 3
    scores = {name: context.chunk_scores for name, context in encoded.items()}
    columns = 3 * base.config.num_attention_heads
    torch.testing.assert_close(scores["split"][:, :, :columns], scores["at_1"], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(scores["split"][:, :, columns:], scores["at_3"], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(scores["same"], scores["at_3"])
    assert not torch.allclose(scores["at_1"], scores["at_3"])
    torch.testing.assert_close(encoded["split"].layers()[0][0], encoded["at_3"].layers()[0][0])  # the leaves: the scoring layer's


def test_top_chunks_with_a_separate_query_layer_add_its_q_tokens_best_others():
    """V = 2Q query states (query_layer): the Q tokens' at query_layer first, then theirs at the scoring layer with
    the query token's last. Here the query token ranks chunks 0, 1 first, the Q = 2 tokens' best other at the
    scoring layer is chunk 2 and at query_layer (its 0 and 2 taken) chunk 3: k = 2, extra 1 reads 0, 1, 2, 3."""
    from sharedllm.context_encoder import top_chunks

    # (B = 1, n = 5, V * H = 4): 2 tokens at query_layer, 2 at the scoring layer (the query token's last)
    scores = torch.tensor([[[6.0, 0.0, 0.0, 5.0], [0.0, 0.0, 0.0, 4.0], [5.0, 0.0, 9.0, 3.5], [3.0, 0.0, 0.0, 0.0],
                            [0.0, 2.0, 0.0, 0.5]]])
    keys = torch.arange(5).repeat_interleave(2).float()[None, None, :, None]
    context = encoded_context([keys], [keys], torch.tensor([5]), per_chunk=2, chunk_scores=scores)
    read = top_chunks(context, 2, query_tokens=2, extra=1, query_vectors=4)
    assert read.layers()[0][0][0, 0, ::2, 0].tolist() == [0, 1, 2, 3]
    assert read.n_chunks.tolist() == [4]
    assert top_chunks(context, 3, query_tokens=2, extra=1, query_vectors=4) is context  # 5 read of 5: all
    # k = 0: only the Q tokens choose, chunk 2 at the scoring layer and the best other at query_layer, chunk 0
    read = top_chunks(context, 0, query_tokens=2, extra=1, query_vectors=4)
    assert read.layers()[0][0][0, 0, ::2, 0].tolist() == [0, 2]
    assert read.n_chunks.tolist() == [2]


def test_top_chunks_with_several_query_tokens_add_their_best_other_chunks():
    """Q = 2 queries, one head: the query token (the last) ranks chunks 0, 1 first; the earlier token finds chunk 3.
    k = 2 and 1 extra: chunks 0, 1 and 3 are read; without the extra, the query token's 2."""
    from sharedllm.context_encoder import top_chunks

    # (B = 1, n = 5, Q * H = 2) best logits: column 0 the earlier token's, column 1 the query token's
    scores = torch.tensor([[[6.0, 5.0], [0.0, 4.0], [0.0, 1.0], [9.0, 0.0], [0.0, 0.5]]])
    keys = torch.arange(5).repeat_interleave(2).float()[None, None, :, None]
    context = encoded_context([keys], [keys], torch.tensor([5]), per_chunk=2, chunk_scores=scores)
    assert top_chunks(context, 2, query_tokens=2, extra=1).layers()[0][0][0, 0, ::2, 0].tolist() == [0, 1, 3]
    assert top_chunks(context, 2, query_tokens=2).layers()[0][0][0, 0, ::2, 0].tolist() == [0, 1]


def test_leaf_lookback_needs_ranked_leaves():
    with pytest.raises(ValueError, match="leaf_lookback.*needs selected_leaves"):
        wrap(leaf_lookback=4, tree_selection="attention", tree_depth=2, tokens_per_node=4)
    with pytest.raises(ValueError, match="at most the leaf length 8"):
        wrap(leaf_lookback=9, tree_selection="attention", tree_depth=2, tokens_per_node=4, selected_leaves=1)


def test_query_tokens_checks():
    with pytest.raises(ValueError, match="query_tokens"):
        wrap(query_tokens=0, tree_selection="attention")
    with pytest.raises(ValueError, match="selected_leaves < 2\\*\\*tree_depth"):
        wrap(query_tokens=4, tree_selection="attention", tree_depth=1, selected_leaves=2)
    with pytest.raises(ValueError, match="query_chunks.*query_tokens > 1 and context_chunks"):
        wrap(query_chunks=2, query_tokens=4, tree_selection="attention")
    with pytest.raises(ValueError, match="query_chunks"):
        wrap(query_chunks=2, context_chunks=2, tree_selection="attention")
    with pytest.raises(ValueError, match="query_layer.*query_chunks > 0"):
        wrap(query_layer=0, query_tokens=4, tree_selection="attention")
    with pytest.raises(ValueError, match="query_layer.*0..1"):
        wrap(query_layer=2, query_tokens=4, query_chunks=1, context_chunks=2, tree_selection="attention")
