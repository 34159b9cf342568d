"""Which needles' chunks a reading configuration reads, offline, from a niah_multikey probe file of
`../tree-selection/probe_needle_rank.py` (its recorded chunk scores; only the prompts are rebuilt, no model run).

A configuration is a list of (scorer, count) rankings read as `sharedllm.tree.union_order` reads them: the count best
chunks under the first scorer, then the count best others under the next, and so on. For each prompt it prints
whether the asked key's chunk is read and how many other keys' needles are read with it (a needle whose value
crosses a chunk border counts as read when either of its chunks is; the probe's own `other_needles` skips such
needles, which made its recorded `distractor_chunk_rank` miss them). It also prints, per layer, in how many prompts
the 32 queries rank the asked key's chunk above every other key's needle chunk.

    python results/experiments/multikey-focus/reads_from_probe.py \
        results/experiments/tree-selection/layers-16k-multikey-validation-10.json
"""

import json
import re
import sys

import torch

from sharedllm.evaluation.needle import load_haystack, make_sample
from sharedllm.loading import DEFAULT_BASE, load_tokenizer, resolve_base_path
from sharedllm.tree import union_order

CONFIGS = {
    "default (qt L20 x8, q32 L20 x2, q32 L17 x2)": [("L20/max_prob", 8), ("L20/max_prob_q32", 2), ("L17/max_prob_q32", 2)],
    "union (qt L20 x8, q32 L20 x2)": [("L20/max_prob", 8), ("L20/max_prob_q32", 2)],
    "qt L20 x2, q32 L20 x1, q32 L17 x1": [("L20/max_prob", 2), ("L20/max_prob_q32", 1), ("L17/max_prob_q32", 1)],
    "qt L20 x1, q32 L20 x1, q32 L17 x1": [("L20/max_prob", 1), ("L20/max_prob_q32", 1), ("L17/max_prob_q32", 1)],
    "q32 L17 x1": [("L17/max_prob_q32", 1)],
    "q32 L17 x2": [("L17/max_prob_q32", 2)],
    "q32 L20 x1, q32 L17 x1": [("L20/max_prob_q32", 1), ("L17/max_prob_q32", 1)],
    "q32 L17 x4": [("L17/max_prob_q32", 4)],
    "q32 L20 x2, q32 L17 x2": [("L20/max_prob_q32", 2), ("L17/max_prob_q32", 2)],
    "q32 L20 x3, q32 L17 x3": [("L20/max_prob_q32", 3), ("L17/max_prob_q32", 3)],
    "qt L20 x1, q32 L20 x2, q32 L17 x2": [("L20/max_prob", 1), ("L20/max_prob_q32", 2), ("L17/max_prob_q32", 2)],
}


def other_needle_chunks(sample, offsets, chunk_size, n_context) -> list[set[int]]:
    """Per other key's needle in the context, the chunks its value's tokens lie in (two when a border cuts it)."""
    found = []
    for match in re.finditer(r"One of the special magic numbers for .+? is: (\d+)\.", sample.prompt):
        if match.group(1) in sample.golds:
            continue
        a, b = match.span(1)
        chunks = {i // chunk_size for i, (x, y) in enumerate(offsets) if x < b and y > a and i < n_context}
        if chunks:
            found.append(chunks)
    return found


def chunk_scores(row, scorer):
    return torch.tensor(row[scorer]["chunk_scores"], dtype=torch.float)


def main(path):
    probe = json.load(open(path))
    args = probe["args"]
    tokenizer = load_tokenizer(resolve_base_path(DEFAULT_BASE))
    haystack = load_haystack(args["split"], args["domains"])
    chunk_size = 512
    others = {}
    for row in probe["rows"]:
        sample = make_sample(args["task"], tokenizer, args["length"], f"0/{row['trial']}", haystack)
        offsets = tokenizer(sample.prompt, return_offsets_mapping=True)["offset_mapping"]
        n_context = row["n_chunks"] * chunk_size  # the probe's context length (whole chunks)
        others[row["trial"]] = other_needle_chunks(sample, offsets, chunk_size, n_context)
    for name, rankings in CONFIGS.items():
        cells = []
        for row in probe["rows"]:
            scored = [(chunk_scores(row, s)[None], n) for s, n in rankings]
            read = set(union_order(scored)[0, : sum(n for _, n in rankings)].tolist())
            needles = others[row["trial"]]
            cells.append((row["chunk"] in read, sum(bool(c & read) for c in needles), len(needles)))
        asked = sum(a for a, _, _ in cells)
        clean = sum(a and d == 0 for a, d, _ in cells)
        print(f"{name:48s} asked read {asked}/{len(cells)}, asked read with no other key's needle {clean}/{len(cells)};"
              f" per prompt (asked, others read / others in context): "
              + " ".join(f"{'Y' if a else 'n'}{d}/{t}" for a, d, t in cells))
    for layer in args["layers"]:
        above = 0
        for row in probe["rows"]:
            scores = chunk_scores(row, f"L{layer}/max_prob_q32")
            above += all(max(scores[c] for c in chunks) < scores[row["chunk"]] for chunks in others[row["trial"]])
        print(f"layer {layer}: the 32 queries rank the asked key's chunk above every other key's needle in "
              f"{above}/{len(probe['rows'])} prompts")


if __name__ == "__main__":
    main(sys.argv[1])
