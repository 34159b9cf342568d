"""Moving RoPE-rotated keys to other positions without recomputing them.

RoPE rotations compose, R(d) R(p) = R(p + d), so a key cached rotated at position p becomes the key at p + d by one
more rotation. StreamingLLM renumbers its cache after each eviction, InfLLM renumbers the blocks it attends, and
spaced chunks (`context_encoder.spaced_positions`) move the chunks read; all three use `rotate`.
"""

import torch
from transformers.models.llama.modeling_llama import rotate_half


def rotate(x: torch.Tensor, positions: torch.Tensor, rotary_emb: torch.nn.Module) -> torch.Tensor:
    """Rotate x (B, H, S, D) by RoPE angles of `positions` (B, S), any integers (negative = backwards); (1, 1)
    rotates every key by one shift (its cos/sin broadcast).

    Applied to a key rotated at p it gives the key rotated at p + positions. cos/sin come from the model's own
    rotary module (so any fixed-frequency RoPE variant works) with its attention scaling divided out, because the
    cached keys carry that scaling once already. Computed in fp32: keys may be rotated again and again.
    """
    cos, sin = rotary_emb(x.float(), positions)  # (B, S, D) each
    scaling = getattr(rotary_emb, "attention_scaling", 1.0)
    cos, sin = cos[:, None] / scaling, sin[:, None] / scaling  # (B, 1, S, D)
    return (x.float() * cos + rotate_half(x.float()) * sin).to(x.dtype)
