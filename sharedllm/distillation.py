"""Self-distillation: the base model with full attention teaches the decoder window what the context changes.

A training sample (n*C context + Ld decoder tokens) fits the base model's native window, so the frozen base can
read it whole with its own attention. Its next-token distributions over the decoder window are the teacher; the
SharedLLM student reads the same window with the context compressed and injected. The KL term gives a signal at
every decoder token (what the context changes there), where the language-modelling loss only rewards the rare
tokens that the context makes predictable. The reference code configures such a term (`kl_loss_cof`) but never
computes it; CEPE's distilled variant uses KL weight 2 + LM weight 1 on the teacher's top-50 probabilities.
"""

from contextlib import contextmanager

import torch
import torch.nn.functional as F


def topk_distillation_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor, top_k: int,
                           mask: torch.Tensor | None = None) -> torch.Tensor:
    """KL(teacher || student) on the teacher's top-k tokens, mean over positions.

    student_logits, teacher_logits: (B, T, V) at the same positions; mask: (B, T) 1 where a position counts.
    The teacher's top-k probabilities are renormalised to sum to 1; the student's are its full-vocabulary
    log-probabilities at those tokens (mass it puts elsewhere is a loss).
    """
    teacher_top, index = teacher_logits.float().topk(top_k, dim=-1)  # (B, T, k)
    teacher_logp = teacher_top.log_softmax(dim=-1)
    student_logp = student_logits.float().log_softmax(dim=-1).gather(-1, index)
    per_position = (teacher_logp.exp() * (teacher_logp - student_logp)).sum(dim=-1)  # (B, T)
    if mask is None:
        return per_position.mean()
    mask = mask.to(per_position.dtype)
    return (per_position * mask).sum() / mask.sum().clamp(min=1)


@contextmanager
def adapters_disabled(module: torch.nn.Module):
    """Run the base as it was before training: LoRA layers (peft, injected in place) switched off, then back on."""
    from sharedllm.lora import lora_modules

    lora_layers = lora_modules(module)
    was_disabled = [m.disable_adapters for m in lora_layers]
    for layer in lora_layers:
        layer.enable_adapters(False)
    try:
        yield
    finally:
        for layer, disabled in zip(lora_layers, was_disabled):
            layer.enable_adapters(not disabled)


def check_teacher_window(base_config, sample_len: int) -> None:
    """The teacher reads whole samples with full attention: past its native window its logits are no target."""
    native = getattr(base_config, "max_position_embeddings", None)
    if native is not None and sample_len > native:
        raise ValueError(f"distillation needs samples within the base model's native window: {sample_len} "
                         f"tokens > {native}")


@torch.no_grad()
def teacher_window_logits(base, input_ids: torch.Tensor, window: int) -> torch.Tensor:
    """The base model's own logits over the last `window` positions of full, unpadded rows, (B, window, V)."""
    check_teacher_window(base.config, input_ids.shape[1])
    with adapters_disabled(base):
        return base(input_ids, logits_to_keep=window).logits
