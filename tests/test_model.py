"""SharedLLMForCausalLM on tiny random Llama / Qwen2 / Mistral models: equality, exactness, tree, shapes, I/O."""

import pytest
import torch
from conftest import tiny_model
from transformers import AutoModelForCausalLM

from sharedllm import SharedLLMConfig, SharedLLMForCausalLM
from sharedllm.tree import cosine_half_scores, node_tiling, search_tree

KNOBS = dict(n_injected_layers=2, chunk_size=16, decoder_window=32, tree_depth=2, tokens_per_node=2)


def wrap(base, **overrides):
    return SharedLLMForCausalLM.from_base(base, **{**KNOBS, **overrides}).eval()


def randomise_adapter(model, seed=1):
    """A trained-looking adapter: o_proj no longer zero, so the context really changes the output."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for param in model.adapter_parameters():
            param.copy_(torch.randn(param.shape, generator=generator) * 0.2 + (1.0 if param.dim() == 1 else 0.0))
    return model


def pad_batch(rows, side):
    width = max(len(r) for r in rows)
    ids = torch.zeros(len(rows), width, dtype=torch.long)
    mask = torch.zeros(len(rows), width, dtype=torch.long)
    for i, row in enumerate(rows):
        span = slice(width - len(row), width) if side == "left" else slice(0, len(row))
        ids[i, span], mask[i, span] = row, 1
    return ids, mask


def row_logits(logits, length, side):
    """The real positions of one row of batched decoder logits."""
    return logits[-length:] if side == "left" else logits[:length]


# ---------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("side", ["left", "right"])
def test_untrained_equals_base_within_window(arch, side):
    base = tiny_model(arch)
    model = wrap(base)
    torch.manual_seed(0)
    rows = [torch.randint(3, 128, (n,)) for n in (32, 20, 7)]
    ids, mask = pad_batch(rows, side)
    with torch.no_grad():
        single = model(rows[0][None]).logits[0]
        batched = model(ids, attention_mask=mask).logits
        assert torch.allclose(single, base(rows[0][None]).logits[0], atol=1e-5)
        for i, row in enumerate(rows):
            expected = base(row[None]).logits[0]
            assert torch.allclose(row_logits(batched[i], len(row), side), expected, atol=1e-5), f"row {i}"


def test_untrained_ignores_context(arch):
    """o_proj starts at zero: with context, the decoder window's logits are the base model's on the window."""
    base = tiny_model(arch)
    model = wrap(base)
    ids = torch.randint(3, 128, (1, 100))
    with torch.no_grad():
        out = model(ids)
        window = ids[:, out.context_lengths[0] :]
        assert out.context_lengths.tolist() == [80]  # k = ceil((100 - 32) / 16) = 5 chunks
        assert torch.allclose(out.logits, base(window).logits, atol=1e-5)


@pytest.mark.parametrize("side", ["left", "right"])
@pytest.mark.parametrize("node_encoding", ["chunk", "node"])
def test_batch_with_padding_equals_single_rows(arch, side, node_encoding):
    model = randomise_adapter(wrap(tiny_model(arch), node_encoding=node_encoding))
    torch.manual_seed(0)
    rows = [torch.randint(3, 128, (n,)) for n in (100, 61, 30)]  # 5, 2 and 0 context chunks
    ids, mask = pad_batch(rows, side)
    with torch.no_grad():
        batched = model(ids, attention_mask=mask)
        for i, row in enumerate(rows):
            single = model(row[None])
            assert batched.context_lengths[i] == single.context_lengths[0]
            n = single.logits.shape[1]
            assert torch.allclose(row_logits(batched.logits[i], n, side), single.logits[0], atol=1e-4), f"row {i}"


def test_context_changes_output_once_trained():
    base = tiny_model("llama")
    model = randomise_adapter(wrap(base))
    ids = torch.randint(3, 128, (1, 100))
    other = ids.clone()
    other[0, :40] = torch.randint(3, 128, (40,))  # change only the context
    with torch.no_grad():
        assert not torch.allclose(model(ids).logits, model(other).logits, atol=1e-3)


@pytest.mark.parametrize("node_encoding", ["chunk", "node"])
@pytest.mark.parametrize("arch_name", ["llama", "qwen2"])
def test_generate_matches_full_forward_across_rollover(arch_name, node_encoding):
    """Each generated step's logits equal a full forward of the same prefix (query fixed at the prompt's end),
    including the steps where the decoder window rolls whole chunks into context."""
    model = randomise_adapter(wrap(tiny_model(arch_name), node_encoding=node_encoding))
    torch.manual_seed(0)
    prompt = torch.randint(3, 128, (1, 50))  # 2 chunks of context, window of 18 tokens
    n_new = 40  # the window passes Ld = 32 twice
    with torch.no_grad():
        out = model.generate(
            prompt, max_new_tokens=n_new, min_new_tokens=n_new, do_sample=False,
            output_logits=True, return_dict_in_generate=True, pad_token_id=0,
        )
        sequence = out.sequences
        rollovers = 0
        for step, step_logits in enumerate(out.logits):
            prefix = sequence[:, : prompt.shape[1] + step]
            full = model(prefix, query_position=prompt.shape[1] - 1)
            assert torch.allclose(step_logits, full.logits[:, -1], atol=1e-4), f"step {step}"
            rollovers += int(step > 0 and full.context_lengths[0] != model(prefix[:, :-1]).context_lengths[0])
        assert rollovers >= 2


def test_generate_batch_left_padded_matches_single():
    model = randomise_adapter(wrap(tiny_model("llama")))
    torch.manual_seed(0)
    rows = [torch.randint(3, 128, (n,)) for n in (70, 45)]
    ids, mask = pad_batch(rows, "left")
    kwargs = dict(max_new_tokens=25, min_new_tokens=25, do_sample=False, pad_token_id=0)
    with torch.no_grad():
        batched = model.generate(ids, attention_mask=mask, **kwargs)[:, ids.shape[1] :]
        for i, row in enumerate(rows):
            single = model.generate(row[None], **kwargs)[0, len(row) :]
            assert torch.equal(batched[i], single), f"row {i}"


def strong_context_model(arch_name="llama", scale=8.0):
    """A trained-looking adapter whose cross-attention dominates the residual stream: the context decides the argmax."""
    model = randomise_adapter(wrap(tiny_model(arch_name)))
    with torch.no_grad():
        for attention in model.cross_attention:
            attention.o_proj.weight.mul_(scale)
    return model


def generate_with_logits(model, ids, mask, n_new):
    out = model.generate(
        ids, attention_mask=mask, max_new_tokens=n_new, min_new_tokens=n_new, do_sample=False,
        output_logits=True, return_dict_in_generate=True, pad_token_id=0,
    )
    return out.sequences[:, ids.shape[1] :], torch.stack(out.logits, dim=1)  # (B, n_new), (B, n_new, V)


@pytest.mark.parametrize("side", ["left", "right"])
def test_generate_batch_rows_roll_over_at_different_steps(side):
    """Rows of 30, 40 and 50 tokens (0, 1, 2 chunks; Ld = 32, C = 16): in 12 steps row 0 rolls over at step 3,
    row 1 at step 9, row 2 never. Every row's tokens and logits equal its single-row run, step by step."""
    model = strong_context_model()
    torch.manual_seed(0)
    rows = [torch.randint(3, 128, (n,)) for n in (30, 40, 50)]
    ids, mask = pad_batch(rows, side)
    n_new = 12
    with torch.no_grad():
        # the planted context really decides: changing only row 2's context changes its greedy tokens
        other = rows[2].clone()
        other[:16] = torch.randint(3, 128, (16,))
        assert not torch.equal(generate_with_logits(model, rows[2][None], None, n_new)[0],
                               generate_with_logits(model, other[None], None, n_new)[0])
        tokens, logits = generate_with_logits(model, ids, mask, n_new)
        for i, row in enumerate(rows):
            single_tokens, single_logits = generate_with_logits(model, row[None], None, n_new)
            assert torch.equal(tokens[i], single_tokens[0]), f"row {i} tokens"
            assert torch.allclose(logits[i], single_logits[0], atol=1e-4), f"row {i} logits"


def test_append_chunks_keeps_each_rows_old_chunks():
    """Row 0 holds no chunk and gains one, row 1 holds three and gains none (the issue-14 repro)."""
    from sharedllm.context_encoder import EncodedContext, append_chunks

    old = torch.zeros(2, 1, 6, 1)
    old[1, 0, :, 0] = torch.tensor([1.0, 1, 2, 2, 3, 3])
    new = torch.full((2, 1, 2, 1), 9.0)
    merged = append_chunks(
        EncodedContext([old], [old], torch.tensor([0, 3]), 2), EncodedContext([new], [new], torch.tensor([1, 0]), 2)
    )
    assert merged.n_chunks.tolist() == [1, 3]
    assert merged.keys[0][1, 0, :, 0].tolist() == [1, 1, 2, 2, 3, 3]
    assert merged.keys[0][0, 0, :2, 0].tolist() == [9, 9]


def test_lower_model_is_the_base_model():
    base = tiny_model("llama")
    model = wrap(base)
    for i in range(model.config.n_injected_layers):
        assert model.decoder.layers[i] is base.model.layers[i]
    assert model.decoder.embed_tokens is base.model.embed_tokens
    base_ids = {id(p) for p in base.parameters()}
    new = [p for p in model.parameters() if id(p) not in base_ids]
    assert {id(p) for p in new} == {id(p) for p in model.adapter_parameters()}
    hidden, heads = base.config.hidden_size, base.config.num_attention_heads * base.config.head_dim
    assert sum(p.numel() for p in new) == model.config.n_injected_layers * (2 * hidden * heads + hidden)
    assert all((attn.o_proj.weight == 0).all() for attn in model.cross_attention)


# -- tree ---------------------------------------------------------------------------------------------------------


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
    assert len(context.keys) == model.config.n_injected_layers
    for keys in context.keys:
        assert keys.shape == (2, 2, 5 * per_chunk, 16)  # (B, Hkv, chunks * P * (D + 1), head_dim)


def test_chunk_rotary_offsets_are_applied():
    """Two identical chunks: the second's keys are the first's rotated by one more position (offset c = 1)."""
    from transformers.models.llama.modeling_llama import apply_rotary_pos_emb

    model = wrap(tiny_model("llama"), tree_depth=0, tokens_per_node=16)  # keep every token: no compression
    chunk = torch.randint(3, 128, (16,))
    with torch.no_grad():
        keys = model.context_encoder.encode_by_chunk(torch.stack([chunk, chunk]), torch.tensor([0, 1]), torch.zeros(2, 64))[0]
        first, second = keys[0][0:1], keys[0][1:2]  # layer 0, (1, Hkv, 16, hd)
        cos, sin = model.decoder.rotary_emb(first, torch.ones(1, 16, dtype=torch.long))
        shifted, _ = apply_rotary_pos_emb(first, first, cos, sin)
    assert not torch.allclose(first, second, atol=1e-4)
    assert torch.allclose(shifted, second, atol=1e-4)


def test_default_query_is_last_token_before_scored_span():
    model = randomise_adapter(wrap(tiny_model("llama")))
    ids = torch.randint(3, 128, (1, 100))
    labels = torch.full_like(ids, -100)
    labels[0, 90:] = ids[0, 90:]
    with torch.no_grad():
        default = model(ids, labels=labels)
        explicit = model(ids, labels=labels, query_position=89)
        peeking = model(ids, labels=labels, query_position=99)
    assert torch.allclose(default.logits, explicit.logits)
    assert torch.allclose(default.loss, explicit.loss)
    assert not torch.allclose(default.logits, peeking.logits, atol=1e-4)


# -- saving, loading, errors --------------------------------------------------------------------------------------


def test_save_reload_identical_and_wrong_base_fails(tmp_path):
    base = tiny_model("qwen2")
    base.save_pretrained(tmp_path / "base")
    model = randomise_adapter(SharedLLMForCausalLM.from_base(str(tmp_path / "base"), **KNOBS))
    model.save_pretrained(tmp_path / "adapter")
    files = sorted(p.name for p in (tmp_path / "adapter").iterdir())
    assert files == ["config.json", "model.safetensors"]
    ids = torch.randint(3, 128, (1, 90))
    with torch.no_grad():
        expected = model(ids).logits
        reloaded = SharedLLMForCausalLM.from_pretrained(tmp_path / "adapter")
        assert torch.equal(reloaded(ids).logits, expected)
        auto = AutoModelForCausalLM.from_pretrained(tmp_path / "adapter")
        assert isinstance(auto, SharedLLMForCausalLM)
        assert torch.equal(auto(ids).logits, expected)
    with pytest.raises(ValueError, match="fingerprint"):
        SharedLLMForCausalLM.from_pretrained(tmp_path / "adapter", base=tiny_model("qwen2", seed=5))


@pytest.mark.parametrize(
    "overrides,message",
    [
        (dict(chunk_size=16, tree_depth=2, tokens_per_node=8), "fewer than tokens_per_node"),
        (dict(n_injected_layers=9), "exceeds the base model's depth"),
        (dict(chunk_size=20, tree_depth=3), "divisible by 2\\*\\*tree_depth"),
        (dict(tree_selection="random"), "tree_selection must be one of"),
        (dict(node_compression="mean", chunk_size=24, tree_depth=1, tokens_per_node=5), "divisible"),
    ],
)
def test_bad_knobs_fail_at_config_time(overrides, message):
    with pytest.raises(ValueError, match=message):
        wrap(tiny_model("llama"), **overrides)


def test_empty_and_malformed_inputs_fail_clearly():
    model = wrap(tiny_model("llama"))
    with pytest.raises(ValueError, match="non-empty"):
        model(torch.zeros(1, 0, dtype=torch.long))
    with pytest.raises(ValueError, match="all-zero row"):
        model(torch.ones(2, 5, dtype=torch.long), attention_mask=torch.tensor([[1] * 5, [0] * 5]))
    with pytest.raises(ValueError, match="contiguous"):
        model(torch.ones(1, 5, dtype=torch.long), attention_mask=torch.tensor([[1, 0, 1, 1, 1]]))
    with pytest.raises(ValueError, match="query_position"):
        model(torch.ones(1, 5, dtype=torch.long), query_position=7)


def test_config_roundtrip_keeps_text_config(tmp_path):
    model = wrap(tiny_model("mistral"))
    model.config.save_pretrained(tmp_path)
    config = SharedLLMConfig.from_pretrained(tmp_path)
    assert config.text_config.model_type == "mistral"
    assert config.chunk_size == 16 and config.base_fingerprint == model.config.base_fingerprint


@pytest.mark.parametrize("arch_name", ["llama", "qwen2"])
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
            hidden = layer(hidden, position_embeddings=rope, position_ids=positions, past_key_values=cache, use_cache=True)
    for i in range(3):
        assert torch.allclose(keys[i], cache.layers[i].keys, atol=1e-5)
        assert torch.allclose(values[i], cache.layers[i].values, atol=1e-5)
