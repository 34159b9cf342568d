"""Which layer's own attention should joint injection's tree selection score with? Calibrated on the training
retrieval exercises (`data.plant_retrieval_facts`: "Note: the code of X is N." planted in train-split books, a
question at the end), never on the passkey or RULER templates. Per layer: how often the tree's path (D halvings)
reaches the leaf holding the answer's first token, and how often the answer's chunk ranks first among all chunks
by its best token. Usage: python calibrate_layer.py --length 16384 --samples 8"""

import argparse
import json

import numpy as np
import torch
from layer_scores import layer_logits, path_reaches, uncompressed_joint

from sharedllm.assets import default_model_path, load_documents
from sharedllm.data import plant_retrieval_facts
from sharedllm.loading import load_causal_lm


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--length", type=int, default=16384)
    p.add_argument("--samples", type=int, default=8)
    p.add_argument("--tree-depth", type=int, default=3)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--output", default=None)
    args = p.parse_args()
    torch.set_grad_enabled(False)
    base, tok = load_causal_lm(default_model_path())
    model = uncompressed_joint(base)
    C, Ld, L = model.config.chunk_size, model.config.decoder_window, args.length
    rng = np.random.default_rng(args.seed)
    books = [np.array(tok.encode(doc.text)) for doc in load_documents("train", ["books"])]
    books = [b for b in books if len(b) > L]
    n = -(-(L - Ld) // C)
    stats = [{"path": 0, "chunk_top1": 0} for _ in range(base.config.num_hidden_layers)]
    for _ in range(args.samples):
        book = books[int(rng.integers(len(books)))]
        start = int(rng.integers(0, len(book) - L))
        sample = plant_retrieval_facts(book[start : start + L], n * C, tok, rng, max_facts=1, max_questions=1)
        ids = sample.ids.tolist()
        answer = [t for t, label in zip(ids, sample.labels.tolist()) if label != -100][:-1]  # value without "."
        where = next(i for i in range(n * C) if ids[i : i + len(answer)] == answer)
        chunk, offset = where // C, where % C
        logits = layer_logits(model, torch.tensor(ids[: n * C]).view(n, C), torch.tensor(ids[n * C : sample.query_index + 1]))
        for index, scores in enumerate(logits.max(2).values):  # (n, C) per layer, best head
            best = scores.max(1).values
            stats[index]["path"] += path_reaches(scores[chunk], offset, args.tree_depth)
            stats[index]["chunk_top1"] += int((best > best[chunk]).sum()) == 0
    rows = [dict(layer=i, **s, samples=args.samples) for i, s in enumerate(stats)]
    for row in rows:
        print(json.dumps(row))
    if args.output:
        json.dump(dict(args=vars(args), rows=rows), open(args.output, "w"), indent=1)


if __name__ == "__main__":
    main()
