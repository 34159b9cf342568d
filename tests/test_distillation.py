"""Self-distillation loss, copy warm-up samples, and their use in a training step (issue #10 levers)."""

import math

import numpy as np
import torch

from conftest import tiny_model
from sharedllm import data
from sharedllm.distillation import teacher_window_logits, topk_distillation_loss


def test_topk_distillation_loss_equals_a_hand_computation():
    torch.manual_seed(0)
    student, teacher = torch.randn(2, 3, 10), torch.randn(2, 3, 10)
    mask = torch.tensor([[1, 1, 0], [1, 0, 1]])
    expected, count = 0.0, 0
    for b in range(2):
        for t in range(3):
            if not mask[b, t]:
                continue
            top = sorted(range(10), key=lambda v: -float(teacher[b, t, v]))[:4]
            z = sum(math.exp(float(teacher[b, t, v])) for v in top)
            zs = sum(math.exp(float(student[b, t, v])) for v in range(10))
            for v in top:
                p = math.exp(float(teacher[b, t, v])) / z
                expected += p * (math.log(p) - (float(student[b, t, v]) - math.log(zs)))
            count += 1
    loss = topk_distillation_loss(student, teacher, top_k=4, mask=mask)
    assert abs(float(loss) - expected / count) < 1e-5


def test_distillation_loss_is_zero_when_the_student_is_the_teacher_on_its_top_k():
    teacher = torch.full((1, 2, 6), -30.0)
    teacher[..., :2] = torch.tensor([1.0, 0.0])  # all mass on two tokens, as a top-2 teacher sees it
    assert float(topk_distillation_loss(teacher, teacher, top_k=2)) < 1e-6


def test_teacher_is_the_base_with_full_attention_over_the_whole_sample():
    base = tiny_model("llama")
    ids = torch.randint(3, 128, (2, 40))
    teacher = teacher_window_logits(base, ids, window=16)
    torch.testing.assert_close(teacher, base(ids).logits[:, -16:])


def test_copy_sample_puts_its_source_only_in_context():
    rng = np.random.default_rng(0)
    ids = np.arange(100, 100 + 96)  # distinct tokens: a copied span can be located exactly
    for _ in range(20):
        copied = data.copy_sample(ids, context_len=64, rng=rng)
        assert (copied[:64] == ids[:64]).all()  # the context is untouched
        start = int(copied[64]) - 100
        assert 0 <= start <= 64 - 32  # the source span lies wholly inside the context
        assert (copied[64:] == ids[start:start + 32]).all()


def test_teacher_ignores_an_upper_lora():
    from sharedllm.lora import add_upper_lora
    from sharedllm.modeling import SharedLLMForCausalLM

    base = tiny_model("llama")
    ids = torch.randint(3, 128, (1, 40))
    plain = base(ids).logits[:, -16:]
    model = SharedLLMForCausalLM.from_base(base, n_injected_layers=2, chunk_size=16, decoder_window=24, tree_depth=1,
                                           tokens_per_node=8)
    add_upper_lora(model, rank=4)
    with torch.no_grad():
        for name, p in model.base.named_parameters():
            if "lora_B" in name:
                p.normal_()  # a trained LoRA changes the base's outputs ...
    assert not torch.allclose(base(ids).logits[:, -16:], plain, atol=1e-4)
    torch.testing.assert_close(teacher_window_logits(base, ids, window=16), plain)  # ... but not the teacher's
