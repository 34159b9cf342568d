#!/usr/bin/env bash
# Issue #10, "the tree earns its place" on perplexity: the default adapter's query-aware leaf selection against
# the same 176 positions per chunk chosen without the query, on held-out validation windows at 4K (results/experiments/
# tree-ablation-ppl/README.md). At 4K every chunk is read (k = 8 >= 6 chunks), so only the choice inside a chunk
# differs. Arms: leaves-query (the default), leaves-recent (the 2 most recent leaves exact), no-tree (each chunk
# strided to 176 positions), greedy-tree (the paper's descent, 192 positions: a larger budget), plus window and full
# on the same windows. At LENGTH 8K and more (14+ chunks, k = 8 read) one more arm: recent-chunks, the k most recent
# chunks instead of the k the query ranks best (the chunk ranking's own ablation; inside a chunk as the default).
# Resumable (cells are skipped, windows journaled); cell files name their length, so lengths share the folder.
#   [LENGTH=8K] scripts/experiment_tree_ablation_ppl.sh [run|summary]
set -euo pipefail
export HF_HUB_OFFLINE=1
D=${D:-results/experiments/tree-ablation-ppl}
LENGTH=${LENGTH:-4K}
common=(--split validation --domains books math code --lengths "$LENGTH" --max-windows 8 --output "$D")
# The selection this ablation was written for and run with: the query token's ranking alone (the default until
# 2026-12-04, when the default added 32 query tokens' chunks and leaves; its recent arm would not combine with them).
# Knobs of sharedllm only (window and full refuse them); --query-layer none: the adapter's query_layer needs query_chunks.
q1=(--query-tokens 1 --query-chunks 0 --query-layer none)
eval_() { echo "+ sharedllm eval $*"; python -m sharedllm eval "$@"; }

run() {
  eval_ heldout --methods window --decoder-window 1024 "${common[@]}"
  eval_ heldout --methods sharedllm --label leaves-query "${q1[@]}" "${common[@]}"
  if [ "$LENGTH" != 4K ]; then  # at 4K every chunk is read: this arm would be the default
    eval_ heldout --methods sharedllm --label recent-chunks --recent-chunks 8 "${q1[@]}" "${common[@]}"
  fi
  eval_ heldout --methods sharedllm --label leaves-recent --tree-selection recent --context-chunks none \
    --selection-score logit --selection-layer none "${q1[@]}" "${common[@]}"
  eval_ heldout --methods sharedllm --label no-tree --tree-depth 0 --selected-leaves none --tokens-per-node 176 \
    --leaf-tokens-per-node 176 "${q1[@]}" "${common[@]}"
  eval_ heldout --methods full "${common[@]}"
  eval_ heldout --methods sharedllm --label greedy-tree --selected-leaves none --tokens-per-node 32 "${q1[@]}" "${common[@]}"
}

# per domain: PPL with its 95% bootstrap interval, then each arm / leaves-query on the same windows (paired interval)
summary() {
  python - "$D" <<'PY'
import json, pathlib, sys
from sharedllm.evaluation import report

cells = [json.loads(p.read_text()) | {"_file": p.name} for p in sorted(pathlib.Path(sys.argv[1]).glob("heldout_*.json"))]
for domain in sorted({c["domain"] for c in cells}):
    mine = [c for c in cells if c["domain"] == domain]
    print(f"\n{domain}\n" + "\n".join(report.headline_table(mine)) + "\n")
    print("\n".join(report.paired_table(mine, reference="leaves-query")))
PY
}

"${1:-run}"
