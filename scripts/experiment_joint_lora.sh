#!/usr/bin/env bash
# Issue #10 fast proxy for a *trained* joint preset: a LoRA on every layer of the base (joint injection has no
# module of its own) trained on short samples, on the default preset's knobs (adapters/smollm2-135m-joint) except
# the sample shape: 2 chunks x 512 context + a 512-token decoder window (1,536-token samples, inside the base's
# native 8K, so the distillation teacher reads them whole). Every run logs validation PPL and val_retrieval_acc
# (facts planted in the context of the validation windows, teacher-forced exact answers) every EVAL steps.
#   untrained : lr 0, one step: the training-free preset's numbers on the same windows (the floor to beat)
#   lm        : language modelling only
#   levers    : + retrieval exercises (30% of samples) + distillation to the full-attention base (KL weight 2, top 50)
#   exercises : + retrieval exercises (30% of samples), no distillation: which of the two levers reads the needle
#               right before the question (levers does, lm does not), and whether the KL is what kept levers from
#               lm's perplexity
#   facts8    : exercises with up to 8 facts per sample instead of 4 (more keys to tell apart, as in RULER's multikey)
# Usage: scripts/experiment_joint_lora.sh untrained|lm|levers|exercises|facts8   (STEPS, EVAL, OUT_ROOT, PRESET_ADAPTER, EXTRA may be set)
# Write-up: results/experiments/joint-lora/README.md.
set -euo pipefail
export HF_HUB_OFFLINE=1
RUN=${1:?untrained, lm, levers, exercises or facts8}
STEPS=${STEPS:-50}
EVAL=${EVAL:-25}
OUT_ROOT=${OUT_ROOT:-runs/joint-lora}
PRESET_ADAPTER=${PRESET_ADAPTER:-adapters/smollm2-135m-joint}  # its saved knobs, all but the decoder window
PRESET_FLAGS=$(python scripts/knob_flags.py "$PRESET_ADAPTER" --except decoder_window)  # set -e stops on a failure here
read -ra PRESET <<< "$PRESET_FLAGS"
COMMON=(--n-chunks 2 --decoder-window 512 --lora-rank 8 --batch-size 1 --grad-accum 4 --lr 2e-4 --warmup 3
        --seed 0 --domains books:0.5 math:0.3 code:0.2 --eval-windows 8 --eval-every "$EVAL" --save-every 10
        --log-every 5 --steps "$STEPS" --no-progress)
case "$RUN" in
  untrained) ARM=(--eval-retrieval --lr 0 --steps 1 --warmup 0 --eval-every 1) ;;
  lm)        ARM=(--eval-retrieval) ;;
  levers)    ARM=(--retrieval-fraction 0.3 --distill-weight 2 --distill-top-k 50) ;;
  exercises) ARM=(--retrieval-fraction 0.3) ;;
  facts8)    ARM=(--retrieval-fraction 0.3 --retrieval-facts 8) ;;
  *) echo "unknown run $RUN (untrained, lm, levers, exercises or facts8)" >&2; exit 2 ;;
esac
python -m sharedllm train --output "$OUT_ROOT/$RUN" "${PRESET[@]}" "${COMMON[@]}" "${ARM[@]}" ${EXTRA:-} "${@:2}"
