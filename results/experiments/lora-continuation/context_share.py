"""What the new default's context adds to its own weights, against what full attention of the same weights adds
(README.md, "Full attention of the same weights"): on the 8K windows of one split (test: the headline's), per
domain, the window floor of the weights (`floors-8k-SPLIT/`, the LoRA merged, the window alone), the default itself
(`heldout-8k-SPLIT/`, label `more`; on test the headline's `sharedllm` cell) and full attention of the same weights
(`full-8k-SPLIT/`); the paired lines as `sharedllm compare` prints them, and the share (mean NLL of floor -
default) / (floor - full).

The floor files predate results recording their tokenizer, so `sharedllm compare` refuses to pair them with another
base folder; as in `compare_floors.py`, this calls compare's held-out lines past that check (one base, one
tokenizer, the LoRA merged or not).

    python results/experiments/lora-continuation/context_share.py [test|validation]
"""

import sys
from pathlib import Path

from sharedllm.evaluation.compare import heldout_lines, load

HERE = Path(__file__).parent
SPLIT = sys.argv[1] if len(sys.argv) > 1 else "test"


def mean_nll(result: dict) -> float:
    return result["summary"]["mean_nll"]


for domain in ("books", "code", "math"):
    floor = load(HERE / f"floors-8k-{SPLIT}" / f"heldout_{domain}_8192_floor-more.json")
    default = load(HERE / f"heldout-8k-{SPLIT}" / f"heldout_{domain}_8192_more.json")
    full = load(HERE / f"full-8k-{SPLIT}" / f"heldout_{domain}_8192_full-more.json")
    print(f"== {domain} 8K {SPLIT}: floor {floor['summary']['ppl']:.3f}, default {default['summary']['ppl']:.3f}, "
          f"full {full['summary']['ppl']:.3f}")
    for name, (a, b) in {"floor / default": (floor, default), "default / full": (default, full)}.items():
        print(f"{name}: " + next(line for line in heldout_lines(a, b) if line.startswith("PPL A / PPL B")))
    share = (mean_nll(floor) - mean_nll(default)) / (mean_nll(floor) - mean_nll(full))
    print(f"the default's share of what full attention of the same weights adds over their window: {share:.0%}")
