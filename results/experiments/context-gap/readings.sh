# The knob flags of this folder's readings, written once (sourced by run.sh, test.sh and bench.sh).
# every token of every chunk read kept (no tree: one node of 512 positions per chunk), the default's chunk ranking
EXACT=(--tree-depth 0 --selected-leaves none --tokens-per-node 512 --leaf-tokens-per-node 512)
SPACED=(--chunk-spacing 512)  # the chunks read side by side in their text order, as one text of 12 x 512 tokens
