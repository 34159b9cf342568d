"""lm-evaluation-harness's HFLM over a loaded SharedLLM model: inputs several times the decoder window.

HFLM calls `model(input_ids).logits` without an attention mask (right-padding its batches) and reads the logits of
every position; SharedLLM offers them with `full_logits=True`. Rolling log-likelihood must equal the project's own
scorer (`methods.SharedLLM.token_nll`) over the same spans, and nothing may depend on the batch.
"""

import pytest
import torch
from conftest import tiny_model
from test_model import KNOBS
from tiny_tokenizer import tiny_tokenizer, words

from sharedllm import SharedLLMForCausalLM
from sharedllm.methods import load_method

lm_eval = pytest.importorskip("lm_eval", reason="lm-eval is a test-only dependency: pip install 'sharedllm[test]'")
from lm_eval.api.instance import Instance  # noqa: E402
from lm_eval.models.huggingface import HFLM  # noqa: E402

LD, C = KNOBS["decoder_window"], KNOBS["chunk_size"]


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    """A trained-looking adapter whose context decides the argmax, saved with its base and tokenizer."""
    folder = tmp_path_factory.mktemp("lm_eval")
    tiny_model("llama").save_pretrained(folder / "base")
    tiny_tokenizer().save_pretrained(folder / "base")
    model = SharedLLMForCausalLM.from_base(str(folder / "base"), **KNOBS)
    generator = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for param in model.adapter_parameters():
            param.copy_(torch.randn(param.shape, generator=generator) * 0.2 + (1.0 if param.dim() == 1 else 0.0))
        for attention in model.cross_attention:
            attention.o_proj.weight.mul_(8.0)
    model.save_pretrained(folder / "adapter")
    return folder / "adapter"


@pytest.fixture(scope="module")
def model(saved):
    """What a harness is handed: the saved adapter loaded with logits for every position."""
    return SharedLLMForCausalLM.from_pretrained(saved, full_logits=True)


def harness(model, batch_size):
    return HFLM(pretrained=model, tokenizer=model.tokenizer, backend="causal", batch_size=batch_size, max_length=4096,
                device="cpu")


def project_nll(model, saved, ids: torch.Tensor, score_from: int = 1) -> float:
    """Sum of NLL of ids[score_from:] by the evaluation's own scorer (`load_method("sharedllm", adapter=...)`), one
    window per span: the whole prefix up to Ld + jC tokens, scoring its last C tokens (the first window scores
    tokens 1..Ld-1)."""
    method = load_method("sharedllm", model.base, adapter=str(saved))
    total, n, j = 0.0, len(ids), 0
    while j == 0 or LD + (j - 1) * C < n:
        first_target = 1 if j == 0 else LD + (j - 1) * C
        nll = method.token_nll(ids[: min(LD + j * C, n)], first_target)
        targets = torch.arange(first_target, first_target + len(nll))
        total += float(nll[targets >= score_from].sum())
        j += 1
    return total


def text_ids(n, seed):
    return torch.randint(4, 128, (n,), generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("batch_size", [1, 3])
def test_rolling_loglikelihood_equals_the_projects_scorer(model, saved, batch_size):
    texts = [text_ids(n, seed) for seed, n in enumerate((150, 97, 40))]  # about 5, 3 and 1 decoder windows
    requests = [Instance("loglikelihood_rolling", {}, (words(ids),), i) for i, ids in enumerate(texts)]
    with torch.no_grad():
        rolling = harness(model, batch_size).loglikelihood_rolling(requests)
        for got, ids in zip(rolling, texts):
            with_bos = torch.cat([torch.tensor([model.tokenizer.bos_token_id]), ids])
            assert got == pytest.approx(-project_nll(model, saved, with_bos), abs=1e-3)


def test_loglikelihood_of_long_continuations_does_not_depend_on_the_batch(model, saved):
    pairs = [(text_ids(90, 10), text_ids(60, 11)), (text_ids(30, 12), text_ids(45, 13)), (text_ids(5, 14), text_ids(3, 15))]
    requests = [Instance("loglikelihood", {}, (words(c), " " + words(x)), i) for i, (c, x) in enumerate(pairs)]
    with torch.no_grad():
        single = harness(model, 1).loglikelihood(requests)
        batched = harness(model, 3).loglikelihood(requests)
        for (context, continuation), (logprob, greedy), (batch_logprob, batch_greedy) in zip(pairs, single, batched):
            ids = torch.cat([context, continuation])
            assert logprob == pytest.approx(-project_nll(model, saved, ids, score_from=len(context)), abs=1e-3)
            assert batch_logprob == pytest.approx(logprob, abs=1e-4) and batch_greedy == greedy


def test_generate_until_on_long_prompts(model):
    prompts = [text_ids(130, 20), text_ids(70, 21)]
    gen_kwargs = {"until": ["w3"], "max_gen_toks": 12, "do_sample": False}
    requests = [Instance("generate_until", {}, (words(p), dict(gen_kwargs)), i) for i, p in enumerate(prompts)]
    with torch.no_grad():
        batched = harness(model, 2).generate_until(requests)
        for prompt, text in zip(prompts, batched):
            expected = model.generate(prompt[None], max_new_tokens=12, do_sample=False, pad_token_id=0)[0, len(prompt) :]
            expected_text = model.tokenizer.decode(expected).split("w3")[0]
            assert text.strip() == expected_text.strip() and text.strip()
