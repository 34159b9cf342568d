#!/usr/bin/env bash
# g = 128 with context_chunks 16 on the test split (README.md), from the project root:
#   bash results/experiments/spacing-chunks/test.sh DOMAIN LENGTH   # 8 windows, against results/heldout/
set -euo pipefail
# The adapter is the default of the time, named since the default changed (2026-12-07).
export HF_HUB_OFFLINE=1
sharedllm eval heldout --methods sharedllm --adapter adapters/smollm2-135m-joint-exercises --label g128-k16 --chunk-spacing 128 --context-chunks 16 --threads 1 \
  --max-windows 8 --domains "${1:?domain}" --lengths "${2:?length}" --output results/experiments/spacing-chunks/test
