"""A LoRA-trained adapter with its LoRA merged into the base weights (what `from_pretrained` does) against unmerged.

    OMP_NUM_THREADS=2 python scripts/bench_lora_merge.py ADAPTER [--tokens 8192] [--repeats 3] [--output FILE]

One Landmark passkey prompt of `--tokens` tokens (depth 0.5) through a forward pass of each model, alternating,
`--repeats` times each after an untimed warm-up; reports the median time of each and their ratio, and checks that
the two give the same function: the largest difference of the last position's log-probabilities and whether the
greedy 10-token answers are the same.
"""

import argparse
import json
import statistics
import time
from pathlib import Path

import torch

from sharedllm import SharedLLMForCausalLM, provenance
from sharedllm.evaluation.passkey import build_passkey_prompt, encode, passkey_key
from sharedllm.lora import LORA_DIR, has_upper_lora


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("adapter", type=Path, help="an adapter folder with an upper_lora/ (trained with --lora-rank)")
    parser.add_argument("--tokens", type=int, default=8192, help="prompt length in tokens")
    parser.add_argument("--repeats", type=int, default=3, help="timed forward passes per model")
    parser.add_argument("--output", type=Path, default=None, help="JSON file (default: print only)")
    args = parser.parse_args()
    provenance.pin_commit()  # the JSON names the code this run starts with, whatever is committed meanwhile
    if not has_upper_lora(args.adapter):
        raise SystemExit(f"{args.adapter} has no {LORA_DIR}/: nothing to merge")

    models = {"merged": SharedLLMForCausalLM.from_pretrained(args.adapter),
              "unmerged": SharedLLMForCausalLM.from_pretrained(args.adapter, merge_lora=False)}
    tokenizer = models["merged"].tokenizer
    key = passkey_key(0, args.tokens, 0.5, 0)
    ids = torch.tensor([encode(tokenizer, build_passkey_prompt(tokenizer, args.tokens, 0.5, key))])

    times, last_logprobs, answers = {name: [] for name in models}, {}, {}
    with torch.no_grad():
        for name, model in models.items():  # warm-up, and the answers
            out = model.generate(ids, max_new_tokens=10, do_sample=False, pad_token_id=tokenizer.eos_token_id)
            answers[name] = tokenizer.decode(out[0, ids.shape[1]:], skip_special_tokens=True)
        for _ in range(args.repeats):
            for name, model in models.items():
                started = time.perf_counter()
                logits = model(ids).logits
                times[name].append(time.perf_counter() - started)
                last_logprobs[name] = torch.log_softmax(logits[0, -1].float(), dim=-1)

    merged_s, unmerged_s = (statistics.median(times[name]) for name in ("merged", "unmerged"))
    results = {
        "what": "forward pass over one passkey prompt, LoRA merged into the base weights vs unmerged",
        "adapter": str(args.adapter),
        "prompt_tokens": ids.shape[1],
        "repeats": args.repeats,
        "times_s": times,
        "merged_s": merged_s,
        "unmerged_s": unmerged_s,
        "unmerged_over_merged": unmerged_s / merged_s,
        "max_abs_logprob_difference": (last_logprobs["merged"] - last_logprobs["unmerged"]).abs().max().item(),
        "answers": answers,
        "same_answer": answers["merged"] == answers["unmerged"],
        "key": key,
        **provenance.record(str(models["merged"].device), str(models["merged"].base.dtype).removeprefix("torch.")),
    }
    print(json.dumps(results, indent=1))
    if args.output:
        provenance.write_json(args.output, results)


if __name__ == "__main__":
    main()
