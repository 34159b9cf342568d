#!/bin/bash
# A second call on the same warm machine: the model, corpora, wheels and /root/res of run.sh are still there.
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 OMP_NUM_THREADS=8 TOKENIZERS_PARALLELISM=false
export SHAREDLLM_HOME=/root/slh PYTHONPATH=/tmp/site:$PWD
BUDGET=${BUDGET:-200}
T0=$(date +%s)
log() { echo "[$(( $(date +%s) - T0 ))s] $*"; }
pack() { (cd /root/res && tar -cf "$OUT/res.tar" heldout retrieval); }
left() { echo $(( BUDGET - ($(date +%s) - T0) - 10 )); }
step() {
  local limit=$1; shift
  local l=$(left); [ "$l" -lt "$limit" ] && limit=$l
  [ "$limit" -lt 20 ] && { log "skipped (no time): $*"; return; }
  log "start ($limit s): $*"
  timeout "$limit" python3 -m sharedllm eval "$@" 2>&1 | grep -v "it/s\]$" | grep -v "^Loading weights" | cut -c1-400 | tail -n 30
  log "end: $*"; pack
}
ls /root/res/heldout /root/res/retrieval
step 120 heldout --methods yarn --domains books math code --lengths 32K --max-windows 16 --output /root/res/heldout
step 300 heldout --methods streaming --domains books --lengths 128K --max-windows 16 --output /root/res/heldout
log done
