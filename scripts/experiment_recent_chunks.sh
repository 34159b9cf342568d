#!/usr/bin/env bash
# Always read the most recent chunks (issue #10): the default preset (context_chunks=4) with recent_chunks = 0, 1, 2
# of its 4 chunks, perplexity at 8K and 16K on 4 windows of the *validation* books (the knob is tuned here, so the
# test books stay out of it), then passkey at 8K (the 10 prompts of scripts/experiment_frontier.sh) for the pick.
# Write-up: results/experiments/recent-chunks/README.md. Usage: scripts/experiment_recent_chunks.sh [OUT_DIR]
set -euo pipefail
OUT=${1:-results/experiments/recent-chunks}
PPL="python -m sharedllm eval ppl --domains books --split validation --max-windows 4 --output $OUT/ppl"
for LENGTH in 8K 16K; do
    $PPL --lengths $LENGTH --methods window
    for RECENT in 0 1 2; do
        $PPL --lengths $LENGTH --methods sharedllm --recent-chunks $RECENT --label joint-k4-r$RECENT
    done
done
python -m sharedllm eval passkey --methods sharedllm --recent-chunks 1 --lengths 8K --trials 2 \
    --output "$OUT/passkey" --label joint-k4-r1
