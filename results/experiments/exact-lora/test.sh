#!/usr/bin/env bash
# Rule 4 (README.md): the arm, packaged as adapters/smollm2-135m-joint-exact, on the headline grid's test cells,
# against the default's own headline cells (same windows, same prompts), lane by lane (scripts/candidate_grid.sh).
#   results/experiments/exact-lora/test.sh lane-a|...|lane-g (scripts/candidate_grid.sh)
# Each command continues a stopped run from its journal (commit the .partial.jsonl files at a session's end);
# `python scripts/grid_summary.py results/experiments/exact-lora/test joint-exact` prints the grid and the verdicts.
set -euo pipefail
exec scripts/candidate_grid.sh results/experiments/exact-lora/test joint-exact "${1:?lane-a to lane-g}" \
  --adapter adapters/smollm2-135m-joint-exact
