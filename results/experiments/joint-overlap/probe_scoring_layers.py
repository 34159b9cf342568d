"""Diagnosis on passkey prompts (read only to explain a failure; the layer was chosen by calibrate_layer.py on
training exercises): per layer, the needle chunk's rank among chunks by its best token, whether the half holding the
needle wins the chunk's top-level choice, and the rank of the needle's best token in its chunk.
Usage: python probe_scoring_layers.py --length 8192 --depth 0.5 --trials 2"""

import argparse

import torch
from layer_scores import layer_logits, uncompressed_joint

from sharedllm.assets import default_model_path
from sharedllm.evaluation.passkey import teacher_forced_trials
from sharedllm.loading import load_causal_lm


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--length", type=int, default=8192)
    p.add_argument("--depth", type=float, default=0.5)
    p.add_argument("--trials", type=int, default=2)
    args = p.parse_args()
    torch.set_grad_enabled(False)
    base, tok = load_causal_lm(default_model_path())
    model = uncompressed_joint(base)
    C, Ld = model.config.chunk_size, model.config.decoder_window
    for _, ids, n_key in teacher_forced_trials(tok, args.length, [args.depth], args.trials):
        key, prompt = ids[-n_key:], ids[:-n_key]
        n = -(-(len(prompt) - Ld) // C)
        logits = layer_logits(model, torch.tensor(prompt[: n * C]).view(n, C), torch.tensor(prompt[n * C :]))
        hit = next(i for i in range(n * C) if prompt[i : i + n_key] == key)
        chunk, offset = hit // C, hit % C
        print(f"key {tok.decode(key)!r} at chunk {chunk} offset {offset} of {n} chunks")
        line = []
        for index, scores in enumerate(logits.max(2).values):
            best = scores.max(1).values
            halves = scores[chunk].view(2, -1).max(1).values
            token_rank = int((scores[chunk] > scores[chunk, offset : offset + 8].max()).sum())
            won = "+" if int(halves.argmax()) == offset // (C // 2) else "-"
            line.append(f"L{index}:chunk#{int((best > best[chunk]).sum())},half{won},tok#{token_rank}")
        print("  " + "  ".join(line))


if __name__ == "__main__":
    main()
