"""The contract every method in METHODS keeps, checked the same way for each on a tiny random Llama: scoring gives
finite NLLs of the right shape, `generate` is greedy decoding over `prefill` / `step`, the logits of `prefill` and
`step` are the ones `token_nll` scores at the same positions, and `describe()` is JSON.

Every method is built the same way, from one comparison's shared settings (`load_method(name, base,
shared=SHARED, **OPTIONS.get(name, {}))`); the options only keep the tiny sequences meaningful for each method."""

import json

import pytest
import torch
import torch.nn.functional as F

from conftest import tiny_model
from sharedllm.method_table import METHOD_READS
from sharedllm.methods import METHODS, load_method

# chunks of 16 and a decoder window of 48: a 88-token prompt gives SharedLLM 3 context chunks and a 40-token window,
# and a step after it rolls nothing into context
SHARED = dict(chunk_size=16, decoder_window=48, n_injected_layers=2, tree_depth=1, tokens_per_node=4)
# The prompt is whole pieces (8 tokens) of every piece-fed method, so scoring feeds the prompt and the token after
# it in the same pieces as prefill + one step; a second step would be a 2-token piece for scoring, which streaming
# (eviction before each piece) and infllm (retrieval per piece) treat differently by design.
PROMPT = 88
OPTIONS = {
    "window": dict(decoder_window=96),  # the prompt and its steps in one window: scoring sees the same tokens
    "yarn": dict(factor=2.0, native=64),  # a fixed factor: scoring a longer input keeps the prompt's RoPE
    "streaming": dict(block_size=8),  # evicts: 88 tokens through a window of 48
    "infllm": dict(n_sink=4, block_size=8, n_rep=2, topk=2, chunk_size=8),  # retrieves from closed blocks
}


def build(name):
    base = tiny_model("llama", initializer_range=0.3)  # varied greedy tokens
    method = load_method(name, base, shared=SHARED, **OPTIONS.get(name, {}))
    if hasattr(method, "model"):  # sharedllm, cepe: stand-in for training, so that the context matters
        torch.manual_seed(0)
        for parameter in method.model.adapter_parameters():
            parameter.data.add_(0.05 * torch.randn_like(parameter))
    return method


def ids(n, seed=1):
    return torch.randint(3, 128, (n,), generator=torch.Generator().manual_seed(seed))  # no pad / bos / eos


@pytest.mark.parametrize("name", METHODS)
def test_method_contract(name):
    method = build(name)
    tokens = ids(PROMPT + 2)

    nll = method.token_nll(tokens, PROMPT - 8)
    assert nll.shape == (tokens.shape[0] - PROMPT + 8,) and torch.isfinite(nll).all()

    # prefill / step logits = what token_nll scores: position p's logits give the NLL of token p + 1
    logits = [method.prefill(tokens[:PROMPT]), method.step(tokens[PROMPT : PROMPT + 1])]
    for i, step_logits in enumerate(logits):
        target = PROMPT + i
        assert step_logits.shape == (128,) and step_logits.dtype == torch.float32
        stepped = F.cross_entropy(step_logits[None], tokens[target : target + 1])
        scored = method.token_nll(tokens[: target + 1], target)
        torch.testing.assert_close(stepped, scored[0], atol=1e-4, rtol=0, msg=f"{name}: token {target}")

    # generate = greedy over prefill / step, whatever generate did before
    prompt = tokens[:PROMPT]
    expected, step_logits = [], method.prefill(prompt)
    for _ in range(6):
        expected.append(int(step_logits.argmax()))
        step_logits = method.step(torch.tensor([expected[-1]]))
    assert method.generate(prompt, 6).tolist() == expected
    assert method.state is None  # generate drops its cache

    json.dumps(method.describe())
    assert method.describe()["method"] == name


@pytest.mark.parametrize("name", METHODS)
def test_window_only_in_the_method_table_is_what_the_method_does(name):
    """eval refuses `--protocol sliding` (scoring from a document's second token) for the methods the table marks
    `window_only`, before loading them: each marked one cannot score a token older than its decoder window, and
    each other one can."""
    method, tokens = build(name), ids(120)  # past every decoder window here (window's 96, sharedllm's 48)
    if METHOD_READS[name].window_only:
        with pytest.raises(ValueError, match="decoder window"):
            method.token_nll(tokens, 1)
    else:
        assert torch.isfinite(method.token_nll(tokens, 1)).all()
