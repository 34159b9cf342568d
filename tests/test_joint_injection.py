"""Joint injection (config.injection = "joint"): the context keys/values join each injected layer's own
self-attention softmax. Checked against the base model itself, and for generation and the context cache."""

import pytest
import torch
from conftest import tiny_model
from test_context_cache import DOCUMENT_LENGTH, assert_cached_answers_equal_scratch
from test_context_cache import setup as cache_setup
from test_model import pad_batch, wrap


CHUNK, WINDOW = 16, 24


def joint(base, **overrides):
    knobs = dict(injection="joint", n_injected_layers=base.config.num_hidden_layers, chunk_size=CHUNK,
                 decoder_window=WINDOW, tree_depth=0, tokens_per_node=CHUNK)
    return wrap(base, **{**knobs, **overrides})


def reference_logits(base, ids, n_chunks, overlap, n_injected=None, spacing=0):
    """The base over [sink, prefix_0, chunk_0, ..., prefix_{n-1}, chunk_{n-1}, window] with a mask: each chunk sees
    its own prefix and itself; the window sees the sink, every chunk token (no prefix) and itself causally. A chunk's prefix is
    the `overlap` tokens before it in the text (BOS alone for the first; nothing with overlap 0). Every chunk sits at
    the positions just before the window (`spacing` g: chunk c moved by (c - n + 1)g, the sink before the first). In layers at
    or above `n_injected` (default: none) the window sees the sink and itself only. This is what joint injection with
    nothing compressed must compute."""
    chunks, window = ids[: n_chunks * CHUNK].view(n_chunks, CHUNK), ids[n_chunks * CHUNK :]
    shift = lambda c: (c - n_chunks + 1) * spacing  # noqa: E731  chunk c's place before the window
    # the attention sink: BOS alone just before the first chunk, seen by the window only
    pieces, positions, groups = [torch.tensor([base.config.bos_token_id])], [torch.tensor([-CHUNK - 1 + shift(0)])], [torch.tensor([-1])]
    is_prefix = [torch.zeros(1, dtype=torch.bool)]
    for c in range(n_chunks):
        prefix = chunks[c - 1, CHUNK - overlap :] if c else torch.tensor([base.config.bos_token_id])[:overlap]
        pieces += [prefix, chunks[c]]
        positions += [torch.arange(-CHUNK - len(prefix), 0) + shift(c)]
        groups += [torch.full((len(prefix) + CHUNK,), c)]
        is_prefix += [torch.ones(len(prefix), dtype=torch.bool), torch.zeros(CHUNK, dtype=torch.bool)]
    sequence = torch.cat(pieces + [window])
    position_ids = torch.cat(positions + [torch.arange(len(window))]) + (n_chunks + 2) * CHUNK
    group = torch.cat(groups + [torch.full((len(window),), n_chunks)])
    is_prefix = torch.cat(is_prefix + [torch.zeros(len(window), dtype=torch.bool)])
    index = torch.arange(len(sequence))
    causal = index[None, :] <= index[:, None]
    same_chunk = group[None, :] == group[:, None]
    window_row = (group == n_chunks)[:, None]
    allowed = causal & (same_chunk | (window_row & ~is_prefix[None, :]))
    upper_allowed = allowed & ~(window_row & (group[None, :] >= 0) & (group[None, :] < n_chunks))  # no chunk token
    to_mask = lambda a: torch.zeros(a.shape).masked_fill(~a, torch.finfo(torch.float32).min)[None, None]  # noqa: E731
    mask, upper_mask = to_mask(allowed), to_mask(upper_allowed)
    n_injected = base.config.num_hidden_layers if n_injected is None else n_injected
    decoder = base.model
    hidden = decoder.embed_tokens(sequence[None])
    position_embeddings = decoder.rotary_emb(hidden, position_ids[None])
    for index, layer in enumerate(decoder.layers):  # the stock layers, each with its own mask
        hidden = layer(hidden, attention_mask=mask if index < n_injected else upper_mask,
                       position_embeddings=position_embeddings, position_ids=position_ids[None])
    logits = base.lm_head(decoder.norm(hidden))[0]
    return logits[-len(window) :]


@pytest.mark.parametrize("arch_name", ["llama", "qwen2", "qwen3"])
@pytest.mark.parametrize("n_chunks", [1, 3])
@pytest.mark.parametrize("overlap", [0, 1, 5])
def test_uncompressed_joint_injection_is_the_base_over_its_chunks(arch_name, n_chunks, overlap):
    base = tiny_model(arch_name)
    base.set_attn_implementation("eager")  # the reference passes a custom 4-D float mask
    model = joint(base, chunk_overlap=overlap)
    ids = torch.randint(3, 128, (n_chunks * CHUNK + WINDOW,), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        out = model(ids[None])
        expected = reference_logits(base, ids, n_chunks, overlap)
    assert out.context_lengths.tolist() == [n_chunks * CHUNK]
    assert torch.allclose(out.logits[0], expected, atol=1e-4), (out.logits[0] - expected).abs().max()
    # the context matters: the window alone gives other logits
    with torch.no_grad():
        window_only = base(ids[None, n_chunks * CHUNK :]).logits[0]
    assert not torch.allclose(out.logits[0], window_only, atol=1e-2)


SPACED = dict(tree_selection="attention", context_chunks=4)  # 4 >= the chunks here: every chunk is read


@pytest.mark.parametrize("n_chunks", [1, 3])
@pytest.mark.parametrize("overlap", [0, 5])
@pytest.mark.parametrize("spacing", [5, CHUNK])
def test_spaced_chunks_sit_in_text_order(n_chunks, overlap, spacing):
    """chunk_spacing g: chunk c of n moved by (c - n + 1)g from the stacked place, the sink before the first (g = C:
    side by side); with one chunk that is where stacking puts it."""
    base = tiny_model("llama")
    base.set_attn_implementation("eager")
    ids = torch.randint(3, 128, (n_chunks * CHUNK + WINDOW,), generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        out = joint(base, chunk_overlap=overlap, chunk_spacing=spacing, **SPACED)(ids[None]).logits[0]
        expected = reference_logits(base, ids, n_chunks, overlap, spacing=spacing)
        stacked = reference_logits(base, ids, n_chunks, overlap)
    assert torch.allclose(out, expected, atol=1e-4), (out - expected).abs().max()
    assert torch.allclose(out, stacked, atol=1e-4) == (n_chunks == 1)


def test_spaced_chunks_with_m_below_n():
    """Layers above M read the sink (moved with the chunks) and the window only."""
    base = tiny_model("llama")
    base.set_attn_implementation("eager")
    ids = torch.randint(3, 128, (3 * CHUNK + WINDOW,), generator=torch.Generator().manual_seed(4))
    with torch.no_grad():
        out = joint(base, n_injected_layers=1, chunk_overlap=5, chunk_spacing=CHUNK, **SPACED)(ids[None]).logits[0]
        expected = reference_logits(base, ids, 3, 5, n_injected=1, spacing=CHUNK)
    assert torch.allclose(out, expected, atol=1e-4), (out - expected).abs().max()


def test_chunk_spacing_is_refused_where_it_does_not_fit():
    base = tiny_model("llama")
    with pytest.raises(ValueError, match="chunk_spacing lays the chunks read out.*injection='joint' and context_chunks"):
        joint(base, chunk_spacing=CHUNK, tree_selection="attention")
    with pytest.raises(ValueError, match="chunk_spacing must be >= 0"):
        joint(base, chunk_spacing=-1, **SPACED)
    with pytest.raises(ValueError, match="with chunk_spacing above 0 they are not stacked"):
        joint(base, context_bias="log_chunks", chunk_spacing=CHUNK, **SPACED)
    trained = base.config.max_position_embeddings
    fits = (trained - CHUNK - 1 - WINDOW) // CHUNK + 1  # chunks that fit side by side with the sink and window
    joint(base, chunk_spacing=CHUNK, **{**SPACED, "context_chunks": fits})
    with pytest.raises(ValueError, match="past the base's trained"):
        joint(base, chunk_spacing=CHUNK, **{**SPACED, "context_chunks": fits + 1})
    joint(base, chunk_spacing=CHUNK // 2, **{**SPACED, "context_chunks": fits + 1})  # closer spacing fits more


@pytest.mark.parametrize("n_injected", [1, 2])
def test_layers_above_m_read_the_sink_alone(n_injected):
    """Joint injection in the bottom M < N layers: those read sink + chunks + window, the layers above read sink +
    window (their window's first token has context below, so it is no sink: without one, book perplexity at 8K went
    from 49 to 176 at M = 18, results/experiments/frontier/)."""
    base = tiny_model("llama")
    base.set_attn_implementation("eager")
    assert n_injected < base.config.num_hidden_layers
    model = joint(base, n_injected_layers=n_injected, chunk_overlap=5)
    ids = torch.randint(3, 128, (3 * CHUNK + WINDOW,), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        out = model(ids[None]).logits[0]
        expected = reference_logits(base, ids, 3, 5, n_injected=n_injected)
        all_layers = reference_logits(base, ids, 3, 5)
    assert torch.allclose(out, expected, atol=1e-4), (out - expected).abs().max()
    assert not torch.allclose(out, all_layers, atol=1e-2)


def test_joint_injection_adds_no_parameters_and_saves(tmp_path):
    model = joint(tiny_model())
    assert list(model.adapter_parameters()) == []
    model.save_pretrained(tmp_path)
    loaded = type(model).from_pretrained(tmp_path, base=model.base)
    ids = torch.randint(3, 128, (1, 60))
    with torch.no_grad():
        assert torch.equal(loaded(ids).logits, model(ids).logits)


@pytest.mark.parametrize("side", ["left", "right"])
@pytest.mark.parametrize("positions", ["stacked", "spaced"])
def test_joint_batched_generation_equals_single_rows(side, positions):
    """Rows of different lengths roll chunks into context at different steps; padding must not leak (spaced: each
    row's chunks move by its own count)."""
    spaced = dict(SPACED, context_chunks=2, chunk_spacing=CHUNK) if positions == "spaced" else {}  # 2 of up to 5
    model = joint(tiny_model(), tree_depth=1, tokens_per_node=4, leaf_tokens_per_node=8, **spaced)
    generator = torch.Generator().manual_seed(3)
    rows = [torch.randint(3, 128, (n,), generator=generator) for n in (70, 41)]
    ids, mask = pad_batch(rows, side)
    settings = dict(max_new_tokens=30, min_new_tokens=30, do_sample=False, pad_token_id=0)
    with torch.no_grad():
        batched = model.generate(ids, attention_mask=mask, **settings)[:, ids.shape[1] :]
        for i, row in enumerate(rows):
            single = model.generate(row[None], **settings)[0, len(row) :]
            assert torch.equal(batched[i], single), i


@pytest.mark.parametrize("selection", ["query", "attention"])
def test_joint_context_cache_answers_equal_from_scratch(selection):
    model, document, questions = cache_setup(selection, injection="joint", n_injected_layers=4)
    context = assert_cached_answers_equal_scratch(model, document, questions)
    assert DOCUMENT_LENGTH // 16 == context.n_chunks


def test_joint_needs_whole_chunk_encoding():
    with pytest.raises(ValueError, match="injection='joint'.*node_encoding='chunk'"):
        joint(tiny_model(), node_encoding="node")


@pytest.mark.parametrize("overlap", [1, 5, 64])
def test_generation_across_roll_overs_equals_a_forward_from_scratch(overlap):
    """A chunk that rolls out of the window during generation is read after the tokens before it, as a forward
    over the whole sequence reads it: step logits equal the from-scratch forward's (no tree: no query to differ).
    An overlap over C reads the whole previous chunk."""
    model = joint(tiny_model(), chunk_overlap=overlap)
    prompt = torch.randint(3, 128, (1, 50), generator=torch.Generator().manual_seed(5))
    with torch.no_grad():
        out = model.generate(prompt, max_new_tokens=40, min_new_tokens=40, do_sample=False, pad_token_id=0,
                             output_logits=True, return_dict_in_generate=True)
        for step in (0, 9, 10, 25, 39):  # the window (Ld 24, C 16) rolls a chunk every 16 tokens
            expected = model(out.sequences[:, : prompt.shape[1] + step]).logits[0, -1]
            assert torch.allclose(out.logits[step][0], expected, atol=1e-4), step


def test_a_cross_adapter_is_not_read_with_joint_injection(tmp_path):
    """Overrides may change how an adapter reads, not which weights it has: one message, not a key mismatch."""
    cross = wrap(tiny_model())
    cross.save_pretrained(tmp_path)
    with pytest.raises(ValueError, match="trained with injection='cross'; its weights do not fit injection='joint'"):
        type(cross).from_pretrained(tmp_path, base=cross.base, injection="joint")
    with pytest.raises(ValueError, match="trained with n_injected_layers=2"):
        type(cross).from_pretrained(tmp_path, base=cross.base, n_injected_layers=3)


def test_a_joint_adapter_reads_at_any_number_of_injected_layers(tmp_path):
    """A joint adapter has no per-layer injection weights, so M is a reading knob (the M frontier reads one adapter
    at several M): loaded with n_injected_layers=1 it computes what a joint model built with M = 1 computes."""
    base = tiny_model()
    every_layer = joint(base)
    every_layer.save_pretrained(tmp_path)
    loaded = type(every_layer).from_pretrained(tmp_path, base=base, n_injected_layers=1)
    assert loaded.config.n_injected_layers == 1
    ids = torch.randint(3, 128, (1, 3 * CHUNK + WINDOW), generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        logits = loaded(ids).logits
        assert torch.allclose(logits, joint(base, n_injected_layers=1)(ids).logits, atol=1e-5)
        assert not torch.allclose(logits, every_layer(ids).logits, atol=1e-3)  # M changed what it reads


def test_log_chunks_bias_gives_n_copies_of_a_chunk_the_weight_of_one():
    """context_bias="log_chunks": n identical chunks (read alone, so their keys are equal) weigh in the softmax as
    one chunk does, so the window's logits equal those with the chunk once; without the bias they differ."""
    base = tiny_model()
    chunk, window = torch.randint(3, 128, (CHUNK,)), torch.randint(3, 128, (WINDOW,))
    once, thrice = torch.cat([chunk, window])[None], torch.cat([chunk, chunk, chunk, window])[None]
    with torch.no_grad():
        biased = joint(base, chunk_overlap=0, context_bias="log_chunks")
        assert torch.allclose(biased(thrice).logits, biased(once).logits, atol=1e-5)
        plain = joint(base, chunk_overlap=0)
        assert not torch.allclose(plain(thrice).logits, plain(once).logits, atol=1e-3)


def test_the_packaged_joint_preset_is_config_only():
    """adapters/smollm2-135m-joint: a valid config for every layer of its base, and a weights file with no tensor."""
    from pathlib import Path

    from safetensors.torch import load_file

    from sharedllm import SharedLLMConfig

    folder = Path(__file__).resolve().parents[1] / "adapters" / "smollm2-135m-joint"
    config = SharedLLMConfig.from_pretrained(folder)
    assert config.injection == "joint" and config.n_injected_layers == config.text_config.num_hidden_layers
    assert config.base_model == "sharedllm-default:SmolLM2-135M-Instruct"
    assert load_file(str(folder / "model.safetensors")) == {}
