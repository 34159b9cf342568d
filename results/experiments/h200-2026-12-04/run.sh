#!/bin/bash
# Device run: rebuild the default model from the carried GGUF parts, then the long evaluations, each under its own
# time limit; results are packed into $OUT after every step so that a cut run still returns what finished.
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 OMP_NUM_THREADS=8 TOKENIZERS_PARALLELISM=false
export SHAREDLLM_HOME=/root/slh
SMOKE=${SMOKE:-0}
BUDGET=${BUDGET:-560}   # seconds this whole script may take
T0=$(date +%s)
log() { echo "[$(( $(date +%s) - T0 ))s] $*"; }
mkdir -p /root/parts "$SHAREDLLM_HOME/models" /root/res
cp .dev/gguf.part* /root/parts/ 2>/dev/null
log "parts: $(ls /root/parts)"
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .dev/*.whl || exit 1
export PYTHONPATH=/tmp/site:$PWD
python3 -c "import torch, transformers, sharedllm; print(torch.__version__, transformers.__version__, torch.cuda.is_available(), sharedllm.__file__)"
tar -xJf .dev/corpora-test.tar.xz -C "$SHAREDLLM_HOME"
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
pack() { (cd /root/res && tar -cf "$OUT/res.tar" .) ; }
step() {  # step SECONDS ARGS...: one `sharedllm eval` under a time limit
  local limit=$1; shift
  local left=$(( BUDGET - ($(date +%s) - T0) - 15 ))
  [ "$left" -lt "$limit" ] && limit=$left
  [ "$limit" -lt 20 ] && { log "skipped (no time): $*"; return; }
  log "start ($limit s): $*"
  timeout "$limit" python3 -m sharedllm eval "$@" 2>&1 | grep -v "it/s\]$" | tail -n 25
  log "end: $*"; pack
}
if [ "$SMOKE" = 1 ]; then
  step 300 passkey --methods sharedllm --lengths 4K --trials 1 --depths 0 0.5 --seed 0 --output /root/res/retrieval
  step 300 ruler --methods sharedllm --lengths 4K --tasks niah_single --trials 1 --split test --seed 0 --output /root/res/retrieval
  step 300 heldout --methods window --domains books --lengths 4K --max-windows 1 --output /root/res/heldout
  exit 0
fi
step 130 passkey --methods sharedllm --lengths 128K --trials 10 --seed 0 --output /root/res/retrieval
step 80 passkey --methods sharedllm --lengths 64K --trials 10 --seed 0 --output /root/res/retrieval
step 90 ruler --methods sharedllm --lengths 128K --tasks niah_single niah_multikey --trials 10 --split test --seed 0 --output /root/res/retrieval
step 45 heldout --methods yarn --domains books math code --lengths 16K --max-windows 16 --output /root/res/heldout
step 45 heldout --methods full --domains math code --lengths 16K --max-windows 16 --output /root/res/heldout
step 120 heldout --methods sharedllm window streaming infllm --adapter adapters/smollm2-135m-joint-exercises --domains books math code --lengths 128K --max-windows 16 --output /root/res/heldout
step 40 passkey --methods sharedllm --lengths 32K --trials 10 --seed 0 --output /root/res/retrieval
log done
