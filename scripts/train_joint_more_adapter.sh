#!/usr/bin/env bash
# The recipe of the default adapter, adapters/smollm2-135m-joint-more-exact, in one script (its README.md; CPU, 2 cores,
# about 3 hours). Five steps; step 4's output is adapters/smollm2-135m-joint-more (the same weights, read stacked):
#   1. exercises: a LoRA r = 8 on every layer of the base, on the joint preset's knobs, 50 steps on 1,536-token samples
#      (2 chunks x 512 + a 512-token window), 30% of them retrieval exercises (scripts/experiment_joint_lora.sh exercises)
#   2. packaged with the reading knobs chosen on validation afterwards (results/experiments/tree-selection/; the
#      "how it reads" row of adapters/smollm2-135m-joint-exercises/README.md, which is this step's output)
#   3. more: 60 more steps from it with the same recipe on new samples (seed 2), on those reading knobs
#      (results/experiments/lora-continuation/run.sh train)
#   4. packaged with the 1,024-token window it is read with (OUT/stacked-adapter: adapters/smollm2-135m-joint-more)
#   5. packaged again with the exact reading chosen afterwards (results/experiments/context-gap/): the chunks picked are
#      read whole (no tree, one 512-position node per chunk), side by side in text order (OUT/adapter: the default)
# A stopped run continues where it stopped: rerun the script (each training step resumes from its newest checkpoint;
# a finished step is skipped).
#   scripts/train_joint_more_adapter.sh [OUT]   (default runs/joint-more; the adapter lands in OUT/adapter)
set -euo pipefail
export HF_HUB_OFFLINE=1
OUT=${1:-runs/joint-more}
READING=(--decoder-window 1024 --context-chunks 8 --tokens-per-node 8 --selected-leaves 2 --selection-layer 20
         --selection-score probability --query-tokens 32 --query-chunks 2 --query-layer 17)
EXACT=(--tree-depth 0 --selected-leaves none --tokens-per-node 512 --leaf-tokens-per-node 512 --chunk-spacing 512)

resume() {  # --resume when RUN holds a started run
  [ -d "$1" ] && [ -n "$(ls -A "$1")" ] && echo --resume || true
}
trained() {  # RUN finished: its summary is written at the end
  [ -f "$1/training_summary.json" ]
}

trained "$OUT/exercises" || OUT_ROOT=$OUT STEPS=50 EVAL=25 scripts/experiment_joint_lora.sh exercises $(resume "$OUT/exercises")
[ -d "$OUT/exercises-adapter" ] || python scripts/package_adapter.py "$OUT/exercises" "$OUT/exercises-adapter" "${READING[@]}"
if ! trained "$OUT/more"; then
  read -ra KNOBS <<< "$(python scripts/knob_flags.py "$OUT/exercises-adapter" --except decoder_window)"
  python -m sharedllm train --output "$OUT/more" "${KNOBS[@]}" --n-chunks 2 --decoder-window 512 --lora-rank 8 \
    --batch-size 1 --grad-accum 4 --warmup 3 --domains books:0.5 math:0.3 code:0.2 --eval-windows 8 \
    --eval-every 15 --save-every 5 --log-every 5 --no-progress --retrieval-fraction 0.3 \
    --init-adapter "$OUT/exercises-adapter" --lr 2e-4 --seed 2 --steps 60 --threads 2 $(resume "$OUT/more")
fi
[ -d "$OUT/stacked-adapter" ] || python scripts/package_adapter.py "$OUT/more" "$OUT/stacked-adapter" --decoder-window 1024
[ -d "$OUT/adapter" ] || python scripts/package_adapter.py "$OUT/stacked-adapter" "$OUT/adapter" "${EXACT[@]}"
echo "adapter: $OUT/adapter (read it with: sharedllm eval passkey --adapter $OUT/adapter --lengths 8K)"
