"""Shared fixtures: tiny random Llama / Qwen2 / Mistral / Qwen3 models built in code (no weights, no hub)."""

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import pytest
import torch
from transformers import (LlamaConfig, LlamaForCausalLM, MistralConfig, MistralForCausalLM, Qwen2Config, Qwen2ForCausalLM,
                          Qwen3Config, Qwen3ForCausalLM)

TINY = dict(
    vocab_size=128,
    hidden_size=64,
    intermediate_size=128,
    num_hidden_layers=4,
    num_attention_heads=4,
    num_key_value_heads=2,
    max_position_embeddings=512,
    pad_token_id=0,
    bos_token_id=1,
    eos_token_id=2,
    tie_word_embeddings=True,
)


def tiny_model(arch: str = "llama", seed: int = 0, **overrides):
    """A random causal LM of the given architecture, fp32, eval mode, sdpa attention."""
    torch.manual_seed(seed)
    kwargs = {**TINY, **overrides}
    if arch == "llama":
        model = LlamaForCausalLM(LlamaConfig(**kwargs))
    elif arch == "qwen2":  # q/k/v projections carry a bias
        model = Qwen2ForCausalLM(Qwen2Config(**kwargs))
    elif arch == "mistral":
        model = MistralForCausalLM(MistralConfig(**kwargs))
    elif arch == "qwen3":  # per-head query/key norms before RoPE
        model = Qwen3ForCausalLM(Qwen3Config(**kwargs))
    else:
        raise ValueError(arch)
    model.set_attn_implementation("sdpa")  # as from_pretrained would; a bare constructor leaves it unset
    return model.eval()


@pytest.fixture(params=["llama", "qwen2", "mistral", "qwen3"])
def arch(request):
    return request.param


def encoded_context(keys, values, n_chunks, per_chunk, chunk_scores=None):
    """An `EncodedContext` from per-layer (B, Hkv, n * K, hd) keys and values, the layout tests write by hand
    (slots past a row's n_chunks[b] are left out)."""
    from sharedllm.context_encoder import EncodedContext

    stacked = torch.stack([*keys, *values])  # (2M, B, Hkv, n * K, hd)
    chunks = [[stacked[:, b, :, j * per_chunk : (j + 1) * per_chunk] for j in range(n)]
              for b, n in enumerate(n_chunks.tolist())]
    return EncodedContext(chunks, n_chunks, per_chunk, chunk_scores)
