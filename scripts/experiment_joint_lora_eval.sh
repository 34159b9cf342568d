#!/usr/bin/env bash
# A LoRA trained by scripts/experiment_joint_lora.sh, read as the default preset reads (decoder window 1024,
# k = 8 chunks), on the windows the preset's k was tuned on (results/experiments/context-chunks-validation/: the
# first 4 validation windows of books and math at 8K) and on the 10 passkey prompts at 8K of every earlier row.
# Usage: scripts/experiment_joint_lora_eval.sh RUN_DIR LABEL [OUT_DIR]
set -euo pipefail
export HF_HUB_OFFLINE=1
RUN=${1:?a run folder of scripts/experiment_joint_lora.sh}
LABEL=${2:?a label for the result files}
OUT=${3:-results/experiments/joint-lora}
READ=(--methods sharedllm --adapter "$RUN" --decoder-window 1024 --context-chunks 8 --label "$LABEL")
for DOMAIN in books math; do
    python -m sharedllm eval ppl --domains $DOMAIN --split validation --max-windows 4 --lengths 8K \
        --output "$OUT/ppl-$DOMAIN" "${READ[@]}"
done
python -m sharedllm eval passkey --lengths 8K --trials 2 --output "$OUT/passkey" "${READ[@]}"
