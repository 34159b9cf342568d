"""Teacher-forced passkey through the library's own joint injection (one forward per trial, no generation): a
trial counts when greedy argmax predicts every key token, the same event as greedy generation emitting the key
(results/experiments/joint-injection/probe.py scores the same way). Prompts, keys and depths as the probe.

    python results/experiments/joint-library/teacher_forced.py --lengths 4096 --variants base \
        --knobs chunk_size=512 decoder_window=512 tree_depth=0 tokens_per_node=512
"""

import argparse
import json
import time

import torch
import torch.nn.functional as F
from transformers import DynamicCache

from sharedllm.assets import default_model_path
from sharedllm.evaluation.passkey import teacher_forced_trials
from sharedllm.loading import load_causal_lm
from sharedllm.modeling import SharedLLMForCausalLM


def parse_value(text):
    for kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            pass
    return {"none": None, "true": True, "false": False}.get(text.lower(), text)


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--lengths", type=int, nargs="+", default=[4096])
    p.add_argument("--trials", type=int, default=10)
    p.add_argument("--depths", type=float, nargs="+", default=[0.1, 0.3, 0.5, 0.7, 0.9])
    p.add_argument("--knobs", nargs="*", default=[], help="K=V shared by every variant")
    p.add_argument("--variants", nargs="+", default=["base"],
                   help="K=V[,K=V] per variant; 'base' = the shared knobs only; sink=bos: every chunk read after BOS alone")
    p.add_argument("--output", default=None)
    args = p.parse_args()
    torch.set_grad_enabled(False)
    base, tok = load_causal_lm(default_model_path())
    shared = {k: parse_value(v) for k, v in (item.split("=", 1) for item in args.knobs)}
    rows = []
    for length in args.lengths:
        prompts = teacher_forced_trials(tok, length, args.depths, args.trials)
        for variant in args.variants:
            knobs = dict(shared, injection="joint", n_injected_layers=base.config.num_hidden_layers)
            for item in [] if variant == "base" else variant.split(","):
                k, v = item.split("=", 1)
                knobs[k] = parse_value(v)
            bos_sink = knobs.pop("sink", None) == "bos"
            model = SharedLLMForCausalLM.from_base(base, **knobs).eval()
            if bos_sink:  # ablation: every chunk read after BOS instead of the token before it in the text
                encoder = model.context_encoder
                encoder.tokens_before = lambda chunk_ids, previous, per_row=None: encoder.text_start_prefix(
                    chunk_ids.shape[0], chunk_ids.device)
            start, hits, nll, by_depth = time.time(), 0, 0.0, {}
            for depth, ids, n_key in prompts:
                # as generation splits it: a cached prefill of the prompt (window and query from the prompt alone),
                # then the key tokens fed as one decode step
                prefill = model(torch.tensor([ids[:-n_key]]), past_key_values=DynamicCache(), use_cache=True)
                step = model(torch.tensor([ids[-n_key:]]), past_key_values=prefill.past_key_values)
                target = torch.tensor(ids[-n_key:])
                pred = torch.cat([prefill.logits[0, -1:], step.logits[0, :-1]])
                hit = bool((pred.argmax(-1) == target).all())
                hits += hit
                nll += float(F.cross_entropy(pred.float(), target))
                by_depth.setdefault(depth, []).append(hit)
            row = dict(length=length, variant=variant, knobs=knobs, accuracy=hits / len(prompts),
                       key_nll=round(nll / len(prompts), 3), trials=len(prompts),
                       by_depth={str(d): sum(h) / len(h) for d, h in sorted(by_depth.items())},
                       seconds=round(time.time() - start, 1))
            rows.append(row)
            print(json.dumps(row), flush=True)
    if args.output:
        json.dump(dict(args=vars(args), rows=rows), open(args.output, "w"), indent=1)


if __name__ == "__main__":
    main()
