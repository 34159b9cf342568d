"""Needles the selection keeps under combinations of two probe scorers (from the raw scores that
`probe_needle_rank.py` records), k = 8 chunks and 2 exact leaves as shipped. A needle is kept when its chunk is
among the k read and its 64-token leaf among its chunk's 2 exact ones.

  single A:     A's ranking alone (A's leaf scorer for leaves).
  split A B:    the top k/2 chunks of each ranking (k/2 + k/2, then filled from A's ranking until k distinct),
                leaves: the best leaf of each, then filled from A's.
  rrf A B:      reciprocal rank fusion, 1 / (60 + rank) summed over A and B (the usual constant), chunks and leaves.
  union+m A B:  a bigger budget: A's k chunks plus B's m best chunks not among them (k + m read); leaves: A's 2
                plus B's best if not among them (3 exact where they differ). `single` at k + m is its control.

The combinations were fixed before their results were read (section 6 of README.md).

    python summarise_combinations.py qmulti-16k-validation-books-10.json qmulti-16k-validation-math-10.json
"""

import json
import sys

K, LEAVES = 8, 2
# (chunk scorer, leaf scorer) pairs: the shipped last-token one, and the several-query ones
PAIRS = {"last": ("max_prob", "max_prob_chunk")} | {
    f"{agg}{n}": (f"{agg}_prob_q{n}", f"{agg}_prob_chunk_q{n}") for agg in ("max", "mean") for n in (8, 16, 32)}
COMBINATIONS = [("single", name, None) for name in PAIRS] + [
    (mode, "last", other) for mode in ("split", "rrf") for other in ("max8", "max16", "max32", "mean8", "mean32")]
# added after the test run of section 6 (a bigger budget; chosen on validation only): k + m chunks read
UNIONS = [(m, other) for m in (2, 4) for other in ("max16", "max32")]


def order(scores):
    return sorted(range(len(scores)), key=lambda i: -scores[i])


def pick(scores_a, scores_b, mode, k):
    """Indices of the k items a combination keeps."""
    a = order(scores_a)
    if mode == "single":
        return set(a[:k])
    b = order(scores_b)
    if mode == "split":
        kept = set(a[: k // 2]) | set(b[: k // 2])
        for i in a:
            if len(kept) >= k:
                break
            kept.add(i)
        return kept
    rank_a, rank_b = {i: r for r, i in enumerate(a)}, {i: r for r, i in enumerate(b)}
    fused = [1 / (60 + rank_a[i]) + 1 / (60 + rank_b[i]) for i in range(len(scores_a))]
    return set(order(fused)[:k])


def union(scores_a, scores_b, k, m):
    kept = set(order(scores_a)[:k])
    return kept | set([i for i in order(scores_b) if i not in kept][:m])


def scorer_key(scorer):
    """A probe row's key of a scorer: layer 20's unless the name says its layer ("L17/max_prob_q32")."""
    return scorer if "/" in scorer else f"L20/{scorer}"


def kept_by(row, first, second=None, k=K, m=0):
    """Whether a selection keeps the needle (its chunk read, its 64-token leaf exact); first, second: (chunk scorer,
    leaf scorer), each a scorer of layer 20 or one of another probed layer named "L<layer>/<scorer>". With second,
    the library's union (`query_chunks` m): first's k chunks plus second's m best others, first's LEAVES leaves plus
    second's best other. Without, first alone: k chunks, LEAVES + 1 leaves (the union's leaf budget)."""
    chunk_a, leaf_a = (row[scorer_key(s)] for s in first)
    if second is None:
        chunks = set(order(chunk_a["chunk_scores"])[:k])
        leaves = set(order(leaf_a["needle_chunk_block_scores"])[:LEAVES + 1])
    else:
        chunk_b, leaf_b = (row[scorer_key(s)] for s in second)
        chunks = union(chunk_a["chunk_scores"], chunk_b["chunk_scores"], k, m)
        leaves = union(leaf_a["needle_chunk_block_scores"], leaf_b["needle_chunk_block_scores"], LEAVES, 1)
    return row["chunk"] in chunks and row["span"][0] // 64 in leaves


def kept_needle(row, mode, first, second):
    chunk_a, leaf_a = (row[f"L20/{s}"] for s in PAIRS[first])
    chunk_b, leaf_b = (row[f"L20/{s}"] for s in PAIRS[second]) if second else (chunk_a, leaf_a)
    chunks = pick(chunk_a["chunk_scores"], chunk_b["chunk_scores"], mode, K)
    needle_leaf = row["span"][0] // 64
    leaves = pick(leaf_a["needle_chunk_block_scores"], leaf_b["needle_chunk_block_scores"], mode, LEAVES)
    return row["chunk"] in chunks and needle_leaf in leaves


def main():
    files = sys.argv[1:]
    rows = {f: json.load(open(f))["rows"] for f in files}
    print(f"{'combination':24s}", " ".join(f"{f.split('/')[-1][:28]:>28s}" for f in files))
    for mode, first, second in COMBINATIONS:
        label = f"{mode} {first}" + (f" {second}" if second else "")
        cells = []
        for f in files:
            kept = [r["trial"] for r in rows[f] if kept_needle(r, mode, first, second)]
            cells.append(f"{len(kept)}/{len(rows[f])}")
        print(f"{label:24s}", " ".join(f"{c:>28s}" for c in cells))
    for m, other in UNIONS:
        cells = [f"{sum(kept_by(r, PAIRS['last'], PAIRS[other], K, m) for r in rows[f])}/{len(rows[f])}" for f in files]
        print(f"{f'union+{m} last {other}':24s}", " ".join(f"{c:>28s}" for c in cells))
    for m in (2, 4):
        cells = [f"{sum(kept_by(r, PAIRS['last'], k=K + m) for r in rows[f])}/{len(rows[f])}" for f in files]
        print(f"{f'single last k={K + m}, 3 leaves':24s}", " ".join(f"{c:>28s}" for c in cells))


if __name__ == "__main__":
    main()
