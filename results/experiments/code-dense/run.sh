#!/usr/bin/env bash
# Issue #10, code's gap to YaRN: is it how much of each chunk is kept? Validation code only (never test), 16 windows
# per cell (the seeded plan of `eval heldout`, seed 0), one thread per job. Plan and rule: README.md.
#   bash results/experiments/code-dense/run.sh a   # YaRN at 16K (the reference; stopped at 6 of 16 windows, README.md)
#   bash results/experiments/code-dense/run.sh b   # dense (every position of the chunks read) at 8K and 16K, full at 8K
#   bash results/experiments/code-dense/run.sh c   # each chunk encoded after the 256 tokens before it (S = 256), 8K
# The default's and window's cells at 8K / 16K are reused from ../code-chunks/ and ../tree-selection/ (same plan).
set -euo pipefail
# The adapter is the default of the time, named since the default changed (2026-12-07).
export HF_HUB_OFFLINE=1
OUT=results/experiments/code-dense
COMMON=(--split validation --domains code --max-windows 16 --threads 1 --output "$OUT")
case "${1:?a, b or c}" in
  a) sharedllm eval heldout --methods yarn --lengths 16K "${COMMON[@]}" ;;
  b) sharedllm eval heldout --methods sharedllm --adapter adapters/smollm2-135m-joint-exercises --label dense --tokens-per-node 64 --lengths 8K 16K "${COMMON[@]}"
     sharedllm eval heldout --methods full --lengths 8K "${COMMON[@]}" ;;
  c) sharedllm eval heldout --methods sharedllm --adapter adapters/smollm2-135m-joint-exercises --label overlap256 --chunk-overlap 256 --lengths 8K "${COMMON[@]}" ;;
  *) echo "a, b or c" >&2; exit 2 ;;
esac
