#!/usr/bin/env bash
# Joint injection, training-free (issue #10): teacher-forced passkey through the library's joint mode, every
# layer injected, C = 512, Ld = 1024; the tree's selections at one key/value budget against no compression.
# Results: results/experiments/joint-library/ (README.md there). Usage: scripts/experiment_joint.sh [OUT_DIR]
set -euo pipefail
OUT=${1:-results/experiments/joint-library}
RUN="python results/experiments/joint-library/teacher_forced.py --trials 10"
SHARED="chunk_size=512 decoder_window=1024 chunk_overlap=1"  # S = 1: the library before chunk_overlap; Ld = 2C: a roll-over during generation keeps > C tokens of the window
FULL="tree_depth=0,tokens_per_node=512"  # no compression: every context token
TREE="tree_depth=3,tokens_per_node=32,leaf_tokens_per_node=64"  # 2*32 coarse + 2*64 exact = 192 of 512 per chunk
$RUN --lengths 4096 --knobs $SHARED --variants $FULL --output "$OUT/passkey-4k.json"
$RUN --lengths 4096 --knobs $SHARED --variants "$FULL,sink=bos" --output "$OUT/passkey-4k-bos.json"
$RUN --lengths 8192 --knobs $SHARED --variants $FULL "$TREE,tree_selection=attention" --output "$OUT/passkey-8k.json"
$RUN --lengths 16384 --knobs $SHARED --variants "$TREE,tree_selection=attention" --output "$OUT/passkey-16k.json"
$RUN --lengths 8192 --knobs $SHARED --variants "$TREE,tree_selection=query" "$TREE,tree_selection=recent" \
    --output "$OUT/passkey-8k-selection.json"
