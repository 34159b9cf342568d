"""The two keys `sharedllm eval passkey` missed at 8K, scored teacher-forced with the preset: which key token
fails? Usage: python results/experiments/joint-overlap/first_token_check.py"""
import torch, torch.nn.functional as F
from transformers import DynamicCache
from sharedllm import SharedLLMForCausalLM
from sharedllm.evaluation.passkey import build_passkey_prompt, encode
torch.set_grad_enabled(False)
model = SharedLLMForCausalLM.from_pretrained("adapters/smollm2-135m-joint").eval()
tok = model.tokenizer
for depth, key in [(0.25, 1460), (0.75, 7124), (0.25, 32443)]:
    prompt = build_passkey_prompt(tok, 8192, depth, key)
    ids, full = encode(tok, prompt), encode(tok, f"{prompt} {key}")
    n_key = len(full) - len(ids)
    pre = model(torch.tensor([ids]), past_key_values=DynamicCache(), use_cache=True)
    step = model(torch.tensor([full[-n_key:]]), past_key_values=pre.past_key_values)
    pred = torch.cat([pre.logits[0, -1:], step.logits[0, :-1]]).argmax(-1)
    print(depth, key, "key tokens", tok.convert_ids_to_tokens(full[-n_key:]), "argmax", tok.convert_ids_to_tokens(pred.tolist()))
