"""Can joint injection's selection combine layers instead of picking one? On passkey prompts (diagnosis only),
token scores under several aggregates of the layers' logits, and whether the tree's path reaches the needle's leaf
and the needle chunk ranks first. Usage: python probe_scoring_aggregates.py --length 16384 --trials 2"""

import argparse
import json

import torch
from layer_scores import layer_logits, path_reaches, uncompressed_joint

from sharedllm.assets import default_model_path
from sharedllm.evaluation.passkey import teacher_forced_trials
from sharedllm.loading import load_causal_lm


def aggregates(logits):
    """logits (L, n, H, C) -> name -> (n, C) token scores."""
    L = logits.shape[0]
    head_max = logits.max(2).values  # (L, n, C)
    log_prob = torch.log_softmax(logits, dim=-1).max(2).values  # within-chunk log-probability, best head
    return {
        "last": head_max[-1],
        "upper_half_logit_sum": head_max[L // 2 :].sum(0),
        "all_logit_sum": head_max.sum(0),
        "all_logprob_sum": log_prob.sum(0),
        "upper_half_logprob_sum": log_prob[L // 2 :].sum(0),
        "all_prob_sum": torch.softmax(logits, dim=-1).amax(2).sum(0),
        "upper_half_prob_sum": torch.softmax(logits[L // 2 :], dim=-1).amax(2).sum(0),
    }


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--length", type=int, default=16384)
    p.add_argument("--depths", type=float, nargs="+", default=[0.1, 0.3, 0.5, 0.7, 0.9])
    p.add_argument("--trials", type=int, default=5, help="trials in all, spread over the depths")
    args = p.parse_args()
    torch.set_grad_enabled(False)
    base, tok = load_causal_lm(default_model_path())
    model = uncompressed_joint(base)
    C, Ld = model.config.chunk_size, model.config.decoder_window
    totals = {}
    for _, ids, n_key in teacher_forced_trials(tok, args.length, args.depths, args.trials):
        key, prompt = ids[-n_key:], ids[:-n_key]
        n = -(-(len(prompt) - Ld) // C)
        logits = layer_logits(model, torch.tensor(prompt[: n * C]).view(n, C), torch.tensor(prompt[n * C :]))
        hit = next(i for i in range(n * C) if prompt[i : i + n_key] == key)
        chunk, offset = hit // C, hit % C
        for name, scores in aggregates(logits).items():
            best = scores.max(1).values
            row = totals.setdefault(name, {"path": 0, "chunk_top1": 0, "chunk_top4": 0, "trials": 0})
            rank = int((best > best[chunk]).sum())
            row["path"] += path_reaches(scores[chunk], offset, 3)
            row["chunk_top1"] += rank == 0
            row["chunk_top4"] += rank < 4
            row["trials"] += 1
    for name, row in totals.items():
        print(json.dumps({"length": args.length, "aggregate": name, **row}))


if __name__ == "__main__":
    main()
