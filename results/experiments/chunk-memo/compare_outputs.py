"""Trial by trial, the outputs read with `reusing_chunk_encodings` (this folder) against the committed cells of the
same adapter read without it: the same prompts (length, depth or task, trial, seed 0), so the same strings if the
memo changes nothing. Passkey 8K (50 trials), RULER niah_single and niah_multikey 16K (10 trials each).

    python results/experiments/chunk-memo/compare_outputs.py
"""

import json
from pathlib import Path

HERE = Path(__file__).resolve().parent
RETRIEVAL = HERE.parents[1] / "retrieval"
PAIRS = [  # (read with the memo, the committed cell read without it)
    (HERE / "passkey_sharedllm_landmark_20261207-061457.json",
     RETRIEVAL / "passkey_joint-exercises_landmark_20261204-212115.json"),
    (HERE / "ruler-16k" / "ruler_sharedllm_ruler_20261207-073107.json",
     RETRIEVAL / "ruler_joint-exercises_ruler_20261204-205200.json"),
    (HERE / "ruler-16k" / "ruler_sharedllm_ruler_20261207-074006.json",
     RETRIEVAL / "ruler_joint-exercises_ruler_20261204-213155.json"),
]


def records(path: Path) -> dict:
    result = json.loads(path.read_text())
    return {(r["length"], r.get("depth", r.get("task")), r["trial"]): r for r in result["details"]["records"]}


def right(record: dict) -> bool:
    return bool(record["correct"]) if "correct" in record else record["score"] == 1


for memo_path, reference_path in PAIRS:
    memo, reference = records(memo_path), records(reference_path)
    differ = [key for key in memo if memo[key]["output"] != reference[key]["output"]]
    print(f"{memo_path.relative_to(HERE)}: {len(memo)} trials with the memo, {len(memo) - len(differ)} with the same "
          f"output as without it; right {sum(map(right, memo.values()))} and {sum(map(right, reference.values()))}")
    for key in differ:
        print("  differs:", key, repr(memo[key]["output"]), repr(reference[key]["output"]))
