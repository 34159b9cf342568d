"""Training-free probe: does the base model read its context when the context key/values are injected into its
own self-attention softmax (one joint softmax) in layers 0..M-1?

Context = whole chunks of C tokens, each encoded alone by the base model (the lower model, as SharedLLM does);
the decoder window (the rest, <= Ld tokens) runs through the base model, and in layers < M its queries attend to
[all context keys/values of that layer] + [its own causal keys/values]. No compression here (every context token
kept), no training. Passkey (Landmark format) accuracy, greedy, first integer of 8 new tokens.

Context key positions: "stacked" = every chunk's token t sits at position t - C (just before the window, all chunks
share positions, as InfLLM places retrieved blocks); "true" = chunk c of n at (c - n) * C + t (the positions of the
concatenated text; only within the native window for short inputs).
"""

import argparse
import json
import time

import torch
import torch.nn.functional as F
from transformers.models.llama.modeling_llama import apply_rotary_pos_emb

from sharedllm.assets import default_model_path
from sharedllm.evaluation.passkey import teacher_forced_trials
from sharedllm.loading import load_causal_lm


@torch.no_grad()
def encode_chunks(base, chunk_ids):
    """(n, C) -> per layer post-RoPE keys (n, Hkv, C, hd) at positions 0..C-1, and values."""
    out = base.model(input_ids=chunk_ids, use_cache=True)
    cache = out.past_key_values
    return [cache.layers[i].keys for i in range(len(cache.layers))], [cache.layers[i].values for i in range(len(cache.layers))]


def rotate(keys, shift_positions, rotary_emb):
    """Rotate post-RoPE keys (n, H, C, hd) by a per-chunk position shift (n,)."""
    cos, sin = rotary_emb(keys, shift_positions[:, None])
    rotated, _ = apply_rotary_pos_emb(keys, keys, cos, sin)  # cos/sin (n, 1, hd) broadcast over heads and tokens
    return rotated


@torch.no_grad()
def window_logits(base, window_ids, ctx_keys, ctx_values, n_joint):
    """Run the base over window_ids (1, W); layers < n_joint attend jointly to context + window."""
    decoder = base.model
    hidden = decoder.embed_tokens(window_ids)
    W = window_ids.shape[1]
    positions = torch.arange(W)[None]
    cos, sin = decoder.rotary_emb(hidden, positions)
    causal = torch.full((W, W), float("-inf")).triu(1)
    for index, layer in enumerate(decoder.layers):
        attn = layer.self_attn
        x = layer.input_layernorm(hidden)
        shape = (1, W, -1, attn.head_dim)
        q = attn.q_proj(x).view(shape).transpose(1, 2)
        k = attn.k_proj(x).view(shape).transpose(1, 2)
        v = attn.v_proj(x).view(shape).transpose(1, 2)
        q, k = apply_rotary_pos_emb(q, k, cos, sin)
        if index < n_joint and ctx_keys is not None:
            K = torch.cat([ctx_keys[index], k], dim=2)
            V = torch.cat([ctx_values[index], v], dim=2)
            mask = torch.cat([torch.zeros(W, ctx_keys[index].shape[2]), causal], dim=1)
        else:
            K, V, mask = k, v, causal
        out = F.scaled_dot_product_attention(q, K, V, attn_mask=mask, scale=attn.scaling, enable_gqa=True)
        hidden = hidden + attn.o_proj(out.transpose(1, 2).reshape(1, W, -1))
        hidden = hidden + layer.mlp(layer.post_attention_layernorm(hidden))
    return base.lm_head(decoder.norm(hidden[:, -16:]))[0]  # (16, V): the key's positions are at the end


def split_and_encode(base, ids, chunk, window, previous=0):
    """previous=S >= 1: each chunk is encoded after the S tokens before it (the first chunk after BOS alone); they
    play the sink and the chunk's left context and are dropped (`--drop-sinks 2 --overlap S`). Returns per layer
    keys/values of the chunks' own tokens only, at positions 0..C-1 (+ the kept prefix, removed in context_kv)."""
    n = max(0, -(-(len(ids) - window) // chunk))
    if not n:
        return (None, None), ids, n
    chunks = torch.tensor(ids[: n * chunk]).view(n, chunk)
    if not previous:
        return encode_chunks(base, chunks), ids[n * chunk:], n
    first = encode_chunks(base, torch.cat([torch.tensor([base.config.bos_token_id]), chunks[0]])[None])
    parts = [tuple([t[:, :, 1:] for t in kv] for kv in first)]
    if n > 1:
        before = torch.stack([torch.tensor(ids[c * chunk - previous : c * chunk]) for c in range(1, n)])
        rest = encode_chunks(base, torch.cat([before, chunks[1:]], dim=1))
        parts.append(tuple([t[:, :, previous:] for t in kv] for kv in rest))
    keys = [torch.cat([p[0][i] for p in parts]) for i in range(len(parts[0][0]))]
    values = [torch.cat([p[1][i] for p in parts]) for i in range(len(parts[0][1]))]
    return (keys, values), ids[n * chunk:], n


def prefix_length(c, overlap):
    return 0 if not overlap else (1 if c == 0 else overlap)


def context_kv(base, encoded, n, chunk, positions, drop_sinks, overlap=0):
    keys, values = encoded
    if n == 0:
        return None, None
    # with a prefix of S tokens the chunk's keys sit at positions S..S+C-1 (chunk 0: 1..C); shift them to -C..-1
    offset = torch.tensor([prefix_length(c, overlap) for c in range(n)])
    shift = (-chunk - offset) if positions == "stacked" else (torch.arange(n) - n) * chunk - offset
    keep = slice(1 if drop_sinks == 1 else 0, chunk)
    flat = lambda t: t[:, :, keep].permute(1, 0, 2, 3).reshape(1, t.shape[1], -1, t.shape[-1])  # noqa: E731
    keys = [flat(rotate(k, shift, base.model.rotary_emb)) for k in keys]
    values = [flat(v) for v in values]
    return keys, values


def score(logits, ids, n_key):
    """Teacher-forced greedy match of the key tokens (== greedy generation emits the key) and their mean NLL."""
    target = torch.tensor(ids[-n_key:])
    pred = logits[-n_key - 1 : -1]
    hit = bool((pred.argmax(-1) == target).all())
    return hit, float(F.cross_entropy(pred.float(), target))


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--lengths", type=int, nargs="+", default=[4096])
    p.add_argument("--layers", type=int, nargs="+", default=[4, 8, 16, 30])
    p.add_argument("--positions", nargs="+", default=["stacked"])
    p.add_argument("--drop-sinks", type=int, nargs="+", default=[0],
                   help="0: keep each chunk's first token; 1: drop it; 2: encode each chunk after the token before it "
                        "and drop that one")
    p.add_argument("--overlap", type=int, default=1, help="with --drop-sinks 2: tokens read before each chunk")
    p.add_argument("--chunk", type=int, default=512)
    p.add_argument("--window", type=int, default=512)
    p.add_argument("--trials", type=int, default=10)
    p.add_argument("--depths", type=float, nargs="+", default=[0.1, 0.3, 0.5, 0.7, 0.9])
    p.add_argument("--output", default=None)
    p.add_argument("--full", action="store_true", help="also score the base with full attention")
    args = p.parse_args()
    torch.set_grad_enabled(False)
    base, tok = load_causal_lm(default_model_path())
    rows = []
    for length in args.lengths:
        prompts = teacher_forced_trials(tok, length, args.depths, args.trials)  # (depth, ids + key ids, n_key)
        if args.full:
            correct, nll = 0, 0.0
            for _, ids, n_key in prompts:
                logits = base(torch.tensor([ids])).logits[0]
                hit, lp = score(logits, ids, n_key)
                correct += hit; nll += lp
            row = dict(length=length, method="full", accuracy=correct / len(prompts), key_nll=nll / len(prompts))
            rows.append(row); print(json.dumps(row), flush=True)
        for drop in args.drop_sinks:
            overlap = args.overlap if drop == 2 else 0
            encoded = [split_and_encode(base, ids[:-n_key], args.chunk, args.window, previous=overlap)
                       for _, ids, n_key in prompts]
            for positions in args.positions:
                cache = [context_kv(base, enc, n, args.chunk, positions, drop, overlap) + (window_ids, ids[-n_key:])
                         for (_, ids, n_key), (enc, window_ids, n) in zip(prompts, encoded)]
                for m in args.layers:
                    start, correct, nll = time.time(), 0, 0.0
                    for (_, _, n_key), (ck, cv, window_ids, key_ids) in zip(prompts, cache):
                        ids = list(window_ids) + list(key_ids)
                        logits = window_logits(base, torch.tensor([ids]), ck, cv, m)
                        hit, lp = score(logits, ids, n_key)
                        correct += hit; nll += lp
                    row = dict(length=length, positions=positions, drop_sinks=drop, overlap=overlap, joint_layers=m,
                               accuracy=correct / len(prompts), key_nll=round(nll / len(prompts), 3),
                               trials=len(prompts), seconds=round(time.time() - start, 1))
                    rows.append(row)
                    print(json.dumps(row), flush=True)
    if args.output:
        json.dump(dict(args=vars(args), rows=rows), open(args.output, "w"), indent=1)


if __name__ == "__main__":
    main()
