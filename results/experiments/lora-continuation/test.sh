#!/usr/bin/env bash
# The candidate's test checks (README.md, "Test split"), run once: two lanes of one thread each.
#   results/experiments/lora-continuation/test.sh perplexity | retrieval
set -euo pipefail
export HF_HUB_OFFLINE=1
HERE=results/experiments/lora-continuation
READ=(--methods sharedllm --adapter runs/lora-continuation/more --decoder-window 1024 --label more --threads 1)
case "${1:?perplexity or retrieval}" in
  perplexity)  # against results/heldout/heldout_*_8192_joint-exercises.json (16 windows each), then RULER's single needle
    for domain in books code math; do
      python -m sharedllm eval heldout "${READ[@]}" --domains "$domain" --lengths 8K --max-windows 16 \
        --output "$HERE/heldout-8k-test"
    done
    python -m sharedllm eval ruler "${READ[@]}" --tasks niah_single --trials 10 --lengths 16K --output "$HERE/ruler-16k-test" ;;
  retrieval)  # against results/retrieval/passkey_joint-exercises_landmark_20261204-212115.json and ruler_..._20261204-213155.json
    python -m sharedllm eval passkey "${READ[@]}" --lengths 8K --trials 10 --seed 0 --output "$HERE/passkey-8k"
    python -m sharedllm eval ruler "${READ[@]}" --tasks niah_multikey --trials 10 --lengths 16K --output "$HERE/ruler-16k-test" ;;
  *) echo "unknown lane $1 (perplexity or retrieval)" >&2; exit 2 ;;
esac
