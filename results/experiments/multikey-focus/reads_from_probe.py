"""Which needles' chunks a reading configuration reads, offline, from a niah_multikey probe file of
`../tree-selection/probe_needle_rank.py` (its recorded chunk scores; only the prompts are rebuilt, no model run).

A configuration is a list of (scorer, count) rankings read as `sharedllm.tree.union_order` reads them: the count best
chunks under the first scorer, then the count best others under the next, and so on. For each prompt it prints
whether the asked key's chunk is read and how many other keys' needle chunks are read with it.

    python results/experiments/multikey-focus/reads_from_probe.py \
        results/experiments/tree-selection/layers-16k-multikey-validation-10.json
"""

import json
import sys

import torch

from sharedllm.evaluation.needle import load_haystack, make_sample
from sharedllm.loading import DEFAULT_BASE, load_tokenizer, resolve_base_path
from sharedllm.tree import union_order

sys.path.insert(0, "results/experiments/tree-selection")
from probe_needle_rank import other_needles  # noqa: E402

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


def chunk_scores(row, scorer):
    return torch.tensor(row[scorer]["chunk_scores"], dtype=torch.float)


def main(path):
    probe = json.load(open(path))
    args = probe["args"]
    tokenizer = load_tokenizer(resolve_base_path(DEFAULT_BASE))
    haystack = load_haystack(args["split"], args["domains"])
    chunk_size = 512
    prompts = {}
    for row in probe["rows"]:
        sample = make_sample(args["task"], tokenizer, args["length"], f"0/{row['trial']}", haystack)
        encoded = tokenizer(sample.prompt, return_offsets_mapping=True)
        n_context = row["n_chunks"] * chunk_size  # the probe's context length (whole chunks)
        prompts[row["trial"]] = [c for c, _ in other_needles(sample, encoded, chunk_size, n_context)]
    for name, rankings in CONFIGS.items():
        cells = []
        for row in probe["rows"]:
            scored = [(chunk_scores(row, s)[None], n) for s, n in rankings]
            order = union_order(scored)[0]
            read = set(order[: sum(n for _, n in rankings)].tolist())
            others = prompts[row["trial"]]
            cells.append((row["chunk"] in read, sum(c in read for c in others), len(others)))
        asked = sum(a for a, _, _ in cells)
        clean = sum(a and d == 0 for a, d, _ in cells)
        print(f"{name:48s} asked read {asked}/{len(cells)}, asked read with no other key's needle {clean}/{len(cells)};"
              f" per prompt (asked, others read / others in context): "
              + " ".join(f"{'Y' if a else 'n'}{d}/{t}" for a, d, t in cells))


if __name__ == "__main__":
    main(sys.argv[1])
