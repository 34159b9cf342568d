"""Self-injection: the cross-attention an injected upper layer adds between its self-attention and its MLP.

The keys and values are the lower model's own (the same layer of the same weights, run over the context), so
no key/value projection is needed: only a norm, a query projection and an output projection are new.
"""

from dataclasses import dataclass

import torch
from torch import nn
from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS
from transformers.models.llama.modeling_llama import apply_rotary_pos_emb, eager_attention_forward


@dataclass
class InjectedContext:
    """Compressed context of one batch, as the upper model's injected layers read it.

    keys / values: one (B, Hkv, S, hd) tensor per injected layer; S = chunks * P * (D + 1), post-RoPE.
    attention_mask: (B, 1, 1, S) additive float mask (0 = attend, dtype min = padding), or None if no padding.
    query_cos / query_sin: (B, 1, hd) rotation of the cross-attention queries (chunk-level position n_b).
    has_context: (B, 1, 1) 1.0 where the row has at least one chunk; rows without one get no injection.
    """

    keys: list[torch.Tensor]
    values: list[torch.Tensor]
    attention_mask: torch.Tensor | None
    query_cos: torch.Tensor
    query_sin: torch.Tensor
    has_context: torch.Tensor


class ContextCrossAttention(nn.Module):
    """RMSNorm(h) -> q_proj -> attention over the layer's compressed context keys/values -> o_proj.

    q_proj and the norm start as copies of the layer's own self-attention query projection and input norm (the
    keys are that layer's keys, so its queries already live in the right space); o_proj starts at zero, so an
    untrained model is exactly the base model.
    """

    def __init__(self, decoder_layer: nn.Module, attn_implementation: str):
        super().__init__()
        self_attn = decoder_layer.self_attn
        self.head_dim = self_attn.head_dim
        self.num_key_value_groups = self_attn.num_key_value_groups  # read by the attention interface (GQA)
        self.scaling = self_attn.scaling
        self.is_causal = False
        self.attn_implementation = attn_implementation
        source_norm, source_q = decoder_layer.input_layernorm, self_attn.q_proj
        self.norm = type(source_norm)(source_norm.weight.shape[0], eps=source_norm.variance_epsilon)
        self.q_proj = nn.Linear(source_q.in_features, source_q.out_features, bias=source_q.bias is not None)
        self.o_proj = nn.Linear(source_q.out_features, source_q.in_features, bias=False)
        self.to(device=source_q.weight.device, dtype=source_q.weight.dtype)
        with torch.no_grad():
            self.norm.weight.copy_(source_norm.weight)
            self.q_proj.weight.copy_(source_q.weight)
            if source_q.bias is not None:
                self.q_proj.bias.copy_(source_q.bias)
            self.o_proj.weight.zero_()

    def forward(self, hidden_states: torch.Tensor, context: InjectedContext, layer: int) -> torch.Tensor:
        """hidden_states (B, T, hidden) -> the cross-attention's residual update (B, T, hidden)."""
        batch, length, _ = hidden_states.shape
        query = self.q_proj(self.norm(hidden_states)).view(batch, length, -1, self.head_dim).transpose(1, 2)
        # (B, H, T, hd): every query sits at the chunk-level position n_b, after all of its row's chunks
        query, _ = apply_rotary_pos_emb(query, query, context.query_cos, context.query_sin)
        attention = ALL_ATTENTION_FUNCTIONS.get_interface(self.attn_implementation, eager_attention_forward)
        output, _ = attention(
            self,
            query,
            context.keys[layer],
            context.values[layer],
            context.attention_mask,
            scaling=self.scaling,
            dropout=0.0,
            is_causal=False,
        )  # (B, T, H, hd)
        output = self.o_proj(output.reshape(batch, length, -1))
        return output * context.has_context
