"""Every headline cell of the default (renamed `joint-exercises` since the promotion) beside the candidate's cell of
the same windows or prompts, with `sharedllm compare`'s paired line (A = the default, B = the candidate) and the grid
rule's verdict (README.md, "The rest of the grid"): `scripts/grid_summary.py` with this folder's arguments (the
script began here and was made general for later candidates; its output is the same).

    python results/experiments/lora-continuation/grid_summary.py
"""

import runpy
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.argv = [sys.argv[0], str(HERE), "more", "--against", "joint-exercises", "--skip", "packaged-check"]
runpy.run_path(str(HERE.parents[2] / "scripts/grid_summary.py"), run_name="__main__")
