#!/usr/bin/env bash
# Stage 2 of g = 128 with context_chunks 16 (README.md), from the project root:
#   bash results/experiments/spacing-chunks/stage2.sh retrieval   # passkey 8K, 16K; RULER niah_single, multikey 16K
#   bash results/experiments/spacing-chunks/stage2.sh ppl DOMAIN  # validation 8K perplexity, 16 windows
# 2-core CPU, one thread per run.
set -euo pipefail
# The adapter is the default of the time, named since the default changed (2026-12-07).
export HF_HUB_OFFLINE=1
ARM=(--methods sharedllm --adapter adapters/smollm2-135m-joint-exercises --label g128-k16 --chunk-spacing 128 --context-chunks 16 --threads 1
     --output results/experiments/spacing-chunks)
case "${1:?retrieval or ppl}" in
  retrieval)
    sharedllm eval passkey "${ARM[@]}" --lengths 8K --trials 2 --seed 0
    sharedllm eval passkey "${ARM[@]}" --lengths 16K --trials 2 --seed 0
    sharedllm eval ruler "${ARM[@]}" --tasks niah_single --trials 10 --split validation --lengths 16K
    sharedllm eval ruler "${ARM[@]}" --tasks niah_multikey --trials 10 --split validation --domains books --lengths 16K ;;
  ppl) sharedllm eval heldout "${ARM[@]}" --split validation --max-windows 16 --lengths 8K --domains "${2:?domain}" ;;
  *) echo "retrieval or ppl" >&2; exit 2 ;;
esac
