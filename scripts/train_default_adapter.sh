#!/usr/bin/env bash
# The commands that trained the shipped adapter adapters/smollm2-135m (CPU, 2 cores; see its README.md).
# Samples: 4 x 256 context + 512 decoder tokens (1.5K, 3x the decoder window) from the train split of the
# default corpora (books, math, code); validation on fixed windows of the validation split.
#   stage 1: language modelling only, domains in proportion to their windows (mostly math)
#   stage 2: continues from stage 1 with half the samples turned into retrieval exercises
#            (--retrieval-fraction) and more weight on books
#   scripts/train_default_adapter.sh            # both stages
#   scripts/train_default_adapter.sh stage2     # stage 2 only (stage 1's run in runs/smollm2-135m)
set -euo pipefail
OUT=${OUT:-runs/smollm2-135m}
KNOBS=(--n-chunks 4 --chunk-size 256 --decoder-window 512 --n-injected-layers 4 --tree-depth 3
       --tokens-per-node 16 --node-encoding chunk --batch-size 1 --grad-accum 4 --eval-windows 8 --seed 0)
export HF_HUB_OFFLINE=1

if [[ "${1:-all}" != stage2 ]]; then
  python -m sharedllm train --output "$OUT" "${KNOBS[@]}" \
    --steps 240 --lr 2e-4 --warmup 12 --eval-every 40 --save-every 20 --log-every 5
fi
python -m sharedllm train --output "$OUT-retrieval" --init-adapter "$OUT" "${KNOBS[@]}" \
  --retrieval-fraction 0.5 --domains books:0.5 math:0.3 code:0.2 \
  --steps 120 --lr 2e-4 --warmup 6 --eval-every 20 --save-every 10 --log-every 5
