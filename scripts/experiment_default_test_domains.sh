#!/usr/bin/env bash
# The default preset (adapters/smollm2-135m-joint, context_chunks = 8) on the *test* splits of math and code, which
# issue #10 asks for and no earlier run measured: perplexity (CEPE protocol, the first 8 windows per length, the
# same windows for every method) at 8K and 16K against the window floor, full attention at 8K (the base's own
# ceiling there), then passkey at 32K (the 10 prompts of scripts/experiment_frontier.sh: depths 0-1, 2 each).
# Write-up: results/experiments/default-test-domains/README.md.
# Usage: scripts/experiment_default_test_domains.sh [OUT_DIR]
set -euo pipefail
OUT=${1:-results/experiments/default-test-domains}
for DOMAIN in math code; do
    python -m sharedllm eval ppl --domains $DOMAIN --split test --max-windows 8 --output "$OUT/ppl-$DOMAIN" \
        --methods window sharedllm --lengths 8K 16K
    python -m sharedllm eval ppl --domains $DOMAIN --split test --max-windows 8 --output "$OUT/ppl-$DOMAIN" \
        --methods full --lengths 8K
done
python -m sharedllm eval passkey --methods sharedllm --lengths 32K --trials 2 --output "$OUT/passkey"
