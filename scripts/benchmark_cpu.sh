#!/usr/bin/env bash
# The command behind results/bench-cpu.json and docs/figures/bench_*.png (2-core CPU, fp32, 2 torch threads,
# nothing else running: about 25 minutes, plus infllm's cells, which the committed run predates). full / streaming /
# infllm / cepe stop at 32K, where every comparative target is judged; sharedllm and window go on to 128K for the
# length-scaling targets.
#   scripts/benchmark_cpu.sh --overwrite    # replaces results/bench-cpu.json and docs/figures/bench_*.png (bench refuses
#   to replace an existing result without it), or pass --output DIR --figures DIR to write elsewhere
# The committed run was made from a checkout of commit 129c176 (the code measured) with
#   --output /tmp/benchout/bench-cpu.json --figures /tmp/benchout/figures, then copied here (--output is now a
# folder: /tmp/benchout). It used the cross adapter's knobs (adapters/smollm2-135m, the default then) (C 256, Ld 512, M 4, D 3, P 16), given here
# explicitly so that the grid is the same without the adapter (the config defaults are C 512, Ld 1024, P 32).
set -euo pipefail
export HF_HUB_OFFLINE=1
python -m sharedllm bench --lengths 4K 8K 16K 32K 64K 128K --max-length full=32K streaming=32K infllm=32K cepe=32K \
  --repeats 3 --threads 2 --cell-seconds 30 --max-seconds 900 \
  --adapter adapters/smollm2-135m --chunk-size 256 --decoder-window 512 --n-injected-layers 4 --tree-depth 3 \
  --tokens-per-node 16 "$@"
