#!/usr/bin/env bash
# chunk_spacing 128 (the candidate of ../ordered-positions/, stage 2b) on the test split, run once (README.md):
#   bash results/experiments/spacing-test/run.sh ppl      # heldout test 8K, books / code / math, 16 windows each
#   bash results/experiments/spacing-test/run.sh passkey  # passkey 8K, Landmark, seed 0, 10 per depth (50 prompts)
# against the default's cells (results/heldout/heldout_*_8192_sharedllm.json, results/retrieval/). 2-core CPU, one
# thread per run.
set -euo pipefail
export HF_HUB_OFFLINE=1
OUT=results/experiments/spacing-test
case "${1:?ppl or passkey}" in
  ppl) sharedllm eval heldout --methods sharedllm --label spacing128 --chunk-spacing 128 --domains books code math --lengths 8K --max-windows 16 --threads 1 --output "$OUT" ;;
  passkey) sharedllm eval passkey --methods sharedllm --label spacing128 --chunk-spacing 128 --lengths 8K --trials 10 --seed 0 --threads 1 --output "$OUT" ;;
  *) echo "ppl or passkey" >&2; exit 2 ;;
esac
