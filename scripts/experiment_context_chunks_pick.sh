#!/usr/bin/env bash
# The pick of scripts/experiment_context_chunks_validation.sh (context_chunks = 8, best on validation books and math)
# measured as the earlier default was (results/experiments/context-chunks/): passkey by the field's protocol at 8K
# (the 10 prompts of scripts/experiment_frontier.sh) and 16K, and perplexity on the first 4 windows of the *test*
# books at 8K and 16K (reported, not tuned on). Write-up: results/experiments/context-chunks-validation/README.md.
# Usage: scripts/experiment_context_chunks_pick.sh [OUT_DIR]
set -euo pipefail
OUT=${1:-results/experiments/context-chunks-validation}
for LENGTH in 8K 16K; do
    python -m sharedllm eval passkey --methods sharedllm --context-chunks 8 --lengths $LENGTH --trials 2 \
        --output "$OUT/passkey" --label joint-k8
done
python -m sharedllm eval ppl --domains books --split test --max-windows 4 --output "$OUT/ppl-test" --methods sharedllm \
    --context-chunks 8 --lengths 8K 16K --label joint-k8
