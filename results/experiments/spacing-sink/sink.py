"""Diagnosis only (README.md): `sharedllm eval` with the sink of spaced chunks placed as if the spacing were SINK_G.

    python results/experiments/spacing-sink/sink.py SINK_G eval passkey --chunk-spacing G ...

The chunks read move as `--chunk-spacing G` says; the sink (the attention sink read before the chunks) moves as
`--chunk-spacing SINK_G` would move it: SINK_G = 0 leaves it where the stacked layout has it, just before the last
chunk. Not a library option: it asks which of the two distances loses the depth-1.0 passkeys.
"""

import sys

import sharedllm.modeling as modeling
from sharedllm.cli import main

SINK_G = int(sys.argv.pop(1))
spaced_positions = modeling.spaced_positions


def sink_placed_apart(keys, sink, n_chunks, per_chunk, spacing, rotary_emb):
    moved, _ = spaced_positions(keys, sink, n_chunks, per_chunk, spacing, rotary_emb)
    _, moved_sink = spaced_positions(keys, sink, n_chunks, per_chunk, SINK_G, rotary_emb)
    return moved, moved_sink


modeling.spaced_positions = sink_placed_apart
main(sys.argv[1:])
