"""Trial by trial, the passkey outputs read with `reusing_chunk_encodings` (this folder) against the committed
default's 8K cell read without it: the same prompts (length, depth, trial, seed 0), so the same strings if the memo
changes nothing.

    python results/experiments/chunk-memo/compare_outputs.py
"""

import json
from pathlib import Path

HERE = Path(__file__).resolve().parent
REFERENCE = HERE.parents[1] / "retrieval" / "passkey_joint-exercises_landmark_20261204-212115.json"


def records(path: Path) -> dict:
    return {(r["length"], r["depth"], r["trial"]): r for r in json.loads(path.read_text())["details"]["records"]}


reference = records(REFERENCE)
memo = records(HERE / "passkey_sharedllm_landmark_20261207-061457.json")
differ = [key for key in memo if memo[key]["output"] != reference[key]["output"]]
print(f"{len(memo)} trials with the memo, {len(memo) - len(differ)} with the same output as without it; "
      f"correct {sum(r['correct'] for r in memo.values())} and {sum(r['correct'] for r in reference.values())}")
for key in differ:
    print("differs:", key, repr(memo[key]["output"]), repr(reference[key]["output"]))
