#!/usr/bin/env bash
# The command that trained the cross adapter adapters/smollm2-135m (the default until 2026-11-24; CPU, 2 cores;
# see its README.md).
# Samples: 4 x 256 context + 512 decoder tokens (1.5K, 3x the decoder window) from the train split of the
# default corpora (books, math, code); validation on fixed windows of the validation split.
set -euo pipefail
OUT=${OUT:-runs/smollm2-135m}
HF_HUB_OFFLINE=1 python -m sharedllm train \
  --output "$OUT" \
  --n-chunks 4 --chunk-size 256 --decoder-window 512 \
  --n-injected-layers 4 --tree-depth 3 --tokens-per-node 16 --node-encoding chunk \
  --steps 240 --grad-accum 4 --batch-size 1 --lr 2e-4 --warmup 12 \
  --eval-every 40 --eval-windows 8 --save-every 20 --log-every 5 --seed 0 "$@"
