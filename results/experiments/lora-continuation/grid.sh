#!/usr/bin/env bash
# The rest of the headline grid with the candidate (README.md, "The rest of the grid"); two lanes, one thread each.
#   results/experiments/lora-continuation/grid.sh perplexity-16k | multikey-32k | single-32k | passkey-16k
#                                                 | perplexity-32k | passkey-32k | perplexity-64k
#                                                 | perplexity-16k-all | perplexity-128k | passkey-64k | passkey-128k
#                                                 | single-128k | multikey-128k | perplexity-4k | code-long
set -euo pipefail
export HF_HUB_OFFLINE=1
HERE=results/experiments/lora-continuation
# Cells before 2026-12-07 read runs/lora-continuation/more (gitignored, lost with that machine); the package holds the
# same weights, and packaged-check/ shows it scores the 16 books 4K windows exactly as that folder did (promote.py checked it).
READ=(--methods sharedllm --adapter adapters/smollm2-135m-joint-more --decoder-window 1024 --label more --threads 1)
LANES="perplexity-16k, multikey-32k, single-32k, passkey-16k, perplexity-32k, passkey-32k, perplexity-64k,
perplexity-16k-all, perplexity-128k, passkey-64k, passkey-128k, single-128k, multikey-128k, perplexity-4k or code-long"
heldout() {  # LENGTH WINDOWS FOLDER DOMAIN...: one held-out cell per domain, read as the default reads
  local length=$1 windows=$2 folder=$3; shift 3
  for domain in "$@"; do
    python -m sharedllm eval heldout "${READ[@]}" --domains "$domain" --lengths "$length" --max-windows "$windows" \
      --output "$HERE/$folder"
  done
}
case "${1:?$LANES}" in
  perplexity-16k)  # against results/heldout/heldout_*_16384_joint-exercises.json on their first 8 windows
    heldout 16K 8 heldout-16k-test books code math ;;
  multikey-32k)  # against results/retrieval/ruler_joint-exercises_ruler_20261204-230316.json (7/10)
    python -m sharedllm eval ruler "${READ[@]}" --tasks niah_multikey --trials 10 --lengths 32K --output "$HERE/ruler-32k-test" ;;
  single-32k)  # against results/retrieval/ruler_joint-exercises_ruler_20261204-210010.json (10/10)
    python -m sharedllm eval ruler "${READ[@]}" --tasks niah_single --trials 10 --lengths 32K --output "$HERE/ruler-32k-test" ;;
  passkey-16k)  # against results/retrieval/passkey_joint-exercises_landmark_20261204-231540.json (50/50); its journal continues a stopped run
    python -m sharedllm eval passkey "${READ[@]}" --lengths 16K --trials 10 --seed 0 --output "$HERE/passkey-16k" ;;
  perplexity-32k)  # against results/heldout/heldout_{books,math}_32768_joint-exercises.json, all 16 windows (no code test document has 32K)
    heldout 32K 16 heldout-32k-test books math ;;
  perplexity-64k)  # against results/heldout/heldout_{books,math}_65536_joint-exercises.json, all 16 windows
    heldout 64K 16 heldout-64k-test books math ;;
  perplexity-16k-all)  # all 16 windows of results/heldout/heldout_*_16384_joint-exercises.json (perplexity-16k read the first 8)
    heldout 16K 16 heldout-16k-test-16 books code math ;;
  perplexity-4k)  # against results/heldout/heldout_*_4096_joint-exercises.json, all 16 windows (the headline's first column)
    heldout 4K 16 heldout-4k-test books code math ;;
  code-long)  # the headline's code cells at 32K-128K: "not run", no code test document is that long (nothing is scored)
    heldout 32K 16 heldout-32k-test code; heldout 64K 16 heldout-64k-test code; heldout 128K 16 heldout-128k-test code ;;
  perplexity-128k)  # against results/heldout/heldout_{books,math}_131072_joint-exercises.json, all 16 windows (books ran first)
    heldout 128K 16 heldout-128k-test math ;;
  passkey-64k)  # against results/retrieval/passkey_joint-exercises_landmark_20261205-202626.json (50/50)
    python -m sharedllm eval passkey "${READ[@]}" --lengths 64K --trials 10 --seed 0 --output "$HERE/passkey-64k" ;;
  passkey-128k)  # against results/retrieval/passkey_joint-exercises_landmark_20261206-084033.json (50/50)
    python -m sharedllm eval passkey "${READ[@]}" --lengths 128K --trials 10 --seed 0 --output "$HERE/passkey-128k" ;;
  single-128k)  # against results/retrieval/ruler_joint-exercises_ruler_20261204-220819.json (7/10)
    python -m sharedllm eval ruler "${READ[@]}" --tasks niah_single --trials 10 --lengths 128K --output "$HERE/ruler-128k-test" ;;
  multikey-128k)  # against results/retrieval/ruler_joint-exercises_ruler_20261205-234809.json (6/10); its journal continues a stopped run
    python -m sharedllm eval ruler "${READ[@]}" --tasks niah_multikey --trials 10 --lengths 128K --output "$HERE/ruler-128k-test" ;;
  passkey-32k)  # against results/retrieval/passkey_joint-exercises_landmark_20261205-062725.json (50/50); its journal continues a stopped run
    python -m sharedllm eval passkey "${READ[@]}" --lengths 32K --trials 10 --seed 0 --output "$HERE/passkey-32k" ;;
  *) echo "unknown lane $1 ($LANES)" >&2; exit 2 ;;
esac
