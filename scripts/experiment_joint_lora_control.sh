#!/usr/bin/env bash
# The control that separates reading from adapting, for the runs of scripts/experiment_joint_lora.sh: the base with
# each run's LoRA merged (scripts/export_merged_base.py), then its window floor and its full attention on the
# validation windows of scripts/experiment_joint_lora_eval.sh (books and math, 8K, 4 windows), and the plain base's
# full attention on math. Write-up: results/experiments/joint-lora/README.md.
# Usage: scripts/experiment_joint_lora_control.sh [RUN_ROOT] [OUT_DIR]   (runs: lm, levers)
set -euo pipefail
export HF_HUB_OFFLINE=1
RUNS=${1:-runs/joint-lora}
OUT=${2:-results/experiments/joint-lora}
for RUN in lm levers; do
    python scripts/export_merged_base.py "$RUNS/$RUN" "runs/merged/$RUN"
done
for DOMAIN in books math; do
    for RUN in lm levers; do
        for METHOD in window full; do
            python -m sharedllm eval ppl --domains $DOMAIN --split validation --max-windows 4 --lengths 8K \
                --methods $METHOD --base "runs/merged/$RUN" --label "$METHOD-$RUN-50" --output "$OUT/ppl-$DOMAIN"
        done
    done
done
python -m sharedllm eval ppl --domains math --split validation --max-windows 4 --lengths 8K --methods full \
    --output "$OUT/ppl-math"
