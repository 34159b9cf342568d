#!/usr/bin/env bash
# The candidate reading exact-g512 (README.md: every token of the 12 chunks read kept, side by side) on the headline
# grid's test cells, against the default's own headline cells (same windows, same prompts), in ../spacing-more/'s order.
#   results/experiments/context-gap/test.sh lane-a   # RULER niah_multikey 32K, niah_single 32K, passkey 8K, 16K
#   results/experiments/context-gap/test.sh lane-b   # perplexity 8K (books, code, math), then 16K, then 4K
#   results/experiments/context-gap/test.sh lane-c   # RULER niah_multikey and niah_single 16K (issue #10's cells)
# Each command continues a stopped run from its journal (commit the .partial.jsonl files at a session's end).
set -euo pipefail
export HF_HUB_OFFLINE=1
OUT=results/experiments/context-gap/test
READ=(--methods sharedllm --adapter adapters/smollm2-135m-joint-more --tree-depth 0 --selected-leaves none
      --tokens-per-node 512 --leaf-tokens-per-node 512 --chunk-spacing 512 --label exact-g512 --threads 1)
heldout() {  # LENGTH: the three domains, all 16 windows of the headline's cell
  for domain in books code math; do
    python -m sharedllm eval heldout "${READ[@]}" --domains "$domain" --lengths "$1" --max-windows 16 --output "$OUT/heldout"
  done
}
case "${1:?lane-a, lane-b or lane-c}" in
  lane-a)
    python -m sharedllm eval ruler "${READ[@]}" --tasks niah_multikey --trials 10 --split test --lengths 32K --output "$OUT/ruler"
    python -m sharedllm eval ruler "${READ[@]}" --tasks niah_single --trials 10 --split test --lengths 32K --output "$OUT/ruler"
    python -m sharedllm eval passkey "${READ[@]}" --lengths 8K --trials 10 --seed 0 --output "$OUT/passkey"
    python -m sharedllm eval passkey "${READ[@]}" --lengths 16K --trials 10 --seed 0 --output "$OUT/passkey" ;;
  lane-b) heldout 8K; heldout 16K; heldout 4K ;;
  lane-c)
    python -m sharedllm eval ruler "${READ[@]}" --tasks niah_multikey --trials 10 --split test --lengths 16K --output "$OUT/ruler"
    python -m sharedllm eval ruler "${READ[@]}" --tasks niah_single --trials 10 --split test --lengths 16K --output "$OUT/ruler" ;;
  *) echo "unknown lane $1 (lane-a, lane-b or lane-c)" >&2; exit 2 ;;
esac
