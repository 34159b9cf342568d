#!/usr/bin/env bash
# The commands behind results/bench-cpu*.json and docs/figures/bench_*.png (2-core CPU, fp32, 1 torch thread:
# under load 1 thread is far steadier than 2; see docs/benchmark.md).
#   full grid (about 20 minutes on a quiet 2-core CPU; full / streaming / cepe capped at 32K):
#     scripts/benchmark_cpu.sh grid
#   SharedLLM's length scaling alone (a few minutes):
#     scripts/benchmark_cpu.sh long
# The committed results/bench-cpu.json is the grid stopped after its 16K cells (session time budget; the machine
# was shared with evaluation jobs), and results/bench-cpu-long.json is `long`.
set -euo pipefail
export HF_HUB_OFFLINE=1
case "${1:?usage: $0 grid|long}" in
  grid) python -m sharedllm bench --lengths 4K 16K 32K 64K 128K --max-length full=32K streaming=32K cepe=32K \
          --repeats 1 --threads 1 --cell-seconds 30 --max-seconds 600 ;;
  long) python -m sharedllm bench --methods sharedllm window --lengths 32K 64K 128K --repeats 1 --threads 1 \
          --cell-seconds 30 --output results/bench-cpu-long.json --figures docs/figures/long ;;
esac
