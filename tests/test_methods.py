"""The method interface: every method scores and generates like the base model where it should, and differs
where it should; StreamingLLM's cache and re-rotation; YaRN leaves the caller's model alone."""

import copy
import importlib.util

import pytest
import torch
import torch.nn.functional as F
from transformers.models.llama.modeling_llama import apply_rotary_pos_emb

from conftest import tiny_model
from sharedllm.methods import METHODS, SinkCache, load_method
from sharedllm.rope import rotate

VOCAB = 128


def random_ids(n: int, seed: int = 1) -> torch.Tensor:
    # ids >= 3 avoid pad / bos / eos of the tiny config
    return torch.randint(3, VOCAB, (n,), generator=torch.Generator().manual_seed(seed))


def reference_nll(base, input_ids: torch.Tensor, score_start: int) -> torch.Tensor:
    """NLL of input_ids[score_start:] from a plain full forward of the base model."""
    logits = base(input_ids[None]).logits[0].float()  # (T, V)
    return F.cross_entropy(logits[score_start - 1 : -1], input_ids[score_start:], reduction="none")


# ---------------------------------------------------------------------------------------------------------------
# full and window


def test_full_matches_plain_forward(arch):
    base = tiny_model(arch)
    ids = random_ids(80)
    nll = load_method("full", base).token_nll(ids, 20)
    assert nll.shape == (60,)
    torch.testing.assert_close(nll, reference_nll(base, ids, 20), atol=1e-5, rtol=0)


def test_full_projects_only_scored_positions():
    base = tiny_model("llama")
    rows = []
    handle = base.lm_head.register_forward_hook(lambda module, args, out: rows.append(args[0].shape[0]))
    load_method("full", base).token_nll(random_ids(100), 90)
    handle.remove()
    assert sum(rows) == 10  # the positions predicting tokens 90..99, not all 100


def test_window_equals_full_within_window_and_not_beyond():
    base = tiny_model("llama")
    full, window = load_method("full", base), load_method("window", base, decoder_window=64)
    short = random_ids(64)
    torch.testing.assert_close(window.token_nll(short, 10), full.token_nll(short, 10), atol=1e-5, rtol=0)

    long = random_ids(100)  # window = tokens [36, 100)
    nll = window.token_nll(long, 80)
    assert (nll - full.token_nll(long, 80)).abs().max() > 1e-3  # tokens 0..35 are invisible
    torch.testing.assert_close(nll, full.token_nll(long[36:], 44), atol=1e-5, rtol=0)
    with pytest.raises(ValueError, match="decoder window"):
        window.token_nll(long, 36)  # token 36 would be predicted from outside the window


# ---------------------------------------------------------------------------------------------------------------
# streaming


def test_streaming_equals_full_when_window_covers_input(arch):
    base = tiny_model(arch)
    ids = random_ids(100)
    streaming = load_method("streaming", base, window=128, block_size=24)  # several blocks, no eviction
    torch.testing.assert_close(streaming.token_nll(ids, 5), reference_nll(base, ids, 5), atol=1e-4, rtol=0)


def test_streaming_cache_stays_within_window(monkeypatch):
    base = tiny_model("llama")
    attended = []  # keys each layer attends to, per forward
    update = SinkCache.update

    def recording_update(self, key_states, value_states, layer_idx, *args, **kwargs):
        keys, values = update(self, key_states, value_states, layer_idx, *args, **kwargs)
        attended.append(keys.shape[-2])
        return keys, values

    monkeypatch.setattr(SinkCache, "update", recording_update)
    streaming = load_method("streaming", base, window=32, n_sink=4, block_size=8)
    nll = streaming.token_nll(random_ids(150), 1)
    streaming.generate(random_ids(50), 12)
    assert nll.shape == (149,) and torch.isfinite(nll).all()
    assert max(attended) == 32  # eviction happened, and never more than the window


@pytest.mark.parametrize("block_size", [1, 5])
def test_streaming_matches_sink_plus_recent_reference(block_size):
    """One layer: a token's output depends only on which tokens it attends to and their positions, so StreamingLLM
    must equal a fresh forward of [sinks + kept recent tokens + the block so far] at positions 0..n-1."""
    base = tiny_model("llama", num_hidden_layers=1)
    window, n_sink, ids = 12, 3, random_ids(40)
    streaming = load_method("streaming", base, window=window, n_sink=n_sink, block_size=block_size)
    nll = streaming.token_nll(ids, 1)

    cached, expected = [], []  # text indices in the cache, simulated with the documented eviction rule
    for start in range(0, len(ids) - 1, block_size):
        block = list(range(start, min(start + block_size, len(ids) - 1)))
        n_evict = len(cached) + len(block) - window
        if n_evict > 0:
            cached = cached[:n_sink] + cached[n_sink + n_evict :]
        for i, position in enumerate(block):
            visible = ids[cached + block[: i + 1]]
            expected.append(reference_nll(base, torch.cat([visible, ids[position + 1 : position + 2]]), len(visible)))
        cached += block
    torch.testing.assert_close(nll, torch.cat(expected), atol=1e-4, rtol=0)


@pytest.mark.parametrize("rope", [None, {"rope_type": "yarn", "factor": 4.0, "original_max_position_embeddings": 128}])
def test_rotate_moves_a_key_by_the_shift(rope):
    overrides = {} if rope is None else {"rope_parameters": {"rope_theta": 10000.0, **rope}}
    rotary_emb = tiny_model("llama", **overrides).model.rotary_emb
    key = torch.randn(1, 2, 1, 16)  # (B, H, S, D)

    def rotated_at(position):
        cos, sin = rotary_emb(key, torch.tensor([[position]]))
        return apply_rotary_pos_emb(key, key, cos, sin)[1]

    for position, shift in [(37, 30), (300, 299), (5, 0)]:
        back = torch.full((1, 1), -shift)  # (B, S)
        torch.testing.assert_close(rotate(rotated_at(position), back, rotary_emb), rotated_at(position - shift),
                                   atol=1e-5, rtol=0)


# ---------------------------------------------------------------------------------------------------------------
# yarn


def test_yarn_factor_one_is_full_and_base_is_left_unchanged(arch):
    base = tiny_model(arch)
    ids = random_ids(96)
    rotary_emb, inv_freq = base.model.rotary_emb, base.model.rotary_emb.inv_freq.clone()
    rope_parameters = dict(base.config.rope_parameters)
    full_nll = reference_nll(base, ids, 10)

    torch.testing.assert_close(load_method("yarn", base, factor=1.0).token_nll(ids, 10), full_nll, atol=1e-5, rtol=0)
    scaled = load_method("yarn", base, factor=2.0).token_nll(ids, 10)
    assert (scaled - full_nll).abs().max() > 1e-4  # the scaled rotary was really used
    auto = load_method("yarn", base, native=48).token_nll(ids, 10)  # factor T / native = 2
    torch.testing.assert_close(auto, load_method("yarn", base, factor=2.0, native=48).token_nll(ids, 10), atol=0, rtol=0)
    assert (auto - scaled).abs().max() > 1e-4  # native sets YaRN's correction range too
    at_native = load_method("yarn", base, native=96)  # factor max(1, 96 / 96) = 1: a grid may skip it as full's twin
    torch.testing.assert_close(at_native.token_nll(ids, 10), full_nll, atol=1e-5, rtol=0)
    assert at_native.same_as_another(96) == "identical to full: YaRN factor 1 at T <= 96"
    assert at_native.same_as_another(97) is None and load_method("full", base).same_as_another(96) is None
    load_method("yarn", base, factor=2.0).generate(ids, 3)

    assert base.model.rotary_emb is rotary_emb
    assert torch.equal(base.model.rotary_emb.inv_freq, inv_freq)
    assert base.config.rope_parameters == rope_parameters
    torch.testing.assert_close(reference_nll(base, ids, 10), full_nll, atol=0, rtol=0)


def test_yarn_restores_base_after_an_error():
    base = tiny_model("llama")
    rotary_emb = base.model.rotary_emb
    with pytest.raises(ValueError):
        load_method("yarn", base, factor=2.0).token_nll(random_ids(10), 10)  # score_start out of range
    with pytest.raises(IndexError):
        load_method("yarn", base, factor=2.0).token_nll(torch.full((10,), VOCAB + 5), 5)  # fails inside the swap
    assert base.model.rotary_emb is rotary_emb


# ---------------------------------------------------------------------------------------------------------------
# generation and dispatch


def test_full_generate_equals_hf_generate(arch):
    base = tiny_model(arch, initializer_range=0.3)  # larger weights: varied greedy tokens, not one repeated id
    ids = random_ids(60)
    eos = base.config.eos_token_id
    expected = base.generate(ids[None], max_new_tokens=20, do_sample=False, eos_token_id=eos)[0, 60:]
    assert len(set(expected.tolist())) > 3
    assert load_method("full", base).generate(ids, 20, eos_token_id=eos).tolist() == expected.tolist()
    # the same greedy tokens from StreamingLLM when its window holds prompt and answer
    assert load_method("streaming", base, window=96, block_size=16).generate(ids, 20, eos_token_id=eos).tolist() == expected.tolist()


def test_generate_stops_at_eos():
    base = tiny_model("llama", initializer_range=0.3)
    ids = random_ids(60)
    free = load_method("full", base).generate(ids, 10)
    stopped = load_method("full", base).generate(ids, 10, eos_token_id=int(free[3]))
    assert stopped.tolist() == free[: free.tolist().index(int(free[3])) + 1].tolist()


def test_load_method_rejects_unknown_names():
    with pytest.raises(ValueError, match="streaming"):
        load_method("nope", tiny_model("llama"))
    assert set(METHODS) == {"full", "window", "streaming", "infllm", "yarn", "sharedllm", "cepe"}


def test_describe_reports_knobs():
    base = tiny_model("llama")
    assert load_method("streaming", base, decoder_window=64).describe() == {
        "method": "streaming", "window": 64, "n_sink": 4, "block_size": 60}
    assert load_method("window", base).describe() == {"method": "window", "decoder_window": 1024}


# ---------------------------------------------------------------------------------------------------------------
# sharedllm and cepe (need sharedllm.modeling)

needs_model = pytest.mark.skipif(
    importlib.util.find_spec("sharedllm.modeling") is None, reason="sharedllm.modeling (SharedLLMForCausalLM) not written yet"
)
TINY_SHARED = dict(chunk_size=16, decoder_window=48)


@needs_model
@pytest.mark.parametrize("name,knobs", [
    ("sharedllm", dict(n_injected_layers=2, tree_depth=1, tokens_per_node=4, **TINY_SHARED)),
    ("cepe", TINY_SHARED),
])
def test_untrained_context_methods_equal_base_on_decoder_window(name, knobs):
    """Cross-attention starts at zero, so an untrained model is the base model on its decoder window."""
    base = tiny_model("qwen2", initializer_range=0.3)  # varied greedy tokens, EOS (2) among the first 20
    ids = random_ids(100)  # k = ceil((100 - 48) / 16) = 4 chunks: context [0, 64), decoder window [64, 100)
    method = load_method(name, base, **knobs)
    torch.testing.assert_close(method.token_nll(ids, 80), reference_nll(base, ids[64:], 16), atol=1e-4, rtol=0)
    with pytest.raises(ValueError, match="decoder window"):
        method.token_nll(ids, 64)
    # 8 new tokens keep the window under 48: no chunk rolls in, so generation is the base model's on [64, 100)
    eos = base.config.eos_token_id
    expected = load_method("full", base).generate(ids[64:], 8, eos_token_id=eos)
    assert method.generate(ids, 8, eos_token_id=eos).tolist() == expected.tolist()
    # with no context at all (24 + 20 <= 48), eos_token_id=None runs past EOS like the baselines do
    short = random_ids(24, seed=2)
    expected = load_method("full", base).generate(short, 20)
    assert eos in expected[:-1].tolist()
    assert method.generate(short, 20).tolist() == expected.tolist()


@needs_model
def test_cepe_is_every_layer_without_tree():
    described = load_method("cepe", tiny_model("llama"), **TINY_SHARED).describe()
    assert described["n_injected_layers"] == 4 and described["tree_depth"] == 0
    assert described["tokens_per_node"] == described["chunk_size"] == 16
    with pytest.raises(ValueError, match="tree_depth are fixed by the CEPE-style preset"):  # was a TypeError
        load_method("cepe", tiny_model("llama"), tree_depth=2, **TINY_SHARED)


@needs_model
def test_sharedllm_loads_a_saved_adapter_and_overrides_knobs(tmp_path):
    base = tiny_model("llama")
    knobs = dict(n_injected_layers=2, tree_depth=1, tokens_per_node=4, **TINY_SHARED)
    trained = load_method("sharedllm", base, **knobs)
    torch.manual_seed(0)
    for parameter in trained.model.adapter_parameters():  # stand-in for training: non-zero output projections
        parameter.data.add_(0.05 * torch.randn_like(parameter))
    trained.model.save_pretrained(tmp_path)

    ids = random_ids(100)
    loaded = load_method("sharedllm", base, adapter=str(tmp_path))
    nll = loaded.token_nll(ids, 80)
    torch.testing.assert_close(nll, trained.token_nll(ids, 80), atol=1e-6, rtol=0)
    assert (nll - reference_nll(base, ids[64:], 16)).abs().max() > 1e-4  # the context now matters
    assert load_method("sharedllm", base, adapter=str(tmp_path), decoder_window=64).describe()["decoder_window"] == 64
    with pytest.raises(ValueError, match="unknown knobs"):
        load_method("sharedllm", base, adapter=str(tmp_path), window=64)


def test_an_adapter_with_a_lora_leaves_the_comparisons_base_alone(tmp_path):
    """The LoRA goes into the base in place: the methods read after sharedllm in one run must get the plain base."""
    from sharedllm.lora import add_upper_lora

    base = tiny_model("llama")
    before = {k: v.clone() for k, v in base.state_dict().items()}
    trained = load_method("sharedllm", copy.deepcopy(base), injection="joint", n_injected_layers=2, tree_depth=1,
                          tokens_per_node=4, **TINY_SHARED)  # a training run, on a base of its own
    add_upper_lora(trained.model, rank=2)
    with torch.no_grad():
        for name, p in trained.model.base.named_parameters():
            if "lora_B" in name:
                p.normal_()
    trained.model.save_pretrained(tmp_path)

    ids = random_ids(100)
    loaded = load_method("sharedllm", base, adapter=str(tmp_path))
    torch.testing.assert_close(loaded.token_nll(ids, 80), trained.token_nll(ids, 80), atol=1e-4, rtol=0)
    after = base.state_dict()
    assert after.keys() == before.keys() and all(torch.equal(after[k], v) for k, v in before.items())
    window = load_method("window", base, decoder_window=TINY_SHARED["decoder_window"])
    torch.testing.assert_close(window.token_nll(ids, 80), reference_nll(base, ids[-TINY_SHARED["decoder_window"]:],
                                                                       80 - 100 + TINY_SHARED["decoder_window"]))


# ---------------------------------------------------------------------------------------------------------------
# infllm

TINY_INFLLM = dict(local_window=32, n_sink=8, block_size=16, n_rep=2, chunk_size=24)


def test_infllm_declares_every_option_of_its_own():
    """InfLLM.KNOBS (what `--infllm` accepts) is its constructor's keywords less the comparison's decoder_window."""
    import inspect

    from sharedllm.methods import InfLLM

    keywords = set(inspect.signature(InfLLM.__init__).parameters) - {"self", "base", "tokenizer", *InfLLM.shared_knobs}
    assert set(InfLLM.KNOBS) == keywords and len(InfLLM.KNOBS) == len(keywords)


def test_infllm_equals_full_when_every_block_is_retrieved(arch):
    """topk >= number of memory blocks: the retrieval machinery runs (blocks closed, scored, re-rotated in place)
    but every token is attended at its own position, so the result is full attention."""
    base = tiny_model(arch)
    ids = random_ids(300)  # memory blocks of 16 up to 300 - 32: at most 17 blocks
    infllm = load_method("infllm", base, topk=20, **TINY_INFLLM)
    torch.testing.assert_close(infllm.token_nll(ids, 200), reference_nll(base, ids, 200), atol=1e-4, rtol=0)
    assert base.config._attn_implementation == "sdpa"  # the base is left as it was


def test_infllm_attends_sinks_topk_blocks_and_local_window(monkeypatch):
    from sharedllm import infllm as module

    base = tiny_model("llama")
    sizes = []
    attended = module.InfLLMCache.attended

    def recording(self, layer, query, keys, values):
        out = attended(self, layer, query, keys, values)
        sizes.append((keys.shape[2], query.shape[2], out[0].shape[2]))
        return out

    monkeypatch.setattr(module.InfLLMCache, "attended", recording)
    infllm = load_method("infllm", base, topk=2, **TINY_INFLLM)
    nll = infllm.token_nll(random_ids(300), 200)
    assert (nll - reference_nll(base, random_ids(300), 200)).abs().max() > 1e-3  # tokens were left out
    for total, n, seen in sizes:
        memory_end = 8 + max(0, (total - n - 32 - 8) // 16) * 16
        blocks = min(2, (memory_end - 8) // 16)
        assert seen == (total if memory_end == 8 else 8 + 16 * blocks + total - memory_end)
        assert seen <= 8 + 2 * 16 + 32 + 16 + 24  # sinks + topk blocks + local (< 32 + 16) + chunk


def test_select_blocks_picks_a_planted_block():
    torch.manual_seed(0)
    query = torch.randn(1, 4, 6, 8)  # (B, H, n, D), 2 query heads per key/value head
    reps = torch.randn(1, 2, 10 * 3, 8)  # 10 blocks of 3 representative keys
    summed = query.view(1, 2, 2, 6, 8).sum(dim=(2, 3))  # (B, H_kv, D)
    reps[:, :, 7 * 3 : 8 * 3] = 5 * summed[:, :, None]  # block 7's keys point where the queries point
    from sharedllm.infllm import select_blocks

    chosen = select_blocks(query, reps, n_rep=3, topk=3)
    assert chosen.shape == (1, 3) and 7 in chosen.tolist()[0]
    assert chosen.tolist()[0] == sorted(chosen.tolist()[0])  # text order
    assert select_blocks(-query, reps, n_rep=3, topk=1).tolist() != [[7]]  # opposite queries: least relevant


def test_infllm_retrieves_a_planted_block_in_the_model():
    """Plant one block's representative keys along the next chunk's (layer-0) queries at the scoring distance:
    the model's own retrieval must pick it, and did not without the plant."""
    import copy

    base = tiny_model("llama")
    infllm = load_method("infllm", base, topk=2, **TINY_INFLLM)
    ids = random_ids(264)
    cache = infllm.new_cache()
    with torch.no_grad():
        for chunk in ids[:240].split(24):
            infllm.forward_piece(cache, chunk)
        chunk = ids[240:]  # the next chunk: 24 tokens at positions 240..263
        dry = copy.deepcopy(cache)
        infllm.forward_piece(dry, chunk)
        n_blocks = cache.rep_keys[0].shape[2] // 2
        planted = next(b for b in range(n_blocks) if b not in dry.selected[0].tolist()[0])

        layer = base.model.layers[0]
        q = layer.self_attn.q_proj(layer.input_layernorm(base.model.embed_tokens(chunk[None])))
        q = q.view(1, 24, 4, 16).transpose(1, 2)  # (B, H, n, D), not rotated yet
        q = rotate(q, torch.full((1, 24), 32), base.model.rotary_emb)  # at the scoring distance local_window
        direction = q.view(1, 2, 2, 24, 16).sum(dim=(2, 3))  # (B, H_kv, D)
        cache.rep_keys[0][:, :, planted * 2 : planted * 2 + 2] = 10 * direction[:, :, None] / direction.norm()
        infllm.forward_piece(cache, chunk)
    assert planted in cache.selected[0].tolist()[0]


def test_infllm_generates_like_full_when_every_block_is_retrieved():
    base = tiny_model("llama", initializer_range=0.3)
    ids = random_ids(120)
    expected = load_method("full", base).generate(ids, 12)
    assert load_method("infllm", base, topk=20, **TINY_INFLLM).generate(ids, 12).tolist() == expected.tolist()


def test_infllm_rejects_distances_past_the_trained_window():
    with pytest.raises(ValueError, match="trained"):
        load_method("infllm", tiny_model("llama"), decoder_window=256, topk=4)  # 64 + 512 + 256 + 128 + 256 > 512
    described = load_method("infllm", tiny_model("llama"), topk=2, **TINY_INFLLM).describe()
    assert described == {"method": "infllm", "local_window": 32, "n_sink": 8, "block_size": 16, "n_rep": 2,
                         "topk": 2, "chunk_size": 24}


def test_infllm_cache_layer_appends_without_recopying():
    from sharedllm.infllm import GrowingLayer

    layer, chunks = GrowingLayer(reserve=8), [torch.randn(1, 2, n, 4) for n in (3, 5, 6, 1)]
    for i, chunk in enumerate(chunks):
        keys, values = layer.update(chunk, -chunk)
        expected = torch.cat(chunks[: i + 1], dim=2)
        torch.testing.assert_close(keys, expected, rtol=0, atol=0)
        torch.testing.assert_close(values, -expected, rtol=0, atol=0)
        assert layer.get_seq_length() == expected.shape[2]
    assert layer._buffers[0].shape[2] == 2 * 14  # outgrew the reserve of 8 at 14 tokens: doubled once
    reserved = GrowingLayer(reserve=20)
    first = reserved.update(chunks[0], chunks[0])[0]
    reserved.update(chunks[1], chunks[1])
    assert reserved.keys.data_ptr() == first.data_ptr()  # the same buffer: nothing copied within the reserve
