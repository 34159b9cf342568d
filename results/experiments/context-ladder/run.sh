#!/bin/bash
# Perplexity against context length on fixed targets: the 16 test windows of the 32K headline plan per domain, each
# cut to its last 4K / 8K / 16K tokens (`--targets-of 32K`), scored with the default adapter of the time
# (adapters/smollm2-135m-joint-exercises, named since the default changed on 2026-12-07); the 32K cells are its
# headline cells (results/heldout/heldout_{books,math}_32768_joint-exercises.json), the window floor is the headline's
# 32K window cell (the window method reads the same last 1,024 tokens at every T >= 1,280).
# One thread, as the headline cells on the 2-core CPU: ~15 s / 30 s / 60 s per window at 4K / 8K / 16K.
set -euo pipefail
cd "$(dirname "$0")/../../.."
OMP_NUM_THREADS=${OMP_NUM_THREADS:-1} sharedllm eval heldout --methods sharedllm --adapter adapters/smollm2-135m-joint-exercises --domains books math \
  --lengths 4K 8K 16K --targets-of 32K --max-windows 16 --output results/experiments/context-ladder
# the floor, as a check that a cut window leaves the window method's input unchanged (4K only: cheap)
OMP_NUM_THREADS=${OMP_NUM_THREADS:-1} sharedllm eval heldout --methods window --decoder-window 1024 \
  --domains books math --lengths 4K --targets-of 32K --max-windows 16 --output results/experiments/context-ladder
for domain in books math; do
  for length in 4096 8192 16384; do
    sharedllm compare results/experiments/context-ladder/heldout_${domain}_${length}_sharedllm_targets32768.json \
      results/heldout/heldout_${domain}_32768_joint-exercises.json
  done
  sharedllm compare results/heldout/heldout_${domain}_32768_window.json results/heldout/heldout_${domain}_32768_joint-exercises.json
  sharedllm compare results/experiments/context-ladder/heldout_${domain}_4096_window_targets32768.json \
    results/heldout/heldout_${domain}_32768_window.json
done
