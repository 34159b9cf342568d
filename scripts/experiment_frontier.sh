#!/usr/bin/env bash
# The quality/cost frontier of the number of injected layers M (issue #10): joint injection, training-free, at
# M = 4, 8, 16, 18, 24, 30, against the shipped cross adapter (M = 4, trained) and the window alone. Every point:
# passkey by the field's protocol (greedy generation, 8K, 5 depths x 2 trials = 10 prompts, the same prompts for
# every point) and perplexity (CEPE protocol, test-split books, the same 4 windows at 8K). Cost: prefill FLOPs
# (analytic) and measured prefill time against streaming in the same process (bench). Each joint point scores its
# tree with the best layer below M on the training retrieval exercises (results/experiments/joint-overlap/
# calibrate-layer-16k.json: layers 2, 6, 14, 17). Write-up: results/experiments/frontier/README.md.
# Usage: scripts/experiment_frontier.sh [OUT_DIR] [STAGE: quality|bench|all]
set -euo pipefail
OUT=${1:-results/experiments/frontier}
STAGE=${2:-all}
TREE="--chunk-size 512 --decoder-window 1024 --chunk-overlap 64 --tree-depth 3 --tokens-per-node 32 \
--leaf-tokens-per-node 64 --tree-selection attention"
POINTS=("4 2" "8 6" "16 14" "18 17" "24 17" "30 17")  # M and its scoring layer

if [[ $STAGE == quality || $STAGE == all ]]; then
    PASSKEY="python -m sharedllm eval passkey --lengths 8K --trials 2 --output $OUT/passkey"
    PPL="python -m sharedllm eval ppl --domains books --max-windows 4 --lengths 8K --output $OUT/ppl"
    $PPL --methods window
    CROSS="--methods sharedllm --adapter adapters/smollm2-135m --label cross-m4-adapter"  # the trained cross adapter
    $PPL $CROSS
    $PASSKEY $CROSS
    # the base itself at depths 1.0 and 0.5 (full attention inside its native 8K window, and the window alone)
    python -m sharedllm eval passkey --methods window full --lengths 8K --trials 2 --depths 1.0 0.5 \
        --output "$OUT/base-depth-check"
    for point in "${POINTS[@]}"; do
        read -r m layer <<< "$point"
        JOINT="--methods sharedllm --adapter none --injection joint --n-injected-layers $m --selection-layer $layer $TREE"
        $PASSKEY $JOINT --label "joint-m$m"
        $PPL $JOINT --label "joint-m$m"
    done
fi
if [[ $STAGE == bench || $STAGE == all ]]; then
    # prefill time against streaming, same process; run on a quiet machine. bench refuses to replace a result: a rerun
    # into the same OUT_DIR (the committed results/experiments/frontier/bench/ by default) needs --overwrite on these
    # lines, or pass another OUT_DIR
    for point in "${POINTS[@]}"; do
        read -r m layer <<< "$point"
        python -m sharedllm bench --methods sharedllm streaming --adapter none --injection joint --n-injected-layers $m \
            --selection-layer $layer $TREE --lengths 8K --repeats 3 --decode-steps 4 --threads 2 \
            --output "$OUT/bench/joint-m$m" --figures "$OUT/bench/joint-m$m"
    done
    python -m sharedllm bench --methods sharedllm streaming --adapter adapters/smollm2-135m --lengths 8K --repeats 3 --decode-steps 4 --threads 2 \
        --output "$OUT/bench/cross-m4-adapter" --figures "$OUT/bench/cross-m4-adapter"
fi
