#!/usr/bin/env bash
# The default adapter (adapters/smollm2-135m-joint-more) read with --chunk-spacing 128, on the headline grid's test
# cells, against the default's own headline cells (same windows, same prompts); the rule is in README.md.
#   results/experiments/spacing-more/run.sh lane-a   # RULER niah_multikey 32K, niah_single 32K, passkey 8K, 16K
#   results/experiments/spacing-more/run.sh lane-b   # perplexity 8K (books, code, math), then 16K, then 4K
# Each command continues a stopped run from its journal (commit the .partial.jsonl files at a session's end).
set -euo pipefail
exec scripts/candidate_grid.sh results/experiments/spacing-more spacing128 "${1:?lane-a or lane-b}" --adapter adapters/smollm2-135m-joint-more --chunk-spacing 128
