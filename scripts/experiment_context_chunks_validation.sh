#!/usr/bin/env bash
# context_chunks (k) on validation documents (issue #10): the default preset's k = 4 was picked on test books
# (results/experiments/context-chunks/); here k = 2, 4, 8, 16 against the window floor on the *validation* books and
# math (HOL Light) files, perplexity by the CEPE protocol at 8K and 16K, 4 windows per domain and length.
# Write-up: results/experiments/context-chunks-validation/README.md.
# Usage: scripts/experiment_context_chunks_validation.sh [OUT_DIR]
set -euo pipefail
OUT=${1:-results/experiments/context-chunks-validation}
for DOMAIN in books math; do
    PPL="python -m sharedllm eval ppl --domains $DOMAIN --split validation --max-windows 4 --output $OUT/ppl-$DOMAIN"
    for LENGTH in 8K 16K; do
        $PPL --lengths $LENGTH --methods window
        for K in 2 4 8 16; do
            $PPL --lengths $LENGTH --methods sharedllm --context-chunks $K --label joint-k$K
        done
    done
done
