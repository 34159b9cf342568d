#!/bin/bash
# Device run (2026-12-04, second lease): rebuild the default model from the carried GGUF parts, then each step under
# its own time limit; results packed into $OUT after every step so that a cut run still returns what finished.
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 OMP_NUM_THREADS=8 TOKENIZERS_PARALLELISM=false
export SHAREDLLM_HOME=/root/slh
BUDGET=${BUDGET:-585}   # seconds this whole script may take
T0=$(date +%s)
log() { echo "[$(( $(date +%s) - T0 ))s] $*"; }
mkdir -p /root/parts "$SHAREDLLM_HOME/models" /root/res/heldout /root/res/retrieval /root/res/probe
cp .dev/gguf.part2 /root/parts/
log "parts: $(ls /root/parts | tr '\n' ' ')"
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .dev/*.whl || exit 1
export PYTHONPATH=/tmp/site:$PWD
python3 -c "import torch, transformers, sharedllm; print(torch.__version__, transformers.__version__, torch.cuda.is_available(), sharedllm.__file__)"
tar -xJf .dev/corpora-test.tar.xz -C "$SHAREDLLM_HOME"
tar -xJf .dev/corpora-validation.tar.xz -C "$SHAREDLLM_HOME"
cp .dev/journals/.heldout_* /root/res/heldout/
G=/root/gguf/SmolLM2-135M-Instruct.Q4_1.gguf
mkdir -p /root/gguf && cat /root/parts/gguf.part0 /root/parts/gguf.part1 /root/parts/gguf.part2 > $G
sha256sum $G | grep -q b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53 || { log "GGUF parts missing or wrong"; ls -la /root/parts; exit 2; }
python3 - <<'PYEND' || exit 1
import json, time
from pathlib import Path
from sharedllm import assets
out = assets.sharedllm_home() / "models" / assets.MODEL_NAME
if not (out / assets.STAMP_FILE).exists():
    assets._convert_gguf(Path("/root/gguf/SmolLM2-135M-Instruct.Q4_1.gguf"), out)
    stamp = {"package": assets.MODEL_PACKAGE, "gguf_sha256": assets.MODEL_GGUF_SHA256, "built": time.strftime("%F %T")}
    (out / assets.STAMP_FILE).write_text(json.dumps(stamp, indent=1) + "\n")
print("model at", out)
PYEND
log "model ready"
pack() { (cd /root/res && tar -cf "$OUT/res.tar" heldout retrieval); (cd /root/res/probe && for f in *.json; do [ -f "$f" ] && gzip -c "$f" > "$OUT/$f.gz"; done) 2>/dev/null; }
left() { echo $(( BUDGET - ($(date +%s) - T0) - 15 )); }
run_step() {  # run_step SECONDS COMMAND...: one command under a time limit (cut to what the budget has left)
  local limit=$1; shift
  local l=$(left); [ "$l" -lt "$limit" ] && limit=$l
  [ "$limit" -lt 20 ] && { log "skipped (no time): $*"; return; }
  log "start ($limit s): $*"
  timeout "$limit" "$@" 2>&1 | grep -v "it/s\]$" | grep -v "^Loading weights" | cut -c1-400 | tail -n 30
  log "end: $*"; pack
}
step() { local limit=$1; shift; run_step "$limit" python3 -m sharedllm eval "$@"; }
P=results/experiments/tree-selection/probe_needle_rank.py
run_step 130 python3 $P --length 131072 --trials 10 --domains math --layers 8 11 14 17 20 23 26 29 --query-tokens 32 --output /root/res/probe/layers-128k-validation-math-10.json
step 140 ruler --methods sharedllm --lengths 128K --tasks niah_multikey --trials 10 --split test --seed 0 --output /root/res/retrieval
step 45 heldout --methods yarn --domains code --lengths 16K --max-windows 16 --output /root/res/heldout
step 70 heldout --methods sharedllm --domains books math code --lengths 32K 64K --max-windows 16 --output /root/res/heldout
step 25 heldout --methods window --domains books math code --lengths 32K 64K --max-windows 16 --output /root/res/heldout
step 120 heldout --methods yarn --domains books math code --lengths 32K --max-windows 16 --output /root/res/heldout
step 300 heldout --methods streaming --domains books --lengths 128K --max-windows 16 --output /root/res/heldout
log done
