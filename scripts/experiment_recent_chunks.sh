#!/usr/bin/env bash
# Always read the most recent chunks (issue #10): the preset with context_chunks=4 (default until 2026-12-02), r = 0, 1, 2
# of its 4 chunks, perplexity by the CEPE protocol at 8K and 16K on 4 windows of the *validation* books (the knob
# is tuned here, so the test books stay out of it), the base with full attention at 8K on the same windows, and
# recent_chunks = 0, 1 on 4 windows of the validation math files; then r = 1 with k = 8 on both.
# Write-up: results/experiments/recent-chunks/README.md. Usage: scripts/experiment_recent_chunks.sh [OUT_DIR]
set -euo pipefail
OUT=${1:-results/experiments/recent-chunks}
PPL="python -m sharedllm eval ppl --split validation --max-windows 4"
for LENGTH in 8K 16K; do
    $PPL --domains books --output "$OUT/ppl" --lengths $LENGTH --methods window
    for RECENT in 0 1 2; do
        $PPL --domains books --output "$OUT/ppl" --lengths $LENGTH --methods sharedllm --recent-chunks $RECENT \
            --label joint-k4-r$RECENT
    done
    $PPL --domains math --output "$OUT/ppl-math" --lengths $LENGTH --methods window
    for RECENT in 0 1; do
        $PPL --domains math --output "$OUT/ppl-math" --lengths $LENGTH --methods sharedllm --recent-chunks $RECENT \
            --label joint-k4-r$RECENT
    done
done
$PPL --domains books --output "$OUT/ppl" --lengths 8K --methods full
# with the default preset's k = 8 (its r = 0 rows: ../context-chunks-validation/, the same commands)
for DOMAIN in books math; do
    for LENGTH in 8K 16K; do
        $PPL --domains $DOMAIN --output "$OUT/ppl-k8-$DOMAIN" --lengths $LENGTH --methods sharedllm --context-chunks 8 \
            --recent-chunks 1 --label joint-k8-r1
    done
done
