#!/usr/bin/env bash
# Stage 2 of README.md for the chunk_spacing G chosen by stage 1b: 16K perplexity (8 windows per domain, the seed-0
# plan's first 8), passkey 8K (2 trials per depth) and RULER niah_single 16K on the validation haystack (10 trials),
# against the stacked default's cells. 2-core CPU, one thread per run.
#   bash results/experiments/ordered-positions/stage2.sh ppl G       # spaced: 16K perplexity, code / math / books
#   bash results/experiments/ordered-positions/stage2.sh default     # stacked: 16K perplexity, math / books
#   bash results/experiments/ordered-positions/stage2.sh retrieval G # spaced: passkey 8K, RULER niah_single 16K
set -euo pipefail
# The adapter is the default of the time, named since the default changed (2026-12-07).
export HF_HUB_OFFLINE=1
OUT=results/experiments/ordered-positions
PPL=(eval heldout --split validation --max-windows 8 --threads 1 --output "$OUT" --lengths 16K)
case "${1:?ppl, default or retrieval}" in
  ppl) sharedllm "${PPL[@]}" --methods sharedllm --adapter adapters/smollm2-135m-joint-exercises --label "spacing${2:?G}" --chunk-spacing "$2" --domains code math books ;;
  default) sharedllm "${PPL[@]}" --methods sharedllm --adapter adapters/smollm2-135m-joint-exercises --label default --domains math books ;;
  retrieval)
    sharedllm eval passkey --methods sharedllm --adapter adapters/smollm2-135m-joint-exercises --label "spacing${2:?G}" --chunk-spacing "$2" --lengths 8K --trials 2 --seed 0 --threads 1 --output "$OUT"
    sharedllm eval ruler --methods sharedllm --adapter adapters/smollm2-135m-joint-exercises --label "spacing$2" --chunk-spacing "$2" --tasks niah_single --trials 10 --split validation --lengths 16K --threads 1 --output "$OUT" ;;
  *) echo "ppl, default or retrieval" >&2; exit 2 ;;
esac
