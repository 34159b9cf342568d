#!/usr/bin/env bash
# Out-of-domain check (README.md): window floors, then the two adapters, on two long texts outside the corpora.
#   results/experiments/lora-continuation/ood.sh floors | adapters
set -euo pipefail
export HF_HUB_OFFLINE=1
HERE=results/experiments/lora-continuation/ood-8k
TEXTS=(/usr/share/vim/vim90/doc/version7.txt /root/.rustup/toolchains/stable-x86_64-unknown-linux-gnu/share/doc/rust/html/releases.md)
COMMON=(--lengths 8K --max-windows 8 --threads 1 --output "$HERE")
for text in "${TEXTS[@]}"; do
  case "${1:?floors or adapters}" in
    floors)
      python -m sharedllm eval ppl --methods window --decoder-window 1024 --label floor-plain --data "$text" "${COMMON[@]}"
      for arm in default more; do
        python -m sharedllm eval ppl --methods window --base "runs/lora-continuation/merged-$arm" --decoder-window 1024 \
          --label "floor-$arm" --data "$text" "${COMMON[@]}"
      done ;;
    adapters)
      python -m sharedllm eval ppl --methods sharedllm --label default --data "$text" "${COMMON[@]}"
      python -m sharedllm eval ppl --methods sharedllm --adapter adapters/smollm2-135m-joint-more --label more \
        --data "$text" "${COMMON[@]}" ;;
    *) echo "unknown step $1 (floors or adapters)" >&2; exit 2 ;;
  esac
done
