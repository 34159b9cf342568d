#!/usr/bin/env bash
# More chunks read under chunk_spacing 128 (README.md), from the project root:
#   bash results/experiments/spacing-chunks/run.sh K DOMAIN   # validation 16K perplexity, 8 windows, context_chunks K
# 2-core CPU, one thread per run.
set -euo pipefail
export HF_HUB_OFFLINE=1
K=${1:?context_chunks}
sharedllm eval heldout --methods sharedllm --label "g128-k$K" --chunk-spacing 128 --context-chunks "$K" \
  --split validation --max-windows 8 --lengths 16K --domains "${2:?domain}" --threads 1 \
  --output results/experiments/spacing-chunks
