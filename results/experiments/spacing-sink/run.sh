#!/usr/bin/env bash
# The sink's placement under spaced chunks (README.md), from the project root:
#   bash results/experiments/spacing-sink/run.sh passkey SINK_G G   # the two depth-1.0 prompts at 8K
#   bash results/experiments/spacing-sink/run.sh ppl SINK_G G DOMAIN # validation 8K perplexity, 16 windows
# 2-core CPU, one thread per run.
set -euo pipefail
# The adapter is the default of the time, named since the default changed (2026-12-07).
export HF_HUB_OFFLINE=1
OUT=results/experiments/spacing-sink
SINK_G=${2:?sink spacing}
G=${3:?chunk spacing}
EVAL=(python "$OUT/sink.py" "$SINK_G" eval)
ARM=(--methods sharedllm --adapter adapters/smollm2-135m-joint-exercises --label "g$G-sink$SINK_G" --chunk-spacing "$G" --threads 1 --output "$OUT")
case "${1:?passkey or ppl}" in
  passkey) "${EVAL[@]}" passkey "${ARM[@]}" --lengths 8K --depths 1.0 --trials 2 --seed 0 ;;
  ppl) "${EVAL[@]}" heldout "${ARM[@]}" --split validation --max-windows 16 --lengths 8K --domains "${4:?domain}" ;;
  *) echo "passkey or ppl" >&2; exit 2 ;;
esac
