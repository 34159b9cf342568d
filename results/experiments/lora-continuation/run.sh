#!/usr/bin/env bash
# The lora-continuation experiment (README.md): continue the default's LoRA on its own recipe, then the rule's checks.
#   results/experiments/lora-continuation/run.sh train | perplexity | retrieval | floors | floors-test
#                                                | full-test|full-validation|spacing-validation books|code|math
#                                                | spacing-retrieval
set -euo pipefail
export HF_HUB_OFFLINE=1
HERE=results/experiments/lora-continuation
DEFAULT=adapters/smollm2-135m-joint-exercises
RUN=runs/lora-continuation/more
READ=(--methods sharedllm --adapter "$RUN" --decoder-window 1024 --label more --threads 1)
merged_base() {  # ARM ADAPTER: ADAPTER's LoRA merged into the base, once: what `floors` and `full-*` read
  [ -d "runs/lora-continuation/merged-$1" ] || python scripts/export_merged_base.py "$2" "runs/lora-continuation/merged-$1"
}
case "${1:?train, perplexity, retrieval, floors, floors-test, full-test, full-validation, spacing-validation or spacing-retrieval}" in
  train)  # the default's recipe (scripts/experiment_joint_lora.sh exercises) from its LoRA: 60 more steps, new samples
    read -ra KNOBS <<< "$(python scripts/knob_flags.py "$DEFAULT" --except decoder_window)"
    python -m sharedllm train --output "$RUN" "${KNOBS[@]}" --n-chunks 2 --decoder-window 512 --lora-rank 8 \
      --batch-size 1 --grad-accum 4 --warmup 3 --domains books:0.5 math:0.3 code:0.2 --eval-windows 8 \
      --eval-every 15 --save-every 5 --log-every 5 --no-progress --retrieval-fraction 0.3 \
      --init-adapter "$DEFAULT" --lr 2e-4 --seed 2 --steps 60 --threads 2 ;;
  perplexity)  # rule 1: validation 8K, the 16 windows of the default's cells
    for domain in books math code; do
      python -m sharedllm eval heldout "${READ[@]}" --split validation --domains "$domain" --lengths 8K \
        --max-windows 16 --output "$HERE/heldout-8k-validation"
    done ;;
  retrieval)  # rule 2, in the order that decides most often (the validation lane of scripts/candidate_grid.sh)
    exec scripts/candidate_grid.sh "$HERE" more validation --adapter "$RUN" --decoder-window 1024 ;;
  floors|floors-test)  # recorded, decides nothing: each LoRA's own window floor (the base with it merged, the window alone)
    split=validation; [ "$1" = floors-test ] && split=test
    for arm in default more; do
      adapter=$DEFAULT; [ "$arm" = more ] && adapter=$RUN
      merged_base "$arm" "$adapter"
      python -m sharedllm eval heldout --methods window --base "runs/lora-continuation/merged-$arm" --decoder-window 1024 \
        --label "floor-$arm" --threads 1 --split "$split" --domains books math code --lengths 8K --max-windows 16 \
        --output "$HERE/floors-8k-$split"
    done ;;
  full-test|full-validation)  # recorded, decides nothing: full attention of the new default's own weights (its
    # LoRA merged, every token in view) on the 8K windows of the floors (test: the headline's): what the context can
    # add to those weights, beside the window floor of the same weights (floors, floors-test) and what the default's
    # context adds (README.md, "Full attention of the same weights"; validation: the reference for proxies)
    split=${1#full-}
    merged_base more adapters/smollm2-135m-joint-more
    python -m sharedllm eval heldout --methods full --base runs/lora-continuation/merged-more --label full-more --threads 1 --split "$split" \
      --domains "${2:?books, code or math}" --lengths 8K --max-windows 16 --output "$HERE/full-8k-$split" ;;
  spacing-validation)  # recorded, decides nothing: the default read with its chunks laid out 128 positions apart
    # (`--chunk-spacing 128`, the option of ../spacing-test/) on the validation 8K windows, against the same-weights
    # references above (README.md, "Full attention of the same weights")
    python -m sharedllm eval heldout --methods sharedllm --adapter adapters/smollm2-135m-joint-more --chunk-spacing 128 \
      --label spacing128 --threads 1 --split validation --domains "${2:?books, code or math}" --lengths 8K \
      --max-windows 16 --output "$HERE/spacing-8k-validation" ;;
  spacing-retrieval)  # recorded, decides nothing: the `retrieval` step's checks (passkey 8K at depth 1.0, RULER 16K
    # on validation) for the default read with `--chunk-spacing 128`, beside the default's cells of that step
    exec scripts/candidate_grid.sh "$HERE" spacing128 validation --adapter adapters/smollm2-135m-joint-more --chunk-spacing 128 ;;
  *) echo "unknown step $1 (train, perplexity, retrieval, floors, floors-test, full-test, full-validation, spacing-validation or spacing-retrieval)" >&2; exit 2 ;;
esac
