#!/usr/bin/env bash
# Experiment (2026-11-23, CPU): continue the shipped adapter with half the samples turned into retrieval
# exercises (sharedllm train --retrieval-fraction), to see whether the cross-attention learns to read exact
# tokens back (the passkey gap in docs/results.md). Result: it did not; the run was stopped at step 50 of 120.
# The log and the probe are in results/experiments/retrieval-mix/.
#   scripts/experiment_retrieval_mix.sh          # the training run (about 18 s per step on the 2-core CPU)
#   python scripts/retrieval_probe.py adapters/smollm2-135m runs/smollm2-135m-retrieval/checkpoints/step-0000040 ...
set -euo pipefail
export HF_HUB_OFFLINE=1
python -m sharedllm train --output runs/smollm2-135m-retrieval --init-adapter adapters/smollm2-135m \
  --n-chunks 4 --chunk-size 256 --decoder-window 512 --n-injected-layers 4 --tree-depth 3 --tokens-per-node 16 \
  --node-encoding chunk --batch-size 1 --grad-accum 4 --eval-windows 8 --seed 0 \
  --retrieval-fraction 0.5 --domains books:0.5 math:0.3 code:0.2 \
  --steps 120 --lr 2e-4 --warmup 6 --eval-every 20 --save-every 10 --log-every 5
