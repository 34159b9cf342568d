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

from summarise_combinations import union

SCORING_LAYER, K, M, LEAVES = 20, 8, 2, 2


def kept(row, chunk_layer, leaf_layer):
    query_chunks = row[f"L{SCORING_LAYER}/max_prob"]["chunk_scores"]
    query_leaves = row[f"L{SCORING_LAYER}/max_prob_chunk"]["needle_chunk_block_scores"]
    several_chunks = row[f"L{chunk_layer}/max_prob_q32"]["chunk_scores"]
    several_leaves = row[f"L{leaf_layer}/max_prob_chunk_q32"]["needle_chunk_block_scores"]
    return (row["chunk"] in union(query_chunks, several_chunks, K, M)
            and row["span"][0] // 64 in union(query_leaves, several_leaves, LEAVES, 1))


def main():
    for path in sys.argv[1:]:
        probe = json.load(open(path))
        rows, layers = probe["rows"], probe["args"]["layers"]
        print(f"{path}: {len(rows)} needles in context, {rows[0]['n_chunks']} chunks; trials {[r['trial'] for r in rows]}")
        for layer in layers:
            ranks = [row[f"L{layer}/max_prob_q32"]["chunk_rank"] for row in rows]
            both = [row["trial"] for row in rows if kept(row, layer, layer)]
            chunks = [row["trial"] for row in rows if kept(row, layer, SCORING_LAYER)]
            line = (f"  L{layer:<2d} 32 queries' chunk ranks {ranks}; union, Q tokens at L{layer}: {len(both)}/{len(rows)}; "
                    f"Q chunks at L{layer}: {len(chunks)}/{len(rows)} (trials {chunks})")
            scores = [row[f"L{layer}/max_prob_q32"] for row in rows]
            if "distractor_chunk_rank" in scores[0]:
                first = sum(s["chunk_rank"] < s["distractor_chunk_rank"] for s in scores)
                line += f"; asked key first: {first}/{len(rows)}"
            print(line)


if __name__ == "__main__":
    main()
