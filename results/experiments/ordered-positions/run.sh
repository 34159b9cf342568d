#!/usr/bin/env bash
# Issue #10: the chunks read side by side in text order (chunk_spacing 512; stage 1 ran it as context_positions ordered) against stacked, the default.
# Plan and rules: README.md. 2-core CPU, one thread per run. Validation documents only.
#   bash results/experiments/ordered-positions/run.sh 1   # 8K perplexity, books / math / code (run as --context-positions ordered, now --chunk-spacing 512)
#   bash results/experiments/ordered-positions/run.sh 1b DOMAIN [G]  # chunk_spacing G (128) at 8K (code and math side by side, then books)
#   (stage 2 did not run: stage 1 failed its rule, README.md)
#   bash results/experiments/ordered-positions/run.sh 2    # ordered: 16K perplexity, passkey 8K
#   bash results/experiments/ordered-positions/run.sh 2b   # default 16K perplexity (books, math); ordered: RULER niah_single 16K
set -euo pipefail
# The adapter is the default of the time, named since the default changed (2026-12-07).
export HF_HUB_OFFLINE=1
OUT=results/experiments/ordered-positions
PPL=(eval heldout --split validation --max-windows 16 --threads 1 --output "$OUT")
case "${1:?1, 1b, 2 or 2b}" in
  1) sharedllm "${PPL[@]}" --methods sharedllm --adapter adapters/smollm2-135m-joint-exercises --label ordered --chunk-spacing 512 --domains code math books --lengths 8K
     sharedllm "${PPL[@]}" --methods sharedllm --adapter adapters/smollm2-135m-joint-exercises --label default --domains books --lengths 8K ;;
  1b) g=${3:-128}; sharedllm "${PPL[@]}" --methods sharedllm --adapter adapters/smollm2-135m-joint-exercises --label "spacing$g" --chunk-spacing "$g" --domains "${2:?a domain}" --lengths 8K ;;
  2) sharedllm "${PPL[@]}" --max-windows 8 --methods sharedllm --adapter adapters/smollm2-135m-joint-exercises --label ordered --chunk-spacing 512 --domains code math books --lengths 16K
     sharedllm eval passkey --methods sharedllm --adapter adapters/smollm2-135m-joint-exercises --label ordered --chunk-spacing 512 --lengths 8K --trials 2 --seed 0 --threads 1 --output "$OUT" ;;
  2b) sharedllm "${PPL[@]}" --max-windows 8 --methods sharedllm --adapter adapters/smollm2-135m-joint-exercises --label default --domains math books --lengths 16K
      sharedllm eval ruler --methods sharedllm --adapter adapters/smollm2-135m-joint-exercises --label ordered --chunk-spacing 512 --tasks niah_single --trials 10 --split validation --lengths 16K --threads 1 --output "$OUT" ;;
  *) echo "1, 1b, 2 or 2b" >&2; exit 2 ;;
esac
