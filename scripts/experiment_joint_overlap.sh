#!/usr/bin/env bash
# Joint injection with overlapping chunks, a calibrated scoring layer and an attention sink, training-free
# (issue #10): every layer injected, C = 512, Ld = 1024, S = 64. Results and write-up (which rows ran on which
# commit): results/experiments/joint-overlap/README.md. Usage: scripts/experiment_joint_overlap.sh [OUT_DIR]
set -euo pipefail
OUT=${1:-results/experiments/joint-overlap}
HERE=results/experiments/joint-overlap
RUN="python results/experiments/joint-library/teacher_forced.py --trials 10"
SHARED="chunk_size=512 decoder_window=1024 chunk_overlap=64"
FULL="tree_depth=0,tokens_per_node=512"  # no compression: every context token
TREE="tree_depth=3,tokens_per_node=32,leaf_tokens_per_node=64"  # 2*32 coarse + 2*64 exact = 192 of 512 per chunk
LAYER17="$TREE,tree_selection=attention,selection_layer=17"

# passkey, teacher-forced, 10 trials per cell
$RUN --lengths 8192 --knobs $SHARED --variants $FULL "$TREE,tree_selection=attention" --output "$OUT/passkey-8k.json"
$RUN --lengths 16384 --knobs $SHARED --variants "$TREE,tree_selection=attention" --output "$OUT/passkey-16k.json"
$RUN --lengths 8192 --knobs $SHARED --variants "$TREE,tree_selection=query" "$TREE,tree_selection=recent" \
    --output "$OUT/passkey-8k-selection.json"
# which layer's own query finds planted facts: on the training retrieval exercises (train-split books), not passkey
python $HERE/calibrate_layer.py --length 16384 --samples 8 --output "$OUT/calibrate-layer-16k.json"
for length in 8192 16384 32768; do
    $RUN --lengths $length --knobs $SHARED --variants "$LAYER17" --output "$OUT/passkey-$((length / 1024))k-layer17.json"
done

# perplexity, CEPE protocol, test-split books, the same 4 windows per length for every row
PPL="python -m sharedllm eval ppl --domains books --max-windows 4 --output $OUT/ppl-dilution"
JOINT="--adapter none --injection joint --n-injected-layers 30 --chunk-size 512 --decoder-window 1024 --chunk-overlap 64"
JOINT_TREE="$JOINT --tree-depth 3 --tokens-per-node 32 --leaf-tokens-per-node 64 --tree-selection attention --selection-layer 17"
$PPL --methods window --lengths 2K 4K 8K
$PPL --methods sharedllm $JOINT --tree-depth 0 --tokens-per-node 512 --lengths 2K 8K --label joint-full
$PPL --methods sharedllm $JOINT_TREE --lengths 8K --label joint-tree
$PPL --methods sharedllm $JOINT --tree-depth 0 --tokens-per-node 512 --context-bias log_chunks --lengths 8K \
    --label joint-full-log-chunks
$PPL --methods sharedllm $JOINT_TREE --context-bias log_chunks --lengths 8K --label joint-tree-log-chunks
$PPL --methods sharedllm --adapter adapters/smollm2-135m --lengths 2K 8K --label shipped-adapter  # the trained cross adapter
# cost against streaming and the window alone, same process (figures go to the output folder, not docs/); bench
# refuses to replace a result: a rerun into the same OUT_DIR (the committed one by default) needs --overwrite here
python -m sharedllm bench --methods sharedllm streaming window --adapter adapters/smollm2-135m-joint --lengths 8K 16K \
    --repeats 3 --decode-steps 4 --threads 2 --output "$OUT/bench" --figures "$OUT/bench"
# the field's protocol (greedy generation, first integer of the output), a small cell: 8K, depths 0.25 / 0.75
python -m sharedllm eval passkey --methods sharedllm --adapter adapters/smollm2-135m-joint --lengths 8K --trials 4 \
    --depths 0.25 0.75 --output "$OUT/eval-passkey"
