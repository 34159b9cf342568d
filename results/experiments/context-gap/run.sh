#!/usr/bin/env bash
# The context-gap experiment (README.md): where the default loses what full attention of its own weights reads.
#   results/experiments/context-gap/run.sh exact|exact-g512|g512 books|code|math
#   results/experiments/context-gap/run.sh retrieval ARM
set -euo pipefail
export HF_HUB_OFFLINE=1
HERE=results/experiments/context-gap
source "$HERE/readings.sh"  # EXACT, SPACED
reading() {  # the knobs of arm $1 over the default's
  case "$1" in
    exact) echo "${EXACT[@]}" ;;                     # stacked, as the default reads
    exact-g512) echo "${EXACT[@]} ${SPACED[@]}" ;;
    g512) echo "${SPACED[@]}" ;;                      # the default's compression, side by side
    *) echo "unknown arm $1 (exact, exact-g512 or g512)" >&2; return 2 ;;
  esac
}
if [ "${1:?exact, exact-g512, g512 or retrieval}" = retrieval ]; then
  ARM=${2:?the arm to check}
  knobs=$(reading "$ARM")
  read -ra KNOBS <<< "$knobs"
  # the retrieval checks of ../lora-continuation/ (run.sh retrieval), the same prompts and trials
  exec scripts/candidate_grid.sh "$HERE" "$ARM" validation --adapter adapters/smollm2-135m-joint-more "${KNOBS[@]}"
fi
knobs=$(reading "$1")  # an assignment, so that set -e stops on an unknown arm
read -ra KNOBS <<< "$knobs"
python -m sharedllm eval heldout --methods sharedllm --adapter adapters/smollm2-135m-joint-more "${KNOBS[@]}" \
  --label "$1" --threads 1 --split validation --domains "${2:?books, code or math}" --lengths 8K \
  --max-windows 16 --output "$HERE/validation-8k"
