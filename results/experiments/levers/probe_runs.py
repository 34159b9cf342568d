"""Validation PPL and planted-fact answers (exact, token accuracy, NLL) for runs of scripts/experiment_levers.sh,
against the same model untrained (o_proj = 0: the base on its decoder window), on the runs' own validation
windows (the run's knobs; facts planted by training.planted_validation_answers, as `sharedllm train` validates).

    python results/experiments/levers/probe_runs.py runs/levers/plain runs/levers/levers --output probe.json
"""

import argparse
import json
import math

import torch
import torch.nn.functional as F
from accelerate import Accelerator

from sharedllm import training
from sharedllm.modeling import SharedLLMForCausalLM


@torch.no_grad()
def answer_scores(model, windows, config, tokenizer):
    exact, right, total, nll = 0, 0, 0, 0.0
    for i in range(len(windows)):
        logits, targets = training.planted_validation_answers(model, windows, i, config, tokenizer, "cpu")
        scored = targets != -100
        predicted = logits.argmax(-1)[scored]
        exact += int(bool((predicted == targets[scored]).all()))
        right += int((predicted == targets[scored]).sum())
        total += int(scored.sum())
        nll += float(F.cross_entropy(logits[scored].float(), targets[scored], reduction="sum"))
    return dict(exact=f"{exact}/{len(windows)}", token_accuracy=round(right / total, 3), answer_nll=round(nll / total, 3))


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("runs", nargs="+")
    parser.add_argument("--output", default=None)
    args = parser.parse_args()
    rows, accelerator = [], Accelerator(cpu=True)
    for run in args.runs:
        knobs = json.load(open(f"{run}/training_summary.json"))["knobs"]
        config = training.TrainConfig(**{k: v for k, v in knobs.items() if k in training.TrainConfig.__dataclass_fields__})
        config.progress = False
        untrained, tokenizer = training.build_model(config)
        _, validation, _ = training.prepare_data(config, training.load_training_documents(config), tokenizer, accelerator)
        trained = SharedLLMForCausalLM.from_pretrained(run, base=untrained.base)
        for name, model in [("untrained", untrained), ("trained", trained)]:
            model.eval()
            row = dict(run=run, model=name, val_ppl=round(math.exp(training.evaluate(model, validation, config, accelerator)), 3),
                       **answer_scores(model, validation, config, tokenizer))
            rows.append(row)
            print(json.dumps(row), flush=True)
    if args.output:
        json.dump(rows, open(args.output, "w"), indent=1)


if __name__ == "__main__":
    main()
