#!/usr/bin/env bash
# More chunks read under chunk_spacing 128 (README.md), from the project root:
#   bash results/experiments/spacing-chunks/run.sh K DOMAIN   # validation 16K perplexity, 8 windows, context_chunks K
# 2-core CPU, one thread per run.
set -euo pipefail
# The adapter is the default of the time, named since the default changed (2026-12-07).
export HF_HUB_OFFLINE=1
K=${1:?context_chunks}
sharedllm eval heldout --methods sharedllm --adapter adapters/smollm2-135m-joint-exercises --label "g128-k$K" --chunk-spacing 128 --context-chunks "$K" \
  --split validation --max-windows 8 --lengths 16K --domains "${2:?domain}" --threads 1 \
  --output results/experiments/spacing-chunks
