#!/usr/bin/env bash
# The exact-lora experiment (README.md): the default's LoRA trained 60 more steps under exact-g512's reading.
#   results/experiments/exact-lora/run.sh train        # rerun to continue a stopped run (--resume)
#   results/experiments/exact-lora/run.sh package      # adapters-style folder of the run, in runs/exact-lora/package
#   results/experiments/exact-lora/run.sh validation books|code|math   # rule 1
#   results/experiments/exact-lora/run.sh floor books|code|math        # rule 2: its LoRA merged, the window alone
#   results/experiments/exact-lora/run.sh full books|code|math         # recorded: its LoRA merged, every token in view
#   results/experiments/exact-lora/run.sh retrieval    # rule 3
set -euo pipefail
export HF_HUB_OFFLINE=1
HERE=results/experiments/exact-lora
RUN=runs/exact-lora/more-exact
READING=adapters/smollm2-135m-joint-more-exact  # exact-g512's knobs (../context-gap/readings.sh) on the default
merged_base() {  # the arm's LoRA merged into the base, once: what `floor` and `full` read
  [ -d runs/exact-lora/merged ] || python scripts/export_merged_base.py runs/exact-lora/package runs/exact-lora/merged
}
case "${1:?train, package, validation, floor, full or retrieval}" in
  train)
    read -ra KNOBS <<< "$(python scripts/knob_flags.py "$READING" --except decoder_window)"
    resume=(); [ -f "$RUN/run.json" ] && resume=(--resume)
    python -m sharedllm train --output "$RUN" "${KNOBS[@]}" --n-chunks 2 --decoder-window 512 --lora-rank 8 \
      --batch-size 1 --grad-accum 4 --warmup 3 --domains books:0.5 math:0.3 code:0.2 --eval-windows 8 \
      --eval-every 15 --save-every 5 --log-every 5 --no-progress --retrieval-fraction 0.3 \
      --init-adapter adapters/smollm2-135m-joint-more --lr 2e-4 --seed 3 --steps 60 --threads 1 "${resume[@]}" ;;
  package)  # read with the 1,024-token window, as the default
    python scripts/package_adapter.py "$RUN" runs/exact-lora/package --decoder-window 1024 ;;
  validation)
    python -m sharedllm eval heldout --methods sharedllm --adapter runs/exact-lora/package --label more-exact \
      --threads 1 --split validation --domains "${2:?books, code or math}" --lengths 8K --max-windows 16 \
      --output "$HERE/validation-8k" ;;
  floor)
    merged_base
    python -m sharedllm eval heldout --methods window --base runs/exact-lora/merged --decoder-window 1024 \
      --label window-more-exact --threads 1 --split validation --domains "${2:?books, code or math}" --lengths 8K \
      --max-windows 16 --output "$HERE/floor-8k" ;;
  full)  # the reference of the context share (../lora-continuation/context_share.py): full attention, same weights
    merged_base
    python -m sharedllm eval heldout --methods full --base runs/exact-lora/merged --label full-more-exact --threads 1 \
      --split validation --domains "${2:?books, code or math}" --lengths 8K --max-windows 16 --output "$HERE/full-8k" ;;
  retrieval)
    exec scripts/candidate_grid.sh "$HERE" more-exact validation --adapter runs/exact-lora/package ;;
  *) echo "unknown step $1 (train, package, validation, floor, full or retrieval)" >&2; exit 2 ;;
esac
