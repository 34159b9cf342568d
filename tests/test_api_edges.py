"""What the model does with the standard transformers arguments it does not compute with: a cache of another model,
use_cache in a forward of one's own, position_ids, full_logits beside a ContextCache, assisted decoding, the base's
generation settings. Each either works as in transformers or is refused with a message: never a quietly wrong answer."""

import pytest
import torch
from conftest import tiny_model
from test_model import pad_batch, randomise_adapter, wrap
from transformers import DynamicCache

from sharedllm.compat import CACHE_ARGUMENT, cache_argument
from sharedllm.context_cache import ContextCache
from sharedllm.modeling import SharedLLMCache


def model_and_ids(length=100, seed=0):
    model = randomise_adapter(wrap(tiny_model("llama")))
    return model, torch.randint(3, 128, (1, length), generator=torch.Generator().manual_seed(seed))


def test_a_cache_holding_tokens_of_another_model_is_refused():
    model, ids = model_and_ids()
    filled = DynamicCache()
    with torch.no_grad():
        model.base(ids[:, :10], **cache_argument(filled), use_cache=True)
    with pytest.raises(ValueError, match="DynamicCache already holding 10 tokens"):
        model(ids[:, 10:], past_key_values=filled)
    with pytest.raises(TypeError, match="legacy tuples"):
        model(ids, past_key_values=((torch.zeros(1), torch.zeros(1)),))


def test_use_cache_in_a_forward_of_ones_own_decodes_as_generate_does():
    """Was: use_cache ignored, no cache returned, and the next call read its one token as the whole input."""
    model, prompt = model_and_ids(length=60)
    with torch.no_grad():
        generated = model.generate(prompt, max_new_tokens=30, do_sample=False, pad_token_id=0, output_logits=True,
                                   return_dict_in_generate=True)  # 2 chunks of 16 roll into context on the way
        out = model(prompt, use_cache=True)
        cache = getattr(out, CACHE_ARGUMENT)  # out.cache (transformers >= 5.24; past_key_values before)
        assert isinstance(cache, SharedLLMCache)
        logits = [out.logits[0, -1]]
        for token in generated.sequences[0, 60:-1]:  # a hand-written greedy loop: one new token per call
            out = model(token.view(1, 1), **cache_argument(cache))
            logits.append(out.logits[0, -1])
    for step, (mine, theirs) in enumerate(zip(logits, generated.logits)):
        assert torch.allclose(mine, theirs[0], atol=1e-4), step
    with pytest.raises(ValueError, match="use_cache=True does not combine with full_logits"):
        model(prompt, use_cache=True, full_logits=True)


def test_position_ids_are_accepted_only_as_the_mask_numbers_them():
    model, ids = model_and_ids()
    rows = [ids[0, :70], ids[0, 70:]]
    batch, mask = pad_batch(rows, "left")
    positions = (mask.cumsum(1) - 1).clamp(min=0)
    with torch.no_grad():
        assert torch.equal(model(batch, attention_mask=mask, position_ids=positions).logits,
                           model(batch, attention_mask=mask).logits)
        packed = torch.cat([torch.arange(70), torch.arange(30)])[None]  # two sequences in one row
        with pytest.raises(ValueError, match="pass packed sequences as separate rows"):
            model(ids, position_ids=packed)


def test_full_logits_with_a_context_cache_is_refused():
    model, ids = model_and_ids()
    context = ContextCache.encode(model, ids[0])
    with pytest.raises(ValueError, match="full_logits=True does not apply with a ContextCache"):
        model(ids[:, :5], **cache_argument(context), full_logits=True)
    with pytest.raises(ValueError, match="input_ids must hold integer token ids"):
        ContextCache.encode(model, ids[0].float() + 0.5)  # was truncated to integers, silently


def test_assisted_decoding_is_refused_clearly():
    model, ids = model_and_ids()
    with pytest.raises(NotImplementedError, match="cannot be cropped"):
        model.generate(ids, max_new_tokens=8, do_sample=False, prompt_lookup_num_tokens=3, pad_token_id=0)


def test_full_logits_loss_scores_no_padding_target():
    """Right-padded rows with labels = input_ids: each row's loss is its own (the pad after a row's last token is no
    target), as in the decoder-window path."""
    model, ids = model_and_ids()
    rows = [ids[0, :70], ids[0, 70:]]
    batch, mask = pad_batch(rows, "right")
    with torch.no_grad():
        batched = model(batch, attention_mask=mask, labels=batch, full_logits=True).loss
        per_row = [model(row[None], labels=row[None], full_logits=True).loss for row in rows]
    tokens = [len(row) - 1 for row in rows]  # scored targets per row
    expected = sum(loss * n for loss, n in zip(per_row, tokens)) / sum(tokens)
    assert torch.allclose(batched, expected, atol=1e-5)


def test_generation_settings_are_the_bases():
    base = tiny_model("llama")
    base.generation_config.eos_token_id = [2, 5]
    base.generation_config.repetition_penalty = 1.3
    model = wrap(base)
    assert model.generation_config.eos_token_id == [2, 5] and model.generation_config.repetition_penalty == 1.3


def test_knobs_changed_on_the_config_after_construction_are_checked():
    model, ids = model_and_ids()
    model.config.full_logits = True  # as the README does: fine
    with torch.no_grad():
        assert model(ids).logits.shape[1] == ids.shape[1]
    model.config.full_logits = False
    model.config.tokens_per_node = 64  # more than a leaf of 16 / 2**2 tokens
    with pytest.raises(ValueError, match="a leaf of the context tree has"):
        model(ids)
    model.config.tokens_per_node = 2
    model.config.n_injected_layers = 3  # a cross adapter with 2 modules: was an IndexError deep inside
    with pytest.raises(ValueError, match="n_injected_layers was changed from 2 to 3 after the model was built"):
        model(ids)


def test_generate_continues_a_cache_it_returned():
    """generate(whole sequence, past_key_values=cache) with the cache an earlier generate returned (a chat's next
    turn) reads only what the cache has not seen. It sliced the input by the window's width, so up to a window of
    tokens were read twice, silently; the reference feeds the unseen tokens by hand, then decodes greedily."""
    import copy

    model, prompt = model_and_ids(length=50)
    greedy = dict(do_sample=False, pad_token_id=0, return_dict_in_generate=True, output_logits=True)
    with torch.no_grad():
        first = model.generate(prompt, max_new_tokens=6, **greedy)
        cache = getattr(first, CACHE_ARGUMENT)
        turn = torch.cat([first.sequences, torch.randint(3, 128, (1, 25), generator=torch.Generator().manual_seed(3))], 1)
        by_hand = copy.deepcopy(cache)
        assert by_hand.tokens_seen == 55  # the prompt and 5 answer tokens: the 6th was never read back
        out = model(turn[:, by_hand.tokens_seen :], **cache_argument(by_hand))  # the last answer token + the turn
        expected = []
        for _ in range(6):
            expected.append(out.logits[0, -1])
            out = model(expected[-1].argmax().view(1, 1), **cache_argument(by_hand))
        second = model.generate(turn, max_new_tokens=6, **{**greedy, CACHE_ARGUMENT: cache})
    for step, (theirs, mine) in enumerate(zip(second.logits, expected)):
        assert torch.allclose(theirs[0], mine, atol=1e-4), step
