#!/usr/bin/env bash
# The CEPE-style baseline trained with the same pipeline, data, sampler seed, schedule and budget as the
# cross SharedLLM adapter adapters/smollm2-135m (scripts/train_cross_adapter.sh): every one of the 30 layers
# cross-attends to its own uncompressed encoding of the context (tree depth 0, 256 of 256 tokens per chunk kept).
# On the 2-core CPU a step costs about 2-3x SharedLLM's, so the committed comparison stops this run at step 40
# (its first validation), where the SharedLLM run had seen exactly the same 160 samples:
#   scripts/train_cepe_adapter.sh             # the whole 240-step schedule (a few hours on the CPU)
#   STOP_AT=40 scripts/train_cepe_adapter.sh  # what was run here: stops after step 40's checkpoint
set -euo pipefail
OUT=${OUT:-runs/cepe-smollm2-135m}
export HF_HUB_OFFLINE=1
python -m sharedllm train --output "$OUT" \
  --n-chunks 4 --chunk-size 256 --decoder-window 512 \
  --n-injected-layers 30 --tree-depth 0 --tokens-per-node 256 --node-encoding chunk \
  --steps 240 --grad-accum 4 --batch-size 1 --lr 2e-4 --warmup 12 \
  --eval-every 40 --eval-windows 8 --save-every 20 --log-every 5 --seed 0 ${STOP_AT:+--stop-after $STOP_AT}
