#!/usr/bin/env bash
# The headline grid of docs/results.md (issue 11): every method scored on the same held-out windows per domain and
# length (`sharedllm eval heldout`, one JSON per cell in $RESULTS/heldout/), then the retrieval headline for
# sharedllm: passkey and RULER needles from 8K / 16K to 128K (into $RESULTS/retrieval/). Resumable: a cell written
# with the same settings is skipped, one written with other settings stops the script with what differs, and passkey /
# RULER continue from their trial journals, so after an interruption run the same command again (EXTRA=--overwrite
# redoes the perplexity cells). Nothing is replaced silently: a window a
# method does not run is written as "not run: <reason>" (past its --max-length, out of its --max-seconds budget, or
# an error).
#   scripts/evaluate_grid.sh            # everything below, in order
#   scripts/evaluate_grid.sh ppl        # the perplexity grid: domains x lengths x methods
#   scripts/evaluate_grid.sh retrieval  # passkey 8K-128K and RULER niah_single / niah_multikey 16K-128K, sharedllm
#   scripts/evaluate_grid.sh smoke      # 2 windows at 2K on books for every method, into runs/grid-smoke/ (minutes)
#   sharedllm report                    # regenerate docs/results.md and docs/figures/
# Settings (environment): ADAPTER, LD (decoder window of window / streaming / infllm's local window: the adapter's),
# WINDOWS per cell, LENGTHS, DOMAINS, FULL_MAX / YARN_MAX (longest length full attention / YaRN run: quadratic cost;
# full attention stops at 16K, twice the base's native 8K positions, where it already breaks (books perplexity 1003
# against the window's 40): its 32K cells would cost ~7 CPU-hours for nothing; YaRN stops at 32K on the CPU, where
# a 64K window takes ~30 minutes, 8 CPU-hours per cell: on a GPU set YARN_MAX=64K or 128K), MAX_SECONDS (time
# budget per cell), RESULTS;
# for retrieval: PASSKEY_LENGTHS, RULER_LENGTHS, TRIALS (per passkey depth and per RULER task).
# YaRN's cells up to the base's native window (8K) are recorded as not run, "identical to full": its factor is 1 there.
# Cost on the 2-core CPU (estimates from measured windows; a GPU takes a small fraction): per 128K window sharedllm
# ~0.5 min with the cross adapter and about streaming's with the default (joint) one, streaming ~5 min, infllm ~8 min (it attends ~3x streaming's keys); full ~7 min per 32K window, yarn ~30
# min per 64K window (hence YARN_MAX=32K). With 16 windows per cell
# the whole grid is on the order of 30 CPU-hours, most of it streaming and infllm on books and math. Retrieval: a
# prompt costs about one sharedllm window of its length (~20 s at 8K, ~40 s at 16K, ~5 min at 128K), so ~11 CPU-hours
# with 10 trials, two thirds of it at 128K.
set -euo pipefail
export HF_HUB_OFFLINE=1
# the default adapter (sharedllm.assets.DEFAULT_ADAPTER, relative to here); adapters/smollm2-135m with LD=512 for cross,
# into another RESULTS folder (its cells in $RESULTS/heldout would be refused: another adapter and decoder window)
ADAPTER=${ADAPTER:-$(python -c "import os; from sharedllm.assets import DEFAULT_ADAPTER; print(os.path.relpath(DEFAULT_ADAPTER))")}
LD=${LD:-1024}
WINDOWS=${WINDOWS:-16}
LENGTHS=${LENGTHS:-"4K 8K 16K 32K 64K 128K"}
DOMAINS=${DOMAINS:-"books math code"}
FULL_MAX=${FULL_MAX:-16K}
YARN_MAX=${YARN_MAX:-32K}
MAX_SECONDS=${MAX_SECONDS:-7200}
RESULTS=${RESULTS:-results}
EXTRA=${EXTRA:-}
PASSKEY_LENGTHS=${PASSKEY_LENGTHS:-"8K 16K 32K 64K 128K"}
RULER_LENGTHS=${RULER_LENGTHS:-"16K 32K 128K"}
TRIALS=${TRIALS:-10}
eval_() { echo "+ sharedllm eval $*"; python -m sharedllm eval "$@"; }

# one length at a time, shortest first, every method of it: a stopped grid leaves whole columns behind
ppl() {
  local common length
  for length in $LENGTHS; do
    common=(--domains $DOMAINS --lengths "$length" --max-windows "$WINDOWS" --max-seconds "$MAX_SECONDS"
            --output "$RESULTS/heldout" $EXTRA)
    eval_ heldout --methods sharedllm --adapter "$ADAPTER" "${common[@]}"
    eval_ heldout --methods window streaming infllm --decoder-window "$LD" "${common[@]}"
    eval_ heldout --methods full --max-length "$FULL_MAX" "${common[@]}"
    eval_ heldout --methods yarn --max-length "$YARN_MAX" "${common[@]}"
  done
}

# has_cell TASK LENGTH [RULER_TASK]: sharedllm's cell of that task and length is in $RESULTS/retrieval/ (any trials)
has_cell() {
  python - "$RESULTS" "$@" <<'EOF'
import sys
from sharedllm.evaluation.retrieval_report import load_retrieval
from sharedllm.flags import parse_length
results, task, length, *ruler_task = sys.argv[1:]
cell = (*ruler_task, parse_length(length))  # keyed by the row's label, which names its setting when there are several
sys.exit(0 if any(key[1:] == cell and found["file"]["method"] == "sharedllm"
                  for key, found in load_retrieval(results).get(task, {}).items()) else 1)
EOF
}

# issue 10's retrieval targets for sharedllm, one length (and RULER task) per run into $RESULTS/retrieval/: passkey
# (Landmark, depths 0-100%, $TRIALS per depth) at $PASSKEY_LENGTHS, RULER niah_single / niah_multikey ($TRIALS
# each) at $RULER_LENGTHS. Shortest first; each run journals its trials, so a stopped one continues.
retrieval() {
  local length task out=(--methods sharedllm --adapter "$ADAPTER" --trials "$TRIALS" --output "$RESULTS/retrieval")
  for length in $PASSKEY_LENGTHS; do
    has_cell passkey "$length" || eval_ passkey --lengths "$length" --seed 0 "${out[@]}"
  done
  for task in niah_single niah_multikey; do
    for length in $RULER_LENGTHS; do
      has_cell ruler "$length" "$task" || eval_ ruler --lengths "$length" --tasks "$task" "${out[@]}"
    done
  done
}

smoke() {
  RESULTS=runs/grid-smoke WINDOWS=2 LENGTHS=2K DOMAINS=books ppl
  python -m sharedllm report --results runs/grid-smoke --docs runs/grid-smoke/docs
}

all() {
  ppl
  retrieval
}

"${1:-all}"
