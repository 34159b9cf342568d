"""The shipped selection's verdict per needle from a probe JSON: its chunk among the 8 best (CHUNK_SCORER, default max_prob)
and its leaf among the chunk's 2 best (LEAF_SCORER, default max_prob_chunk).  python summarise_probe.py FILE [CHUNK_SCORER LEAF_SCORER]"""
import json, sys
d = json.load(open(sys.argv[1]))
chunk_scorer, leaf_scorer = (sys.argv[2], sys.argv[3]) if len(sys.argv) > 3 else ("max_prob", "max_prob_chunk")
rows, sel = d["rows"], 0
for r in rows:
    cp, lc = r[f"L20/{chunk_scorer}"], r[f"L20/{leaf_scorer}"]
    ok = cp["chunk_rank"] < 8 and lc["block_rank"] < 2
    sel += ok
    extra = {k: cp[k] for k in cp if k.startswith("distractor")}
    print(r["trial"], "chunk", r["chunk"], "chunk_rank", cp["chunk_rank"], "leaf_rank", lc["block_rank"], "global_leaf_rank", cp["global_block_rank"], "selected" if ok else "LOST", extra)
print(f"{chunk_scorer}/{leaf_scorer}: selected {sel}/{len(rows)}")
