"""Needles a selection keeps at a given budget, from the raw scores `probe_needle_rank.py --query-tokens 32` records
(section 8 of README.md). A needle is kept when its chunk is among those read and its 64-token leaf among its
chunk's exact ones.

  union F k + S m:  F's k chunks plus the m best others under S; leaves: F's 2 plus S's best other. F: `last` (the
                    query token's ranking, best of all heads) or `dlast` (debiased); S: `q32` (the best of the last 32
                    tokens' queries), `h6q32` (head 6 alone over them, needs --per-head) or `dq32` (debiased).
                    `last 8 + q32 m` is the library's query_tokens 32, query_chunks m; `*_c`: debiased chunk ranking,
                    leaves as shipped.
  F alone, k = n:   F's ranking alone, n chunks, its 3 best leaves (the union's leaf budget).

Rankings a probe file did not record are skipped.

    python summarise_budget.py debias-128k-validation-math-5.json
"""

import json
import sys

from summarise_combinations import kept_by

LAYER = "L20"
SCORERS = {"last": ("max_prob", "max_prob_chunk"), "q32": ("max_prob_q32", "max_prob_chunk_q32"),
           "h6": ("head6", "head6_chunk"), "h6q32": ("head6_q32", "head6_chunk_q32"),
           "dlast": ("max_prob_debias", "max_prob_debias_chunk"), "dq32": ("max_prob_debias_q32", "max_prob_debias_chunk_q32"),
           # debiased chunk ranking, leaves as shipped (a library can rank chunks after every pass; leaves are chosen
           # inside each pass, before the mean over all chunks is known)
           "dlast_c": ("max_prob_debias", "max_prob_chunk"), "dq32_c": ("max_prob_debias_q32", "max_prob_chunk_q32")}
# (k, m, first ranking, second ranking): first's k chunks and second's m best others (second None: first alone)
BUDGETS = [(8, m, "last", "q32") for m in (2, 4, 8, 16)] + [(8, m, "last", "h6q32") for m in (2, 8)] + \
          [(8, 2, "last", "dq32"), (8, 2, "dlast", "dq32"), (8, 2, "dlast", "q32")] + \
          [(8, 2, "dlast_c", "dq32_c"), (8, 2, "last", "dq32_c")] + \
          [(k, 0, "last", None) for k in (10, 16, 32, 64)] + [(10, 0, "dlast", None)]


def rank(row, scorer):
    """The needle chunk's rank under the ranking's chunk scorer, as the probe recorded it."""
    return row[f"{LAYER}/{SCORERS[scorer][0]}"]["chunk_rank"]


def main():
    for path in sys.argv[1:]:
        rows = json.load(open(path))["rows"]
        print(f"{path}: {len(rows)} needles in context, {rows[0]['n_chunks']} chunks")
        print(f"{'needle chunk rank':28s}", " ".join(f"{r['trial']:>4d}" for r in rows))
        recorded = [s for s in SCORERS if all(f"{LAYER}/{name}" in rows[0] for name in SCORERS[s])]
        for scorer in recorded:
            print(f"{scorer:28s}", " ".join(f"{rank(r, scorer):>4d}" for r in rows))
        for k, m, first, other in BUDGETS:
            if first not in recorded or other not in recorded + [None]:
                continue
            label = f"union {first} {k} + {other} {m}" if other else f"{first} alone, k = {k}"
            hits = [r["trial"] for r in rows if kept_by(r, SCORERS[first], SCORERS.get(other), k, m)]
            print(f"{label:28s} {len(hits)}/{len(rows)} kept (trials {hits})")


if __name__ == "__main__":
    main()
