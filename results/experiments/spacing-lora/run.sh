#!/usr/bin/env bash
# A LoRA trained under chunk_spacing g (README.md). From the project root:
#   bash results/experiments/spacing-lora/run.sh train G      # the default's recipe with --chunk-spacing G (G = 0: control)
#   bash results/experiments/spacing-lora/run.sh package G    # -> runs/spacing-lora/adapter-gG, read with the default's knobs
#   bash results/experiments/spacing-lora/run.sh passkey G    # passkey 8K, seed 0, 2 trials per depth (10 prompts)
#   bash results/experiments/spacing-lora/run.sh ppl G DOMAIN # validation perplexity 8K, 16 windows (the seed-0 plan)
# 2-core CPU; training on both threads, evaluations one thread each.
set -euo pipefail
export HF_HUB_OFFLINE=1
OUT=results/experiments/spacing-lora
G=${2:?chunk spacing G}
ADAPTER=runs/spacing-lora/adapter-g$G
case "${1:?train, package, passkey or ppl}" in
  train) OUT_ROOT=runs/spacing-lora/g$G EXTRA="--chunk-spacing $G --threads 2" bash scripts/experiment_joint_lora.sh exercises ;;
  package)
    read -ra READ <<< "$(python scripts/knob_flags.py sharedllm/default_adapter)"  # how the default reads, all of it
    python scripts/package_adapter.py "runs/spacing-lora/g$G/exercises" "$ADAPTER" "${READ[@]}" --chunk-spacing "$G" ;;
  passkey) sharedllm eval passkey --adapter "$ADAPTER" --methods sharedllm --label "lora-g$G" --lengths 8K --trials 2 --seed 0 --threads 1 --output "$OUT" ;;
  ppl) sharedllm eval heldout --adapter "$ADAPTER" --methods sharedllm --label "lora-g$G" --split validation --max-windows 16 --lengths 8K --domains "${3:?domain}" --threads 1 --output "$OUT" ;;
  *) echo "train, package, passkey or ppl" >&2; exit 2 ;;
esac
