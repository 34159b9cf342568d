"""Section 9 of README.md: where the 32 queries rank the needle's chunk at each probed layer, and the needles two
unions keep (chunk read, 64-token leaf exact), from `probe_needle_rank.py --layers ... --query-tokens 32` files.

  union, Q tokens at L:       the shipped union (query token at layer 20: k = 8 chunks, 2 leaves; the 32 queries:
                              m = 2 more chunks and 1 more leaf) with the 32 queries' chunks AND leaf scored at L;
  union, Q chunks at L:       the same with only the 32 queries' chunks scored at L, their leaf at layer 20 (the
                              library's `query_layer L`);
  asked key first:            niah_multikey probes: the 32 queries rank the asked key's needle's chunk above every
                              other planted key's.

    python summarise_layers.py layers-128k-validation-math-10.json layers-16k-validation-math-10.json
"""

import json
import sys

from summarise_combinations import K, kept_by

M = 2  # the 32 queries' chunks (query_chunks), as shipped


def kept(row, chunk_layer, leaf_layer):
    """The shipped union (query token at layer 20) with the 32 queries' chunks ranked at chunk_layer and their leaf
    at leaf_layer."""
    return kept_by(row, ("max_prob", "max_prob_chunk"),
                   (f"L{chunk_layer}/max_prob_q32", f"L{leaf_layer}/max_prob_chunk_q32"), K, M)


def main():
    for path in sys.argv[1:]:
        probe = json.load(open(path))
        rows, layers = probe["rows"], probe["args"]["layers"]
        print(f"{path}: {len(rows)} needles in context, {rows[0]['n_chunks']} chunks; trials {[r['trial'] for r in rows]}")
        for layer in layers:
            ranks = [row[f"L{layer}/max_prob_q32"]["chunk_rank"] for row in rows]
            both = [row["trial"] for row in rows if kept(row, layer, layer)]
            chunks = [row["trial"] for row in rows if kept(row, layer, 20)]
            line = (f"  L{layer:<2d} 32 queries' chunk ranks {ranks}; union, Q tokens at L{layer}: {len(both)}/{len(rows)}; "
                    f"Q chunks at L{layer}: {len(chunks)}/{len(rows)} (trials {chunks})")
            scores = [row[f"L{layer}/max_prob_q32"] for row in rows]
            if "distractor_chunk_rank" in scores[0]:
                first = sum(s["chunk_rank"] < s["distractor_chunk_rank"] for s in scores)
                line += f"; asked key first: {first}/{len(rows)}"
            print(line)


if __name__ == "__main__":
    main()
