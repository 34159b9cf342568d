#!/usr/bin/env bash
# The M frontier again, with the default of 2026-12-04 to 2026-12-07 (adapters/smollm2-135m-joint-exercises, named
# below since the default changed, and its selection), at 16K
# on test data (issue #10; write-up: README.md here). Each point injects the first M layers; the layers above M read
# the attention sink and the window only. Each point's selection: the default's (scoring layer 20, the 32 queries'
# chunks also ranked at layer 17) where M > 20; below, the layers must be injected, so the scoring layer is the one
# the earlier frontier calibrated below M (../joint-overlap/calibrate-layer-16k.json: 14, 6, 2 for M = 16, 8, 4)
# and the query layer 8 for M = 16 (section 9 of ../tree-selection/: layer 8 ranked the needle's chunk 0th-4th
# at 128K), none for M <= 8 (10 chunks read instead of 12). The M = 30 point is the default's own cells (same
# prompts and windows), so it is not rerun here.
# Quality: passkey 16K (depths 0-1, 2 trials each = 10 prompts: trials 0-1 of results/retrieval's 50), RULER
# niah_single 16K test haystack (10 trials), perplexity by `eval heldout` at 16K, books and math, 8 of the 16 test
# windows results/heldout uses (its seeded plan's first 8 draws). Cost: `sharedllm bench` at 16K against streaming
# in the same process (median of 3 prefills each).
# Usage: results/experiments/frontier-16k/run.sh [quality|bench|all] [M: only this point]
# bench refuses to replace a result: rerunning the bench stage into the committed bench/m* folders needs
# --overwrite on its two bench lines.
set -euo pipefail
OUT=results/experiments/frontier-16k
STAGE=${1:-all}
ONLY=${2:-}
ADAPTER=adapters/smollm2-135m-joint-exercises
POINTS=("24 20 17" "21 20 17" "16 14 8" "8 6 none" "4 2 none")  # M, scoring layer, query layer

for point in "${POINTS[@]}"; do
    read -r m layer query <<< "$point"
    [[ -z $ONLY || $ONLY == "$m" ]] || continue
    KNOBS="--adapter $ADAPTER --n-injected-layers $m --selection-layer $layer --query-layer $query"
    if [[ $STAGE == quality || $STAGE == all ]]; then
        ONE="--methods sharedllm --label m$m $KNOBS"
        python -m sharedllm eval passkey $ONE --lengths 16K --trials 2 --output $OUT/passkey
        python -m sharedllm eval ruler $ONE --tasks niah_single --trials 10 --split test --lengths 16K --output $OUT/ruler
        python -m sharedllm eval heldout $ONE --domains books math --lengths 16K --max-windows 8 --output $OUT/heldout
    fi
    if [[ $STAGE == bench || $STAGE == all ]]; then
        python -m sharedllm bench --methods sharedllm streaming $KNOBS --lengths 16K --repeats 3 --cell-seconds 600 --decode-steps 4 \
            --threads 1 --output $OUT/bench/m$m --figures $OUT/bench/m$m
    fi
done
if [[ ($STAGE == bench || $STAGE == all) && (-z $ONLY || $ONLY == 30) ]]; then  # the default itself (M = 30)
    python -m sharedllm bench --methods sharedllm streaming --adapter $ADAPTER --lengths 16K --repeats 3 --cell-seconds 600 --decode-steps 4 --threads 1 \
        --output $OUT/bench/m30 --figures $OUT/bench/m30
fi
