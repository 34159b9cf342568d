#!/usr/bin/env bash
# A candidate reading of the default adapter (its knob flags) on the headline grid's test cells, lane by lane, to be
# compared with the default's own headline cells (the same windows and prompts); the rule is in the calling
# experiment's README (results/experiments/spacing-more/, results/experiments/context-gap/).
#   scripts/candidate_grid.sh OUT LABEL LANE [KNOB FLAGS...] [--adapter DIR]
# (--adapter: read another adapter than the default's folder, e.g. a candidate's own weights)
#     lane-a: RULER niah_multikey 32K, niah_single 32K, passkey 8K, 16K
#     lane-b: perplexity 8K (books, code, math), then 16K, then 4K
#     lane-c: RULER niah_multikey and niah_single 16K
#     lane-d: passkey 32K, 64K
#     lane-e: perplexity books 32K, 64K; lane-f: the same of math (the headline's domains there)
#     lane-g: the 128K cells: perplexity books and math, passkey, RULER niah_single and niah_multikey; each holds
#       its chunks once since the per-chunk encoded context (2026-12-08; results/experiments/memory/): passkey
#       2.7 GB at the peak, perplexity and RULER 7.5-8.5 GB, so it runs beside one other lane on a 24 GB machine
#     validation: the retrieval checks on validation prompts that come before any test cell (passkey 8K at depth
#       1.0, RULER 16K niah_single and niah_multikey on the validation haystack), into OUT/passkey-8k-depth-1,
#       OUT/ruler-16k-validation and OUT/ruler-16k-validation-multikey beside the default's cells there
# Each lane continues a stopped run from its journals (commit the .partial.jsonl files at a session's end).
set -euo pipefail
export HF_HUB_OFFLINE=1
OUT=${1:?output folder}
LABEL=${2:?label of the reading}
LANE=${3:?lane-a to lane-g or validation}
shift 3
# the default's folder, as sharedllm/default_adapter links it (grids made under an earlier default name theirs);
# run from the repository root (set -e stops here elsewhere)
DEFAULT_LINK=$(readlink sharedllm/default_adapter)
ADAPTER=(--adapter "adapters/${DEFAULT_LINK##*/}")
for flag in "$@"; do [ "$flag" != --adapter ] || ADAPTER=(); done  # given among the flags: that one
READ=(--methods sharedllm "${ADAPTER[@]}" --label "$LABEL" --threads 1 "$@")  # flags last: they win
heldout() {  # LENGTH [DOMAINS...]: all 16 windows of the headline's cell (default: books, code, math)
  local length=$1
  shift
  local domains=("$@")
  [ ${#domains[@]} -gt 0 ] || domains=(books code math)
  for domain in "${domains[@]}"; do
    python -m sharedllm eval heldout "${READ[@]}" --domains "$domain" --lengths "$length" --max-windows 16 --output "$OUT/heldout"
  done
}
ruler() {  # TASK LENGTH: 10 trials on the test haystack
  python -m sharedllm eval ruler "${READ[@]}" --tasks "$1" --trials 10 --split test --lengths "$2" --output "$OUT/ruler"
}
passkey() {  # LENGTH: 10 per depth
  python -m sharedllm eval passkey "${READ[@]}" --lengths "$1" --trials 10 --seed 0 --output "$OUT/passkey"
}
case "$LANE" in
  lane-a) ruler niah_multikey 32K; ruler niah_single 32K; passkey 8K; passkey 16K ;;
  lane-b) heldout 8K; heldout 16K; heldout 4K ;;
  lane-c) ruler niah_multikey 16K; ruler niah_single 16K ;;
  lane-d) passkey 32K; passkey 64K ;;
  lane-e) heldout 32K books; heldout 64K books ;;
  lane-f) heldout 32K math; heldout 64K math ;;
  lane-g) heldout 128K books math; passkey 128K; ruler niah_single 128K; ruler niah_multikey 128K ;;
  validation)
    python -m sharedllm eval passkey "${READ[@]}" --lengths 8K --depths 1.0 --trials 10 --seed 0 \
      --output "$OUT/passkey-8k-depth-1"
    python -m sharedllm eval ruler "${READ[@]}" --tasks niah_single --trials 10 --split validation --lengths 16K \
      --output "$OUT/ruler-16k-validation"
    python -m sharedllm eval ruler "${READ[@]}" --tasks niah_multikey --trials 10 --split validation --domains books \
      --lengths 16K --output "$OUT/ruler-16k-validation-multikey" ;;
  *) echo "unknown lane $LANE (lane-a to lane-g or validation)" >&2; exit 2 ;;
esac
