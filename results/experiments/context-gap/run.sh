#!/usr/bin/env bash
# The context-gap experiment (README.md): where the default loses what full attention of its own weights reads.
#   results/experiments/context-gap/run.sh exact|exact-g512 books|code|math
set -euo pipefail
export HF_HUB_OFFLINE=1
HERE=results/experiments/context-gap
# every token of every chunk read kept (no tree: one node of 512 positions per chunk), the default's chunk ranking
EXACT=(--tree-depth 0 --selected-leaves none --tokens-per-node 512 --leaf-tokens-per-node 512)
case "${1:?exact or exact-g512}" in
  exact) LAYOUT=() ;;                        # stacked, as the default reads
  exact-g512) LAYOUT=(--chunk-spacing 512) ;; # side by side in their text order, as one text of 12 x 512 tokens
  *) echo "unknown arm $1 (exact or exact-g512)" >&2; exit 2 ;;
esac
python -m sharedllm eval heldout --methods sharedllm --adapter adapters/smollm2-135m-joint-more "${EXACT[@]}" \
  "${LAYOUT[@]}" --label "$1" --threads 1 --split validation --domains "${2:?books, code or math}" --lengths 8K \
  --max-windows 16 --output "$HERE/validation-8k"
