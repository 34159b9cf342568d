#!/usr/bin/env bash
# The cost of the candidate reading exact-g512 against the default's reading: `sharedllm bench` at 16K, each reading
# against streaming in its own process (median of 3 prefills, 4 decode steps), one thread.
#   results/experiments/context-gap/bench.sh   (replaces its last results: --overwrite)
set -euo pipefail
export HF_HUB_OFFLINE=1
OUT=results/experiments/context-gap/bench
BENCH=(--methods sharedllm streaming --adapter adapters/smollm2-135m-joint-more --lengths 16K --repeats 3
       --cell-seconds 600 --decode-steps 4 --threads 1 --overwrite)
python -m sharedllm bench "${BENCH[@]}" --output "$OUT/default" --figures "$OUT/default"
source results/experiments/context-gap/readings.sh  # EXACT, SPACED
python -m sharedllm bench "${BENCH[@]}" "${EXACT[@]}" "${SPACED[@]}" --output "$OUT/exact-g512" --figures "$OUT/exact-g512"
