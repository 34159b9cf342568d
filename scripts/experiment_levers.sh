#!/usr/bin/env bash
# Issue #10 fast proxy: one controlled pair of short runs on the same small knobs, data, seed and schedule.
#   plain  : language modelling only (the shipped recipe's objective)
#   levers : + copy warm-up rows, + retrieval exercises, + distillation to the full-attention base,
#            exact finest tree level, attention-scored selection
# Both log validation PPL and val_retrieval_acc (planted facts, teacher-forced exact answers) every EVAL steps.
# Knobs: 2 chunks x 256 context + 256 decoder window (768-token samples, inside the base's native 8K, so the
# teacher reads them whole), M = 4, D = 2, P = 32 coarse, exact 64-token leaves.
#   scripts/experiment_levers.sh plain|levers      (STEPS, EVAL, OUT_ROOT, EXTRA may be set)
set -euo pipefail
export HF_HUB_OFFLINE=1
RUN=${1:?plain or levers}
STEPS=${STEPS:-60}
EVAL=${EVAL:-20}
OUT_ROOT=${OUT_ROOT:-runs/levers}
COMMON=(--n-chunks 2 --chunk-size 256 --decoder-window 256 --n-injected-layers 4 --tree-depth 2
        --tokens-per-node 32 --batch-size 1 --grad-accum 2 --lr 5e-4 --warmup 3 --seed 0
        --domains books:0.5 math:0.3 code:0.2 --eval-windows 8 --eval-every "$EVAL" --save-every 10 --log-every 5
        --steps "$STEPS" --no-progress)
case "$RUN" in
  plain)  LEVERS=(--eval-retrieval) ;;
  levers) LEVERS=(--copy-fraction 0.3 --retrieval-fraction 0.3 --distill-weight 2 --distill-top-k 50
                  --leaf-tokens-per-node 64 --tree-selection attention) ;;
  *) echo "unknown run $RUN (plain or levers)" >&2; exit 2 ;;
esac
python -m sharedllm train --output "$OUT_ROOT/$RUN" "${COMMON[@]}" "${LEVERS[@]}" ${EXTRA:-} "${@:2}"
