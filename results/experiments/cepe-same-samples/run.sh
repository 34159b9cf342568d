#!/usr/bin/env bash
# The CEPE-style variant trained on the same samples as the default adapter's LoRA (README.md), then scored on the
# headline's held-out test windows at 4K and 8K (written into results/heldout/ as the `cepe` row).
#   results/experiments/cepe-same-samples/run.sh train        # 50 steps, resumable (rerun to continue)
#   results/experiments/cepe-same-samples/run.sh eval 4K|8K   # 16 test windows per domain, books math code
set -euo pipefail
export HF_HUB_OFFLINE=1
RUN=${RUN:-runs/cepe-same-samples}
case "${1:?train or eval}" in
  train)  # scripts/experiment_joint_lora.sh exercises, with CEPE's reader instead of the joint preset + LoRA:
          # every layer cross-attends to an uncompressed encoding of every context token (no tree, no selection)
    RESUME=(); [ -f "$RUN/run.json" ] && RESUME=(--resume)  # a stopped run continues
    python -m sharedllm train --output "$RUN" --injection cross --n-injected-layers 30 --chunk-size 512 \
      --tree-depth 0 --tokens-per-node 512 --node-encoding chunk \
      --n-chunks 2 --decoder-window 512 --batch-size 1 --grad-accum 4 --lr 2e-4 --warmup 3 --seed 0 \
      --domains books:0.5 math:0.3 code:0.2 --retrieval-fraction 0.3 --eval-windows 8 --eval-every 25 \
      --save-every 5 --log-every 5 --steps 50 --no-progress "${RESUME[@]}" ;;
  eval)
    python -m sharedllm eval heldout --methods sharedllm --adapter "$RUN" --label cepe --decoder-window 1024 \
      --domains books math code --lengths "${2:?4K or 8K}" --max-windows 16 --max-seconds 7200 \
      --output results/heldout ;;
  *) echo "unknown step $1 (train or eval)" >&2; exit 2 ;;
esac
