#!/usr/bin/env bash
# Out-of-domain check (README.md): window floors, then the two adapters, on two long texts outside the corpora;
# `paired`: both adapters on six texts, one run each, windows recorded so that `sharedllm compare` pairs them.
#   results/experiments/lora-continuation/ood.sh floors | adapters | paired
set -euo pipefail
export HF_HUB_OFFLINE=1
HERE=results/experiments/lora-continuation/ood-8k
TEXTS=(/usr/share/vim/vim90/doc/version7.txt /root/.rustup/toolchains/stable-x86_64-unknown-linux-gnu/share/doc/rust/html/releases.md)
COMMON=(--lengths 8K --max-windows 8 --threads 1 --output "$HERE")
if [ "${1:-}" = paired ]; then
  SIX=("${TEXTS[@]}" /usr/include/sqlite3.h /usr/include/linux/bpf.h /usr/include/c++/12/bits/stl_algo.h
       /usr/share/perl/5.36.0/Math/BigInt.pm)
  PAIRED=(--methods sharedllm --data "${SIX[@]}" --lengths 8K --max-windows 48 --threads 1 --output "$HERE-paired")
  python -m sharedllm eval ppl "${PAIRED[@]}" --label default
  python -m sharedllm eval ppl "${PAIRED[@]}" --adapter adapters/smollm2-135m-joint-more --label more
  exit
fi
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
    *) echo "unknown step $1 (floors, adapters or paired)" >&2; exit 2 ;;
  esac
done
