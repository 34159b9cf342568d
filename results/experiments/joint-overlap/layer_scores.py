"""Shared by this folder's probes: every layer's own attention logits from a query token to every context token
of joint injection's chunks, and whether the tree's halvings follow a token."""

import torch
from transformers.models.llama.modeling_llama import apply_rotary_pos_emb

from sharedllm.modeling import SharedLLMForCausalLM


def uncompressed_joint(base):
    """Joint injection over every layer, C = 512, Ld = 1024, nothing compressed (the probes read every key)."""
    return SharedLLMForCausalLM.from_base(base, injection="joint", n_injected_layers=base.config.num_hidden_layers,
                                         chunk_size=512, decoder_window=1024, tree_depth=0, tokens_per_node=512).eval()


@torch.no_grad()
def layer_logits(model, chunk_ids, window_ids) -> torch.Tensor:
    """(n, C) chunks, (W,) the query's window (query = its last token) -> (layers, n, heads, C) logits of each
    layer's query against that layer's context keys, the query rotated to sit just after the chunk (as the
    library scores)."""
    base, encoder = model.base, model.context_encoder
    decoder, n = base.model, chunk_ids.shape[0]
    lowered = encoder.lower_chunks(chunk_ids, torch.arange(n), encoder.tokens_before(chunk_ids, None))
    hidden = base(window_ids[None], output_hidden_states=True).hidden_states  # hidden[l]: the input of layer l
    logits = []
    for index, layer in enumerate(decoder.layers):
        attention = layer.self_attn
        q = attention.q_proj(layer.input_layernorm(hidden[index][:, -1])).view(1, -1, 1, attention.head_dim)
        cos, sin = decoder.rotary_emb(q, torch.zeros(1, 1, dtype=torch.long))
        q, _ = apply_rotary_pos_emb(q, q, cos, sin)
        keys = lowered.layer_keys(index)
        keys = keys.repeat_interleave(q.shape[1] // keys.shape[1], 1)  # GQA
        logits.append(torch.einsum("hd,nhcd->nhc", q[0, :, 0], keys) * attention.scaling)
    return torch.stack(logits)


def path_reaches(scores, token, depth) -> bool:
    """Does the tree, halving `depth` times toward the half with the best token score, keep `token` to the end?"""
    start, length = 0, scores.shape[0]
    for _ in range(depth):
        half = length // 2
        inside_left = token < start + half
        left_wins = scores[start : start + half].max() >= scores[start + half : start + length].max()
        if left_wins != inside_left:
            return False
        start, length = (start, half) if inside_left else (start + half, half)
    return True
