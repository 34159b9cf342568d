"""What the new default's context adds to its own weights, against what full attention of the same weights adds
(README.md, "Full attention of the same weights"): on the 8K windows of one split (test: the headline's), per
domain, the window floor of the weights (`floors-8k-SPLIT/`, the LoRA merged, the window alone), the default itself
(`heldout-8k-SPLIT/`, label `more`; on test the headline's `sharedllm` cell) and full attention of the same weights
(`full-8k-SPLIT/`); the paired lines as `sharedllm compare` prints them, and the share (mean NLL of floor -
default) / (floor - full). FOLDER:LABEL adds another reading of the same weights (`spacing-8k-validation:spacing128`)
beside the default, where its cell exists.

The floor files predate results recording their tokenizer, so `sharedllm compare` refuses to pair them with another
base folder; as in `compare_floors.py`, this calls compare's held-out lines past that check (one base, one
tokenizer, the LoRA merged or not).

    python results/experiments/lora-continuation/context_share.py [test|validation] [FOLDER:LABEL]
"""

import sys
from pathlib import Path

from sharedllm.evaluation.compare import heldout_lines, load

HERE = Path(__file__).parent
SPLIT = sys.argv[1] if len(sys.argv) > 1 else "test"
READINGS = {"default": (f"heldout-8k-{SPLIT}", "more")}
if len(sys.argv) > 2:
    folder, label = sys.argv[2].split(":")
    READINGS[label] = (folder, label)


def mean_nll(result: dict) -> float:
    return result["summary"]["mean_nll"]


def paired(name: str, a: dict, b: dict) -> str:
    return f"{name}: " + next(line for line in heldout_lines(a, b) if line.startswith("PPL A / PPL B"))


for domain in ("books", "code", "math"):
    cell = f"heldout_{domain}_8192"
    floor = load(HERE / f"floors-8k-{SPLIT}" / f"{cell}_floor-more.json")
    full_path = HERE / f"full-8k-{SPLIT}" / f"{cell}_full-more.json"
    if not full_path.exists():
        print(f"== {domain} 8K {SPLIT}: no full attention cell yet")
        continue
    full = load(full_path)
    print(f"== {domain} 8K {SPLIT}: floor {floor['summary']['ppl']:.3f}, full {full['summary']['ppl']:.3f}")
    for name, (folder, label) in READINGS.items():
        path = HERE / folder / f"{cell}_{label}.json"
        if not path.exists():
            continue
        reading = load(path)
        share = (mean_nll(floor) - mean_nll(reading)) / (mean_nll(floor) - mean_nll(full))
        print(f"{name} {reading['summary']['ppl']:.3f}; its share of what full attention of the same weights adds over "
              f"their window: {share:.0%}")
        print(paired(f"  floor / {name}", floor, reading))
        print(paired(f"  {name} / full", reading, full))
        if name != "default":
            print(paired(f"  default / {name}", load(HERE / READINGS["default"][0] / f"{cell}_more.json"), reading))
