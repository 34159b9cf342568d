"""Each LoRA's window floor against the other's, on the same windows (README.md, "Floors").

`sharedllm compare` pairs two base folders only when both results record one tokenizer; these floor files were
written before results recorded it (63f838c), so it refuses them. They are the one base with one LoRA or the other
merged (`scripts/export_merged_base.py`), same tokenizer, so the windows are the same and the paired comparison
holds. This calls compare's own held-out lines past that check; floors written since pair with `sharedllm compare`.

    python results/experiments/lora-continuation/compare_floors.py [validation|test]
"""

import sys
from pathlib import Path

from sharedllm.evaluation.compare import heldout_lines, load

FOLDER = Path(__file__).parent / f"floors-8k-{sys.argv[1] if len(sys.argv) > 1 else 'validation'}"

for domain in ("books", "math", "code"):
    first, second = (load(FOLDER / f"heldout_{domain}_8192_floor-{arm}.json") for arm in ("default", "more"))
    print("\n".join(heldout_lines(first, second)[:3]))
