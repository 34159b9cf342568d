#!/usr/bin/env bash
# The window-distractors experiment (README.md): train the arm, then the rule's validation checks.
#   results/experiments/window-distractors/run.sh wf2|wordings train|checks
set -euo pipefail
export HF_HUB_OFFLINE=1
HERE=results/experiments/window-distractors
DEFAULT=adapters/smollm2-135m-joint-exercises
ARM=${1:?wf2 or wordings}
RUN=runs/window-distractors/$ARM
case "$ARM" in  # both continue the default's LoRA on 50% exercises (README.md)
  wf2)      RECIPE=(--lr 1e-4 --seed 1 --steps 30 --retrieval-window-facts 2) ;;
  wordings) RECIPE=(--lr 2e-4 --seed 2 --steps 60 --retrieval-wordings 4) ;;
  *) echo "unknown arm $ARM (wf2 or wordings)" >&2; exit 2 ;;
esac
case "${2:?train or checks}" in
  train)
    read -ra KNOBS <<< "$(python scripts/knob_flags.py "$DEFAULT" --except decoder_window)"
    python -m sharedllm train --output "$RUN" "${KNOBS[@]}" --n-chunks 2 --decoder-window 512 --lora-rank 8 \
      --batch-size 1 --grad-accum 4 --warmup 3 --domains books:0.5 math:0.3 code:0.2 --eval-windows 8 \
      --eval-every 15 --save-every 5 --log-every 5 --no-progress --retrieval-fraction 0.5 \
      --init-adapter "$DEFAULT" "${RECIPE[@]}" ;;
  checks)  # the rule's order: multikey first (it decides most often)
    READ=(--methods sharedllm --adapter "$RUN" --decoder-window 1024 --label "$ARM")
    python -m sharedllm eval ruler "${READ[@]}" --tasks niah_multikey --trials 10 --split validation --domains books \
      --lengths 16K --output "$HERE/ruler-16k-validation-multikey"
    python -m sharedllm eval ruler "${READ[@]}" --tasks niah_single --trials 10 --split validation --lengths 16K \
      --output "$HERE/ruler-16k-validation"
    for domain in books math; do
      python -m sharedllm eval heldout "${READ[@]}" --split validation --domains "$domain" --lengths 8K \
        --max-windows 4 --output "$HERE/heldout-8k-validation"
    done
    python -m sharedllm eval passkey "${READ[@]}" --lengths 8K --trials 10 --seed 0 --output "$HERE/passkey-8k" ;;
esac
