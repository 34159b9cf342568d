#!/usr/bin/env bash
# The rest of the headline grid with the candidate (README.md, "The rest of the grid"); two lanes, one thread each.
#   results/experiments/lora-continuation/grid.sh perplexity-16k | multikey-32k | single-32k | passkey-16k
#                                                 | perplexity-32k | passkey-32k | perplexity-64k
set -euo pipefail
export HF_HUB_OFFLINE=1
HERE=results/experiments/lora-continuation
READ=(--methods sharedllm --adapter runs/lora-continuation/more --decoder-window 1024 --label more --threads 1)
LANES="perplexity-16k, multikey-32k, single-32k, passkey-16k, perplexity-32k, passkey-32k or perplexity-64k"
case "${1:?$LANES}" in
  perplexity-16k)  # against results/heldout/heldout_*_16384_sharedllm.json on their first 8 windows
    for domain in books code math; do
      python -m sharedllm eval heldout "${READ[@]}" --domains "$domain" --lengths 16K --max-windows 8 \
        --output "$HERE/heldout-16k-test"
    done ;;
  multikey-32k)  # against results/retrieval/ruler_sharedllm_ruler_20261204-230316.json (7/10)
    python -m sharedllm eval ruler "${READ[@]}" --tasks niah_multikey --trials 10 --lengths 32K --output "$HERE/ruler-32k-test" ;;
  single-32k)  # against results/retrieval/ruler_sharedllm_ruler_20261204-210010.json (10/10)
    python -m sharedllm eval ruler "${READ[@]}" --tasks niah_single --trials 10 --lengths 32K --output "$HERE/ruler-32k-test" ;;
  passkey-16k)  # against results/retrieval/passkey_sharedllm_landmark_20261204-231540.json (50/50); its journal continues a stopped run
    python -m sharedllm eval passkey "${READ[@]}" --lengths 16K --trials 10 --seed 0 --output "$HERE/passkey-16k" ;;
  perplexity-32k)  # against results/heldout/heldout_{books,math}_32768_sharedllm.json, all 16 windows (no code test document has 32K)
    for domain in books math; do
      python -m sharedllm eval heldout "${READ[@]}" --domains "$domain" --lengths 32K --max-windows 16 \
        --output "$HERE/heldout-32k-test"
    done ;;
  perplexity-64k)  # against results/heldout/heldout_{books,math}_65536_sharedllm.json, all 16 windows
    for domain in books math; do
      python -m sharedllm eval heldout "${READ[@]}" --domains "$domain" --lengths 64K --max-windows 16 \
        --output "$HERE/heldout-64k-test"
    done ;;
  passkey-32k)  # against results/retrieval/passkey_sharedllm_landmark_20261205-062725.json (50/50); its journal continues a stopped run
    python -m sharedllm eval passkey "${READ[@]}" --lengths 32K --trials 10 --seed 0 --output "$HERE/passkey-32k" ;;
  *) echo "unknown lane $1 ($LANES)" >&2; exit 2 ;;
esac
