"""Which chunks outrank the needle's chunk under the shipped ranking (layer 20, best head's probability over all chunks'
tokens), and at which token. python who_outranks.py SPLIT TRIAL... (niah_single, 16K; output: who-outranks-test.log)"""
import sys
import torch
from sharedllm.assets import DEFAULT_ADAPTER
from sharedllm.context_encoder import ContextEncoder
from sharedllm.evaluation.needle import load_haystack, make_sample
from sharedllm.loading import DEFAULT_BASE, load_causal_lm
from sharedllm.methods import load_method

split, trials = sys.argv[1], [int(t) for t in sys.argv[2:]]
base, tok = load_causal_lm(DEFAULT_BASE)
method = load_method("sharedllm", base, tok, adapter=str(DEFAULT_ADAPTER))
model, cfg = method.model, method.model.config
cfg.max_chunks_per_pass = 10**6
enc = model.context_encoder
cap = {}
orig = ContextEncoder.lower_chunks
def rec(self, ids, index, before=None, node_vectors=None):
    out = orig(self, ids, index, before, node_vectors); cap.update(l=out, i=index, ids=ids); return out
ContextEncoder.lower_chunks = rec
hay = load_haystack(split)
for trial in trials:
    s = make_sample("niah_single", tok, 16384, f"0/{trial}", hay)
    ids = torch.tensor(tok(s.prompt)["input_ids"])
    with torch.no_grad():
        model(ids[None], logits_to_keep=1)
        q = model._query_vectors(ids[None], torch.zeros(1, dtype=torch.long), torch.tensor([len(ids) - 1]))[:, -1]
        logits = enc.attention_logits(q.expand(len(cap["i"]), -1), cap["l"].keys[20], cap["i"])  # (N, H, C)
    n, h, c = logits.shape
    probs = logits.permute(1, 0, 2).reshape(h, -1).softmax(-1).view(h, n, c)  # (H, N, C)
    best, where = probs.reshape(h, n * c).max(0)[0].view(n, c).max(-1)  # per chunk best prob and token
    head = probs.permute(1, 2, 0).reshape(n, c, h)[torch.arange(n), where].argmax(-1)
    order = best.argsort(descending=True)
    needle_chunk = s.prompt[: s.prompt.index(s.golds[0])]
    print(f"== trial {trial}: gold {s.golds[0]}")
    for rank, chunk in enumerate(order[:10].tolist()):
        t = where[chunk].item()
        text = tok.decode(cap["ids"][chunk, max(0, t - 12): t + 3])
        print(f"  rank {rank} chunk {chunk} p={best[chunk]:.3f} head {head[chunk].item()} token {t}: {text!r}")
