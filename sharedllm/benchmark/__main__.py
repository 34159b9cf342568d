"""A benchmark cell in a fresh process: `python -m sharedllm.benchmark --bench-worker SPEC OUT` (grid.py starts it)."""

import sys

from .grid import WORKER_FLAG, worker_main

if len(sys.argv) == 4 and sys.argv[1] == WORKER_FLAG:
    worker_main(sys.argv[2], sys.argv[3])
else:
    sys.exit(f"{sys.argv[0]}: internal entry of `sharedllm bench` cells; run `sharedllm bench`")
