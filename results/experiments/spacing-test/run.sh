#!/usr/bin/env bash
# chunk_spacing 128 (the candidate of ../ordered-positions/, stage 2b) on the test split, run once (README.md):
#   bash results/experiments/spacing-test/run.sh ppl      # heldout test 8K, books / code / math, 16 windows each
#   bash results/experiments/spacing-test/run.sh passkey  # passkey 8K, Landmark, seed 0, 10 per depth (50 prompts)
#   bash results/experiments/spacing-test/run.sh lane-a   # RULER 32K (multikey, single), passkey 64K, RULER 128K
#   bash results/experiments/spacing-test/run.sh lane-b   # passkey 32K, math 32K, math 64K, books 64K
# against the default's cells (results/heldout/heldout_*_8192_joint-exercises.json, results/retrieval/). 2-core CPU, one
# thread per run. The adapter is the default of the time, named since the default changed (2026-12-07).
set -euo pipefail
export HF_HUB_OFFLINE=1
OUT=results/experiments/spacing-test
ADAPTER=adapters/smollm2-135m-joint-exercises
G128=(--methods sharedllm --adapter "$ADAPTER" --label spacing128 --chunk-spacing 128 --threads 1 --output "$OUT")
case "${1:?ppl, passkey, lane-a or lane-b}" in
  ppl) sharedllm eval heldout --methods sharedllm --adapter "$ADAPTER" --label spacing128 --chunk-spacing 128 --domains books code math --lengths 8K --max-windows 16 --threads 1 --output "$OUT" ;;
  passkey) sharedllm eval passkey --methods sharedllm --adapter "$ADAPTER" --label spacing128 --chunk-spacing 128 --lengths 8K --trials 10 --seed 0 --threads 1 --output "$OUT" ;;
  lane-a)
    sharedllm eval ruler "${G128[@]}" --tasks niah_multikey --trials 10 --split test --lengths 32K
    sharedllm eval ruler "${G128[@]}" --tasks niah_single --trials 10 --split test --lengths 32K
    sharedllm eval passkey "${G128[@]}" --lengths 64K --trials 2 --seed 0
    sharedllm eval ruler "${G128[@]}" --tasks niah_multikey --trials 5 --split test --lengths 128K ;;
  lane-b)
    sharedllm eval passkey "${G128[@]}" --lengths 32K --trials 10 --seed 0
    sharedllm eval heldout "${G128[@]}" --domains math --lengths 32K --max-windows 8
    sharedllm eval heldout "${G128[@]}" --domains math --lengths 64K --max-windows 8
    sharedllm eval heldout "${G128[@]}" --domains books --lengths 64K --max-windows 8 ;;
  *) echo "ppl, passkey, lane-a or lane-b" >&2; exit 2 ;;
esac
