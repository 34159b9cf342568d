"""Per-head selection from a `probe_needle_rank.py --per-head` JSON: for each scorer (the shipped best-of-heads
`max_prob`, each head alone `headH`, and their `_q32` forms), how many needles it selects (chunk among the K best and
leaf among its chunk's 2 best) and the needle chunk's mean rank; then the shipped ranking's union with each head's
(its K chunks plus the head's best M others, as `query_chunks` adds them).

    python summarise_heads.py FILE [FILE ...]   (K = 8, M = 2)
"""
import json
import sys

from summarise_combinations import K, LEAVES, kept_by  # the same union as section 6 (run from this folder)

M = 2


def verdict(row, chunk_scorer, leaf_scorer):
    cp, lc = row[f"L20/{chunk_scorer}"], row[f"L20/{leaf_scorer}"]
    return cp["chunk_rank"] < K and lc["block_rank"] < LEAVES, cp["chunk_rank"]


rows = [r for f in sys.argv[1:] for r in json.load(open(f))["rows"]]
names = sorted({k.split("/", 1)[1] for r in rows for k in r if k.startswith("L20/")})
print(f"{len(rows)} needles in context from {', '.join(sys.argv[1:])}")
print(f"{'chunk scorer':22s} {'leaf scorer':22s} selected  mean chunk rank")
for chunk_scorer in [n for n in names if n.startswith("max_prob") and "flat" not in n and "chunk" not in n
                     or n.startswith("head") and "_chunk" not in n]:
    leaf_scorer = ("max_prob_chunk" + chunk_scorer[len("max_prob"):]) if chunk_scorer.startswith("max_prob") else \
        chunk_scorer.replace("_q", "_chunk_q") if "_q" in chunk_scorer else chunk_scorer + "_chunk"
    if f"L20/{leaf_scorer}" not in rows[0]:
        continue
    results = [verdict(r, chunk_scorer, leaf_scorer) for r in rows]
    print(f"{chunk_scorer:22s} {leaf_scorer:22s} {sum(ok for ok, _ in results):3d}/{len(rows)}   "
          f"{sum(rank for _, rank in results) / len(rows):6.2f}   ranks {[rank for _, rank in results]}")
print("\nunions (K + 2 chunks read, 2 + 1 exact leaves), by pair")
pairs = {"last": ("max_prob", "max_prob_chunk"), "q32": ("max_prob_q32", "max_prob_chunk_q32")}
pairs |= {f"h{h}": (f"head{h}", f"head{h}_chunk") for h in range(9)} | \
    {f"h{h}q32": (f"head{h}_q32", f"head{h}_chunk_q32") for h in range(9)}
for base, extra in [("last", "q32")] + [(b, f"h{h}q32") for h in range(9) for b in ("last", f"h{h}")]:
    hits = [kept_by(r, pairs[base], pairs[extra], K, M) for r in rows]
    print(f"  {base:5s} + {extra:6s} {sum(hits)}/{len(rows)}  lost trials {[r['trial'] for r, h in zip(rows, hits) if not h]}")
