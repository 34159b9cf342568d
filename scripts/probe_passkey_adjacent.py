"""Why does the base miss the passkey at depth 1.0? The base model alone, full attention, greedy, 10 tokens.

1. The Landmark passkey prompt (sharedllm.evaluation.passkey, unchanged) at 1K and 2K tokens, needle depth 1.0
   (needle, then an empty filler line, then the question), 0.99 and 0.9; TRIALS keys each.
2. The training exercises' wording (sharedllm.data: " Note: the code of X is V." / "Question: what is the code of
   X? Answer: the code of X is") after 3,000 characters of the passkey filler, with the fact right before the
   question ("adjacent") or 300 filler characters between them.
Writes results/experiments/passkey-depth-1/probe.json.  Usage: python scripts/probe_passkey_adjacent.py
"""

import json
import random
import sys
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from sharedllm.assets import default_model_path
from sharedllm.data import RETRIEVAL_FACT, RETRIEVAL_QUESTION
from sharedllm.evaluation.metrics import first_integer
from sharedllm.evaluation.passkey import _filler, build_passkey_prompt, encode, passkey_key

TRIALS = 6
OUT = Path("results/experiments/passkey-depth-1/probe.json")


def main() -> int:
    path = default_model_path()
    tokenizer, model = AutoTokenizer.from_pretrained(path), AutoModelForCausalLM.from_pretrained(path).eval()

    @torch.no_grad()
    def answer(text: str) -> str:
        ids = torch.tensor([encode(tokenizer, text)])
        out = model.generate(ids, max_new_tokens=10, do_sample=False)
        return tokenizer.decode(out[0, ids.shape[1]:], skip_special_tokens=True)

    rows = []
    for length in (1024, 2048):
        for depth in (1.0, 0.99, 0.9):
            for trial in range(TRIALS):
                key = passkey_key(0, length, depth, trial)
                output = answer(build_passkey_prompt(tokenizer, length, depth, key))
                rows.append(dict(prompt="passkey", length=length, depth=depth, key=key, output=output,
                                 correct=first_integer(output) == key))
    rng = random.Random(0)
    for between in (0, 300):
        for _ in range(TRIALS):
            value, key = rng.randint(100, 10_000_000), "Alma's locker"
            text = (_filler(3000) + RETRIEVAL_FACT.format(key=key, value=value) + _filler(between)
                    + RETRIEVAL_QUESTION.format(key=key))
            output = answer(text)
            rows.append(dict(prompt="exercise wording", filler_between=between, key=value, output=output,
                             correct=first_integer(output) == value))
    summary = {}
    for row in rows:
        cell = (f"passkey {row['length']} depth {row['depth']}" if row["prompt"] == "passkey"
                else f"exercise wording, {row['filler_between']} filler chars between")
        hits, total = summary.get(cell, (0, 0))
        summary[cell] = (hits + row["correct"], total + 1)
    for cell, (hits, total) in summary.items():
        print(f"{cell}: {hits}/{total}")
    OUT.parent.mkdir(parents=True, exist_ok=True)
    OUT.write_text(json.dumps({"model": str(path), "command": " ".join(["python", *sys.argv]),
                               "summary": {k: f"{h}/{t}" for k, (h, t) in summary.items()}, "rows": rows}, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
