"""SharedLLMForCausalLM on tiny random Llama / Qwen2 / Mistral models: equality, exactness, the query, I/O.

The lower model, the tree and the config have their own files: test_context_encoder.py, test_tree.py, test_config.py."""

import pytest
import torch
from conftest import tiny_model
from transformers import AutoModelForCausalLM

from sharedllm import SharedLLMForCausalLM

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
@pytest.mark.parametrize("arch_name", ["llama", "qwen2", "qwen3"])
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


def test_what_the_window_reads_is_built_once_per_context(monkeypatch):
    """Decode steps reuse the injected context (a top-k gather in every layer) until a roll-over replaces it."""
    model = randomise_adapter(wrap(tiny_model("llama"), injection="joint", tree_selection="attention",
                                       context_chunks=1))
    builds = []
    build = model._injected_context
    monkeypatch.setattr(model, "_injected_context", lambda *args: builds.append(1) or build(*args))
    prompt = torch.randint(3, 128, (1, 50))  # 2 chunks of context, window of 18 tokens
    with torch.no_grad():  # the window reaches Ld = 32 after 14 new tokens: one chunk rolls over
        model.generate(prompt, max_new_tokens=20, min_new_tokens=20, do_sample=False, pad_token_id=0)
    assert len(builds) == 2  # the prefill's, the roll-over's (not one per each of the 19 decode steps)


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


# -- the tree's query ---------------------------------------------------------------------------------------------


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
    # the right base, loaded in float16 from its float32 checkpoint: said so, not "another base"
    with pytest.raises(ValueError, match="loaded in float16, whose rounding of a float32 checkpoint"):
        SharedLLMForCausalLM.from_pretrained(tmp_path / "adapter", dtype=torch.float16)


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
