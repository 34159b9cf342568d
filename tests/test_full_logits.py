"""full_logits: logits for every input position, each span read by the decoder with the context before it compressed.

The contract harnesses rely on: logits.shape[1] == input length, position p's logits depend on tokens 0..p only,
whatever the row's length, padding side (with or without an attention mask) or the other rows of the batch.
"""

import pytest
import torch
import torch.nn.functional as F
from conftest import tiny_model
from test_model import KNOBS, pad_batch, randomise_adapter, strong_context_model, wrap

LD, C = KNOBS["decoder_window"], KNOBS["chunk_size"]


def span_reference(model, ids: torch.Tensor) -> torch.Tensor:
    """(L, V) logits built by hand from ordinary decoder-window forwards: the first Ld - 1 positions from the
    first window, then every C positions from the prefix of Ld + jC tokens (filled with token 0 past the row)
    with the query at the span's first position."""
    n, rows = len(ids), []
    with torch.no_grad():
        rows.append(model(ids[None, : min(LD, n)]).logits[0, : LD - 1])
        j = 1
        while LD + (j - 1) * C - 1 < n:
            first = LD + (j - 1) * C - 1
            prefix = torch.zeros(LD + j * C, dtype=torch.long)
            prefix[: min(n, len(prefix))] = ids[: len(prefix)]
            out = model(prefix[None], query_position=first)
            assert out.context_lengths[0] == j * C
            rows.append(out.logits[0, first - j * C : first - j * C + C])
            j += 1
    return torch.cat(rows)[:n]


@pytest.mark.parametrize("arch_name", ["llama", "qwen2", "qwen3"])
@pytest.mark.parametrize("n", [20, 31, 32, 33, 47, 48, 49, 100])
def test_full_logits_are_the_span_by_span_decoder_logits(arch_name, n):
    model = randomise_adapter(wrap(tiny_model(arch_name)))
    ids = torch.randint(3, 128, (n,), generator=torch.Generator().manual_seed(n))
    with torch.no_grad():
        out = model(ids[None], full_logits=True)
    assert out.logits.shape == (1, n, 128)
    assert torch.allclose(out.logits[0], span_reference(model, ids), atol=1e-5)


def test_full_logits_are_causal_and_cover_the_context():
    """Logits of a prefix equal the first positions of the whole input's; the context part is not zero."""
    model = strong_context_model()
    ids = torch.randint(3, 128, (1, 120), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        whole = model(ids, full_logits=True).logits
        for n in (31, 32, 33, 48, 49, 64, 65, 119):
            assert torch.allclose(model(ids[:, :n], full_logits=True).logits, whole[:, :n], atol=1e-5), n
    assert (whole.abs().sum(-1) > 0).all()


@pytest.mark.parametrize("side", ["left", "right", "right-no-mask"])
def test_full_logits_do_not_depend_on_batch_or_padding(side):
    model = strong_context_model()
    generator = torch.Generator().manual_seed(3)
    rows = [torch.randint(3, 128, (n,), generator=generator) for n in (150, 97, 40, 3)]
    ids, mask = pad_batch(rows, "left" if side == "left" else "right")
    with torch.no_grad():
        if side == "right-no-mask":  # as lm-eval calls a causal LM: pads are ordinary tokens after the row
            batched = model(ids, full_logits=True).logits
        else:
            batched = model(ids, attention_mask=mask, full_logits=True).logits
        for i, row in enumerate(rows):
            single = model(row[None], full_logits=True).logits[0]
            got = batched[i, -len(row) :] if side == "left" else batched[i, : len(row)]
            assert torch.allclose(got, single, atol=1e-5), f"row {i}"


def test_full_logits_loss_covers_every_position_and_config_switch():
    model = randomise_adapter(wrap(tiny_model("llama")))
    ids = torch.randint(3, 128, (2, 90), generator=torch.Generator().manual_seed(4))
    with torch.no_grad():
        out = model(ids, labels=ids, full_logits=True)
        expected = F.cross_entropy(out.logits[:, :-1].reshape(-1, 128), ids[:, 1:].reshape(-1))
        assert torch.allclose(out.loss, expected, atol=1e-6)
        model.config.full_logits = True  # what a harness that only calls model(ids) is told to set
        assert torch.equal(model(ids).logits, out.logits)
        assert model(ids, full_logits=False).logits.shape[1] == 90 - model(ids, full_logits=False).context_lengths[0]
        with pytest.raises(ValueError, match="query_position does not apply with full_logits"):
            model(ids, query_position=5)


@pytest.mark.parametrize("knobs", [
    {},  # cross injection, the cosine tree
    {"injection": "joint", "chunk_overlap": 4, "tree_selection": "attention", "selected_leaves": 1, "context_chunks": 2},
])
def test_full_logits_run_the_lower_pass_once_per_chunk(knobs, monkeypatch):
    """Span j reads the j chunks before it; each chunk's lower pass runs once for the whole call (not once per span
    that reads it), and the logits are still the span-by-span decoder logits."""
    model = wrap(tiny_model("llama"), **knobs)
    if model.config.injection == "cross":
        model = randomise_adapter(model)
    n = 150  # (n - LD) / C spans after the first: 8 chunks, 36 chunk reads
    ids = torch.randint(3, 128, (n,), generator=torch.Generator().manual_seed(7))
    encoded = []
    lower_chunks = model.context_encoder.lower_chunks
    monkeypatch.setattr(model.context_encoder, "lower_chunks",
                        lambda chunk_ids, *args, **kwargs: encoded.append(len(chunk_ids)) or lower_chunks(chunk_ids, *args, **kwargs))
    with torch.no_grad():
        out = model(ids[None], full_logits=True)
    assert sum(encoded) == (n - LD) // C + 1  # chunks 0..7: the last span's forward holds 8
    assert torch.allclose(out.logits[0], span_reference(model, ids), atol=1e-5)


@pytest.mark.parametrize("knobs", [
    {},  # cross injection, the cosine tree
    {"injection": "joint", "chunk_overlap": 4, "tree_selection": "attention", "selected_leaves": 1, "context_chunks": 2},
])
def test_prompts_reusing_chunk_encodings_encode_only_the_chunks_they_do_not_share(knobs, monkeypatch):
    """Inside `reusing_chunk_encodings`, a prompt that differs from the one before in one token (a passkey trial's
    needle) runs the lower pass of the chunks that token changes only (its own, and under joint injection the next
    one, which reads it before itself), and its logits are those of a prompt encoded anew; the memo holds one
    prompt's chunks, even while a prompt sharing none of them is encoded."""
    model = wrap(tiny_model("llama"), **knobs)
    if model.config.injection == "cross":
        model = randomise_adapter(model)
    n = 150  # 8 chunks of C = 16 before a window of LD = 32
    first = torch.randint(3, 128, (1, n), generator=torch.Generator().manual_seed(7))
    second = first.clone()
    second[0, 3 * C + 14] = (second[0, 3 * C + 14] + 1) % 125 + 3  # in chunk 3, 2 tokens before its end
    unrelated = torch.randint(3, 128, (1, n), generator=torch.Generator().manual_seed(8))
    encoded = []
    lower_chunks = model.context_encoder.lower_chunks
    monkeypatch.setattr(model.context_encoder, "lower_chunks",
                        lambda chunk_ids, *args, **kwargs: encoded.append(len(chunk_ids)) or lower_chunks(chunk_ids, *args, **kwargs))
    with torch.no_grad():
        anew = [model(ids, use_cache=True).logits for ids in (first, second, unrelated, unrelated)]
        encoded.clear()
        with model.reusing_chunk_encodings():
            reused = []
            held = []
            for ids in (first, second, unrelated, unrelated):
                reused.append(model(ids, use_cache=True).logits)
                reused.append(encoded.copy())
                encoded.clear()
                held.append(len(model._chunk_memo.kept))
    assert [sum(r) for r in reused[1::2]] == [8, 1 if model.config.injection == "cross" else 2, 8, 0]
    # one chunk per index: a new prompt's chunk replaces the one the prompt before left there (never 16 kept)
    assert held == [8, 8, 8, 8] and model._chunk_memo is None
    assert all(torch.equal(a, b) for a, b in zip(anew, reused[0::2]))


@pytest.mark.parametrize("knobs", [
    {},  # cross injection: a chunk's pass reads its index (its rotary offset), so a shifted window shares none
    {"injection": "joint", "chunk_overlap": 4, "tree_selection": "attention", "selected_leaves": 1, "context_chunks": 2},
])
def test_windows_of_one_text_c_tokens_apart_share_their_chunks_under_joint_injection(knobs, monkeypatch):
    """Held-out windows of one document whose starts differ by C cut it into the same chunks at other indexes:
    joint injection encodes a chunk the same at any index, so inside `reusing_chunk_encodings` the second window
    runs the lower pass of its first chunk (nothing before it now) and its last only, and its logits are those of
    the window encoded anew."""
    model = wrap(tiny_model("llama"), **knobs)
    if model.config.injection == "cross":
        model = randomise_adapter(model)
    text = torch.randint(3, 128, (1, 150 + C), generator=torch.Generator().manual_seed(9))
    first, second = text[:, :150], text[:, C:]  # 8 chunks of C = 16 before a window of LD = 32 each
    encoded = []
    lower_chunks = model.context_encoder.lower_chunks
    monkeypatch.setattr(model.context_encoder, "lower_chunks",
                        lambda chunk_ids, *args, **kwargs: encoded.append(len(chunk_ids)) or lower_chunks(chunk_ids, *args, **kwargs))
    with torch.no_grad():
        anew = model(second, query_position=140).logits
        encoded.clear()
        with model.reusing_chunk_encodings():
            model(first, query_position=140)
            encoded.clear()
            reused = model(second, query_position=140).logits
    assert sum(encoded) == (8 if model.config.injection == "cross" else 2)
    assert torch.equal(anew, reused)


def test_a_joint_method_scores_windows_grouped_by_where_their_chunks_fall():
    from sharedllm.methods import SharedLLM

    joint = SharedLLM(tiny_model("llama"), **{**KNOBS, "injection": "joint", "chunk_overlap": 4})
    windows = [{"doc": "a", "start": s} for s in (0, 8, 16, 24, 32)] + [{"doc": "b", "start": 16}]
    assert joint.window_order(windows) == [0, 2, 4, 1, 3, 5]  # C = 16: starts 0, 16, 32 cut "a" alike
    cross = SharedLLM(tiny_model("llama"), **KNOBS)
    assert cross.window_order(windows) is None  # nothing to reuse: no memo, the plan's order
