"""Self-injection: how an injected upper layer reads the lower model's context keys/values.

The keys and values are the lower model's own (the same layer of the same weights, run over the context), so no
key/value projection is needed. Two ways to read them (`config.injection`):
- "cross" (the paper): a new cross-attention between the layer's self-attention and its MLP; only a norm, a
  query projection and an output projection are new (`ContextCrossAttention`).
- "joint": the context keys/values join the layer's own self-attention softmax, as a prefix of the window's keys
  (`joint_self_attention`); nothing is new, so the untrained base already attends to its context the way it
  attends to earlier tokens of one long sequence.
"""

import copy
from dataclasses import dataclass

import torch
from torch import nn
from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS
from transformers.models.llama.modeling_llama import apply_rotary_pos_emb, eager_attention_forward


MASKED_ATTENTION_IMPLEMENTATIONS = ("eager", "sdpa")  # others get sdpa: they take no additive padding mask


def masked_attention_implementation(implementation: str) -> str:
    """The attention implementation that reads the context: the base's own where it takes an additive mask."""
    return implementation if implementation in MASKED_ATTENTION_IMPLEMENTATIONS else "sdpa"


def head_states(projection: nn.Module, head_norm: nn.Module | None, hidden: torch.Tensor, head_dim: int):
    """(..., hidden) -> (..., heads, hd): a query or key projection split into heads, then through the layer's
    per-head norm where it has one (Qwen3's q_norm / k_norm), before RoPE, as the layer's own attention computes it."""
    states = projection(hidden).view(*hidden.shape[:-1], -1, head_dim)
    return states if head_norm is None else head_norm(states)


@dataclass
class InjectedContext:
    """Compressed context of one batch, as the upper model's injected layers read it.

    keys / values: one (B, Hkv, S, hd) tensor per injected layer; S = chunks * (kept positions per chunk), post-RoPE.
    attention_mask: (B, 1, 1, S) additive float mask (0 = attend, dtype min = padding), or None if no padding.
    query_cos / query_sin: (B, 1, hd) rotation of the cross-attention queries (chunk-level position n_b); unused
        by joint injection, whose queries keep the window's own positions.
    has_context: (B, 1, 1) 1.0 where the row has at least one chunk; rows without one get no injection.
    window_mask: joint injection only: (B, 1, T, W) additive causal mask of the decoder window's own keys.
    keys / values / attention_mask cover the chunks only; joint injection puts the sink before them.
    """

    keys: list[torch.Tensor]
    values: list[torch.Tensor]
    attention_mask: torch.Tensor | None
    query_cos: torch.Tensor
    query_sin: torch.Tensor
    has_context: torch.Tensor
    window_mask: torch.Tensor | None = None
    # joint injection only: the attention sink's (1, Hkv, 1, hd) keys and values for every layer of the base,
    # read before the chunks in layers 0..M-1 and alone (before the window) in layers M..N-1
    sink_keys: list[torch.Tensor] | None = None
    sink_values: list[torch.Tensor] | None = None


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
        # a per-head query norm (Qwen3) starts as a copy too; None where the layer has none (Llama, Mistral, Qwen2)
        self.q_norm = copy.deepcopy(self_attn.q_norm) if getattr(self_attn, "q_norm", None) is not None else None
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
        query = head_states(self.q_proj, self.q_norm, self.norm(hidden_states), self.head_dim).transpose(1, 2)
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


def window_attention_mask(window_mask: torch.Tensor, n_queries: int, dtype: torch.dtype) -> torch.Tensor:
    """(B, W) real-token mask of the whole decoder window (cached tokens included) -> (B, 1, T, W) additive causal
    mask for its last T = n_queries tokens (0 = attend, dtype min = masked). Explicit, because with a context
    prefix the keys outnumber the queries and a bare is_causal would align the diagonal to the wrong corner."""
    width = window_mask.shape[1]
    key_index = torch.arange(width, device=window_mask.device)
    query_index = torch.arange(width - n_queries, width, device=window_mask.device)
    allowed = (key_index[None, :] <= query_index[:, None])[None] & window_mask.bool()[:, None, :]  # (B, T, W)
    return torch.zeros(allowed.shape, dtype=dtype, device=window_mask.device).masked_fill(
        ~allowed, torch.finfo(dtype).min
    )[:, None]


def joint_self_attention(
    self_attn: nn.Module,
    hidden_states: torch.Tensor,
    context: InjectedContext,
    layer: int,
    position_embeddings: tuple[torch.Tensor, torch.Tensor],
    window_mask: torch.Tensor,
    cache=None,
) -> torch.Tensor:
    """The layer's own attention, its queries over [sink] + [context keys] + [window keys] in one softmax; layers
    at or above M (no context keys) read [sink] + [window keys].

    hidden_states: (B, T, hidden), already through the layer's input norm; window_mask: (B, 1, T, W) from
    `window_attention_mask`; cache: the window's self-attention cache (updated with the T new keys/values as the
    stock layer would). Returns the attention output after o_proj, (B, T, hidden).
    """
    batch, length, _ = hidden_states.shape
    shape = (batch, length, -1, self_attn.head_dim)
    query = head_states(self_attn.q_proj, getattr(self_attn, "q_norm", None), hidden_states,
                        self_attn.head_dim).transpose(1, 2)  # (B, H, T, hd)
    key = head_states(self_attn.k_proj, getattr(self_attn, "k_norm", None), hidden_states,
                      self_attn.head_dim).transpose(1, 2)  # (B, Hkv, T, hd)
    value = self_attn.v_proj(hidden_states).view(shape).transpose(1, 2)
    cos, sin = position_embeddings
    query, key = apply_rotary_pos_emb(query, key, cos, sin)
    if cache is not None:
        key, value = cache.update(key, value, self_attn.layer_idx)  # (B, Hkv, W, hd)
    sink_key = context.sink_keys[layer].expand(batch, -1, -1, -1)  # (B, Hkv, 1, hd)
    sink_value = context.sink_values[layer].expand(batch, -1, -1, -1)
    injected = layer < len(context.keys)
    n_context = context.keys[layer].shape[2] if injected else 0
    context_mask = context.attention_mask if injected else None
    if context_mask is None:
        context_mask = window_mask.new_zeros(batch, 1, 1, n_context)
    context_mask = torch.cat([window_mask.new_zeros(batch, 1, 1, 1), context_mask], dim=-1)  # the sink: always
    context_keys = [sink_key, context.keys[layer]] if injected else [sink_key]
    context_values = [sink_value, context.values[layer]] if injected else [sink_value]
    keys = torch.cat([*context_keys, key], dim=2)  # (B, Hkv, 1 + S + W, hd)
    values = torch.cat([*context_values, value], dim=2)
    mask = torch.cat([context_mask.expand(-1, -1, length, -1), window_mask], dim=-1)  # (B, 1, T, 1 + S + W)
    attention = ALL_ATTENTION_FUNCTIONS.get_interface(
        masked_attention_implementation(self_attn.config._attn_implementation), eager_attention_forward
    )
    output, _ = attention(self_attn, query, keys, values, mask, scaling=self_attn.scaling, dropout=0.0)
    return self_attn.o_proj(output.reshape(batch, length, -1))
