#!/usr/bin/env bash
# The command behind results/bench-cpu.json and docs/figures/bench_*.png (2-core CPU, fp32, 1 torch thread:
# under load 1 thread is far steadier than 2; see docs/benchmark.md). full / streaming / cepe are capped at 32K.
set -euo pipefail
HF_HUB_OFFLINE=1 python -m sharedllm bench --lengths 4K 16K 32K 64K 128K \
  --max-length full=32K streaming=32K cepe=32K --repeats 1 --threads 1 --cell-seconds 30 --max-seconds 600 "$@"
