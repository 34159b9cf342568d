#!/usr/bin/env bash
# The candidate reading exact-g512 (README.md: every token of the 12 chunks read kept, side by side) on the headline
# grid's test cells, against the default's own headline cells (same windows, same prompts), in ../spacing-more/'s order.
#   results/experiments/context-gap/test.sh lane-a   # RULER niah_multikey 32K, niah_single 32K, passkey 8K, 16K
#   results/experiments/context-gap/test.sh lane-b   # perplexity 8K (books, code, math), then 16K, then 4K
#   results/experiments/context-gap/test.sh lane-c   # RULER niah_multikey and niah_single 16K (issue #10's cells)
#   results/experiments/context-gap/test.sh lane-d   # passkey 32K, 64K
#   results/experiments/context-gap/test.sh lane-e   # perplexity books 32K, 64K; lane-f: math 32K, 64K
#   results/experiments/context-gap/test.sh lane-g --threads 2   # the 128K cells: alone on the machine
# Flags after the lane go to every eval command. Each command continues a stopped run from its journal (commit the .partial.jsonl files at a session's end).
set -euo pipefail
source results/experiments/context-gap/readings.sh  # EXACT, SPACED
exec scripts/candidate_grid.sh results/experiments/context-gap/test exact-g512 "${1:?lane-a to lane-g}" --adapter adapters/smollm2-135m-joint-more "${EXACT[@]}" "${SPACED[@]}" "${@:2}"
