#!/usr/bin/env bash
# Dilution and the global top-k over chunks (issue #10): the joint preset with every chunk and with
# context_chunks = 2 / 4, perplexity at 8K and 16K (4 windows of test books), passkey at 8K (the 10 prompts of
# scripts/experiment_frontier.sh) and teacher-forced at 16K, and ask-style answers at 4K-64K.
# Write-up: results/experiments/context-chunks/README.md. Usage: scripts/experiment_context_chunks.sh [OUT_DIR]
set -euo pipefail
OUT=${1:-results/experiments/context-chunks}
PRESET=adapters/smollm2-135m-joint  # its config; --context-chunks overrides the preset's own value
PPL="python -m sharedllm eval ppl --domains books --max-windows 4 --output $OUT/ppl --methods sharedllm --adapter $PRESET"
$PPL --lengths 8K --context-chunks 2 --label joint-k2
$PPL --lengths 8K --context-chunks 4 --label joint-k4
$PPL --lengths 16K --context-chunks 1000000 --label joint-all  # more than any input has: every chunk
$PPL --lengths 16K --context-chunks 4 --label joint-k4
python -m sharedllm eval ppl --domains books --max-windows 4 --output "$OUT/ppl" --methods window --lengths 16K
python -m sharedllm eval passkey --methods sharedllm --adapter $PRESET --context-chunks 4 --lengths 8K --trials 2 \
    --output "$OUT/passkey" --label joint-k4
python -m sharedllm eval passkey --methods sharedllm --adapter $PRESET --lengths 16K --trials 2 --output "$OUT/passkey" \
    --label default-16k
python results/experiments/joint-library/teacher_forced.py --trials 10 --lengths 16384 \
    --knobs chunk_size=512 decoder_window=1024 chunk_overlap=64 \
    --variants "tree_depth=3,tokens_per_node=32,leaf_tokens_per_node=64,tree_selection=attention,selection_layer=17,context_chunks=4" \
    --output "$OUT/passkey-16k-teacher-forced-k4.json"
python results/experiments/ask-joint/answer_check.py --tokens 4096
python results/experiments/ask-joint/answer_check.py --tokens 16384 --variants default context_chunks=4
python results/experiments/ask-joint/answer_check.py --tokens 65536 --variants context_chunks=4 context_chunks=8
