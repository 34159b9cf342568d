"""Where does the tree's scoring put a RULER needle? For niah_single prompts (validation haystack unless told), the
rank of the needle's chunk among the context chunks, whether the tree search expands the 128-token node that holds
the needle's value, the rank of the needle's 64-token block inside its chunk and among every chunk's blocks, under candidate scorers: each
injected layer's query (the hidden state entering that layer, as `_query_vectors` computes it) against that layer's
context keys, with the heads combined as

  max_logit: the best raw logit over heads (the shipped score),
  max_prob:  each head's softmax over all context tokens, best head,
  sum_prob:  the same, summed over heads,
  max_prob_chunk: each head's softmax over the chunk's own tokens, best head (a chunk's choice then depends on
             its own tokens only; the chunk ranking is max_prob's),
  max_prob_window: each head's logits less its log-sum-exp over the decoder window (the query's own keys at that
             layer, computable per chunk as chunks arrive), best head.
  max_prob_flat(_chunk): max_prob (max_prob_chunk) of logits without RoPE between the query and the context keys:
             every context token as if at the query's own position. Joint injection places every chunk just
             before the window, so a chunk's last tokens are the nearest keys and recency-loving heads pick them.
  headH(_chunk)(_qN), with --per-head: max_prob (max_prob_chunk) of head H alone (of the last N tokens' queries,
             their best): do a few retrieval heads rank needles better than the best of all heads?
  max_prob_debias(_chunk)(_qN): max_prob (max_prob_chunk) of logits less each head's mean over the chunks at the
             same position (`debiased`): the positional pull that every chunk shares taken out.

    python results/experiments/tree-selection/probe_needle_rank.py --trials 12 --output probe.json
"""

import argparse
import json
import re
from collections import defaultdict

import torch

from sharedllm.assets import DEFAULT_ADAPTER
from sharedllm.context_encoder import ContextEncoder
from sharedllm.evaluation.needle import load_haystack, make_sample
from sharedllm.loading import DEFAULT_BASE, load_causal_lm
from sharedllm.methods import load_method
from sharedllm.tree import attention_half_scores, attention_logits, attention_token_scores, search_tree


def window_log_normalizer(model, hidden, layer):
    """(H,) log-sum-exp over the decoder window of the last token's attention logits in `layer` (no injection), from
    the (W, hidden) states entering that layer (`window_hidden`)."""
    from transformers.models.llama.modeling_llama import apply_rotary_pos_emb

    decoder = model.context_encoder.decoder
    attention = decoder.layers[layer].self_attn
    normed = decoder.layers[layer].input_layernorm(hidden[None])
    head_dim, width = attention.head_dim, hidden.shape[0]
    cos, sin = decoder.rotary_emb(normed, torch.arange(width)[None])
    q = attention.q_proj(normed[:, -1:]).view(1, 1, -1, head_dim).transpose(1, 2)
    k = attention.k_proj(normed).view(1, width, -1, head_dim).transpose(1, 2)
    q, _ = apply_rotary_pos_emb(q, q, cos[:, -1:], sin[:, -1:])
    k, _ = apply_rotary_pos_emb(k, k, cos, sin)
    return attention_logits(q[:, :, 0], k)[0].logsumexp(-1)


def unrotated_keys(model, keys, chunk_index):
    """(N, Hkv, C, hd) post-RoPE context keys -> the same keys before RoPE: scored against the query at position 0,
    the logits of every context token as if it sat at the query's own position (no recency between tokens)."""
    from transformers.models.llama.modeling_llama import apply_rotary_pos_emb

    encoder = model.context_encoder
    positions = encoder.chunk_offsets(chunk_index)[:, None] + torch.arange(keys.shape[2])[None]
    cos, sin = encoder.decoder.rotary_emb(keys, positions)  # (N, C, hd)
    unrotated, _ = apply_rotary_pos_emb(keys, keys, cos, -sin)  # rotation by minus each token's angle
    return unrotated


def over_all_tokens(logits):
    """(N, H, C) logits -> (N, H, C) each head's softmax over every chunk's tokens."""
    n, n_heads, chunk_size = logits.shape
    return logits.permute(1, 0, 2).reshape(n_heads, -1).softmax(-1).view(n_heads, n, chunk_size).permute(1, 0, 2)


def per_head(logits, suffix=""):
    """(N, H, C) logits -> {headH: each head's softmax over all tokens, headH_chunk: over its chunk's tokens}."""
    probs, own = over_all_tokens(logits), logits.softmax(-1)
    return {**{f"head{h}{suffix}": probs[:, h] for h in range(logits.shape[1])},
            **{f"head{h}_chunk{suffix}": own[:, h] for h in range(logits.shape[1])}}


def debiased(logits):
    """(N, H, C) logits less each head's mean logit at that position over the N chunks. Joint injection puts every
    chunk at the same positions, so what all chunks share at a position (a head's recency preference for the chunk's
    last tokens) is that mean; what is left is what sets a chunk apart."""
    return logits - logits.mean(0, keepdim=True)


def scorers(logits, window_lse, flat_logits):
    """(N, H, C) logits (and the position-free ones) -> {name: (N, C) token scores}."""
    probs, shifted = over_all_tokens(logits), debiased(logits)
    return {"max_prob_debias": over_all_tokens(shifted).amax(1),
            "max_prob_debias_chunk": attention_token_scores(shifted, "probability"),
            "max_prob_flat": over_all_tokens(flat_logits).amax(1),
            "max_prob_flat_chunk": attention_token_scores(flat_logits, "probability"),
            "max_logit": attention_token_scores(logits, "logit"), "max_prob": probs.amax(1), "sum_prob": probs.sum(1),
            "max_prob_chunk": attention_token_scores(logits, "probability"),
            "max_prob_window": (logits - window_lse[None, :, None]).amax(1)}


def window_hidden(model, ids, n_context, layer):
    """(W, hidden) the states entering `layer` at every token of the last token's decoder window (no injection), as
    `_query_vectors` computes the last one's: one forward for all of them."""
    from sharedllm.modeling import layer_mask, self_attention_masks

    cfg = model.config
    window = ids[n_context:][None]  # the tokens after the context chunks
    decoder = model.context_encoder.decoder
    hidden = decoder.embed_tokens(window)
    positions = torch.arange(window.shape[1])[None]
    position_embeddings = decoder.rotary_emb(hidden, positions)
    masks = self_attention_masks(cfg.text_config, hidden, torch.ones_like(window), None, positions)
    for index in range(layer):
        hidden = decoder.layers[index](hidden, attention_mask=layer_mask(cfg.text_config, masks, index),
                                       position_embeddings=position_embeddings, position_ids=positions)
    return hidden[0]


def several_query_scores(model, hidden, keys, chunk_index, n_queries, per_head_too=False):
    """max_prob / max_prob_chunk with the queries of the prompt's last n tokens (their states entering the scoring
    layer, `window_hidden`: the last one is `_query_vectors`' vector, the earlier ones read the same window), the
    best over them (max_prob_qN) and their mean (mean_prob_qN): a question's key tokens may look the needle up where
    its last token does not; the mean asks that many of them agree."""
    encoder = model.context_encoder
    queries = hidden[-n_queries:]  # (n, hidden)
    n = len(chunk_index)
    all_tokens, own_chunk, heads, all_debiased, own_debiased = [], [], [], [], []
    for query in queries:  # (hidden,)
        logits = encoder.attention_logits(query[None].expand(n, -1), keys, chunk_index)
        all_tokens.append(over_all_tokens(logits).amax(1))
        own_chunk.append(attention_token_scores(logits, "probability"))
        shifted = debiased(logits)
        all_debiased.append(over_all_tokens(shifted).amax(1))
        own_debiased.append(attention_token_scores(shifted, "probability"))
        if per_head_too:
            heads.append(per_head(logits, f"_q{n_queries}"))
    all_tokens, own_chunk = torch.stack(all_tokens), torch.stack(own_chunk)  # (n_queries, N, C)
    best_per_head = {name: torch.stack([h[name] for h in heads]).amax(0) for name in (heads[0] if heads else {})}
    return {f"max_prob_q{n_queries}": all_tokens.amax(0), f"max_prob_chunk_q{n_queries}": own_chunk.amax(0),
            f"mean_prob_q{n_queries}": all_tokens.mean(0), f"mean_prob_chunk_q{n_queries}": own_chunk.mean(0),
            f"max_prob_debias_q{n_queries}": torch.stack(all_debiased).amax(0),
            f"max_prob_debias_chunk_q{n_queries}": torch.stack(own_debiased).amax(0),
            **best_per_head}


def needle_metrics(token_scores, chunk, span, chunk_size, depth, block=64):
    """Rank of the needle's chunk, tree hit, and the needle block's rank inside its chunk."""
    chunk_best = token_scores.amax(-1)
    chunk_rank = int((chunk_best > chunk_best[chunk]).sum())
    kept = search_tree(attention_half_scores(token_scores), token_scores.shape[0], chunk_size, depth, token_scores.device)
    exact_start = int(kept[-2][0][chunk])  # the last level's two halves: the expanded node, kept exactly
    exact_end = exact_start + 2 * kept[-1][1]
    tree_hit = exact_start <= span[0] and span[1] <= exact_end
    blocks = token_scores[chunk].view(-1, block).amax(-1)
    needle_block = span[0] // block
    block_rank = int((blocks > blocks[needle_block]).sum())
    all_blocks = token_scores.view(token_scores.shape[0], -1, block).amax(-1)  # (N, C / block): every leaf of every chunk
    global_block_rank = int((all_blocks > blocks[needle_block]).sum())
    # the raw scores too, so that summarise_combinations.py can rank by combinations of scorers offline
    return dict(chunk_rank=chunk_rank, tree_hit=tree_hit, block_rank=block_rank, global_block_rank=global_block_rank,
                chunk_scores=chunk_best.tolist(), chunk_best_tokens=token_scores.argmax(-1).tolist(),
                needle_chunk_block_scores=blocks.tolist())


def other_needles(sample, encoded, chunk_size, n_context):
    """(chunk, span in chunk) of the context's needles for keys other than the asked one (niah_multikey)."""
    found = []
    for match in re.finditer(r"One of the special magic numbers for .+? is: (\d+)\.", sample.prompt):
        if match.group(1) in sample.golds:
            continue
        a, b = match.span(1)
        tokens = [i for i, (x, y) in enumerate(encoded["offset_mapping"]) if x < b and y > a]
        chunk, offset = divmod(tokens[0], chunk_size)
        if tokens[-1] < n_context and tokens[-1] - chunk * chunk_size < chunk_size:
            found.append((chunk, (offset, tokens[-1] - chunk * chunk_size + 1)))
    return found


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--adapter", default=str(DEFAULT_ADAPTER))
    parser.add_argument("--length", type=int, default=8192)
    parser.add_argument("--trials", type=int, default=12)
    parser.add_argument("--first-trial", type=int, default=0)
    parser.add_argument("--split", default="validation")
    parser.add_argument("--domains", nargs="+", default=["books"], help="the haystack's domains (eval's --domains)")
    parser.add_argument("--task", default="niah_single", choices=["niah_single", "niah_multikey"],
                        help="niah_multikey also records where the other keys' needles rank (`distractors`)")
    parser.add_argument("--layers", type=int, nargs="+", default=[3, 7, 11, 14, 17, 20, 23, 26, 29])
    parser.add_argument("--query-tokens", type=int, nargs="+", default=[],
                        help="also score with the queries of the last N prompt tokens (max_prob_qN, mean_prob_qN; "
                             "several N allowed)")
    parser.add_argument("--per-head", action="store_true", help="also score with every head alone (headH...)")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu",
                        help="as eval's --device; every tensor the probe makes goes there too")
    parser.add_argument("--output")
    args = parser.parse_args()

    torch.set_default_device(args.device)  # the helpers' aranges and the prompt's ids, without passing it around
    base, tokenizer = load_causal_lm(DEFAULT_BASE)
    base.to(args.device)
    method = load_method("sharedllm", base, tokenizer, adapter=args.adapter)
    model, cfg = method.model, method.model.config
    encoder = model.context_encoder
    captured = defaultdict(list)  # the probed layers' keys of every lower pass (max_chunks_per_pass chunks each)
    original_lower = ContextEncoder.lower_chunks

    def recording_lower(self, chunk_ids, chunk_index, before=None, node_vectors=None):
        lowered = original_lower(self, chunk_ids, chunk_index, before, node_vectors)
        captured["chunk_index"].append(chunk_index)
        for layer in args.layers:
            captured[layer].append(lowered.layer_keys(layer))
        return lowered

    ContextEncoder.lower_chunks = recording_lower
    haystack = load_haystack(args.split, args.domains)
    rows, summary = [], defaultdict(lambda: defaultdict(list))
    for trial in range(args.first_trial, args.first_trial + args.trials):
        sample = make_sample(args.task, tokenizer, args.length, f"0/{trial}", haystack)
        encoded = tokenizer(sample.prompt, return_offsets_mapping=True)
        ids = torch.tensor(encoded["input_ids"])
        char = sample.prompt.index(sample.golds[0], sample.prompt.index("One of the special magic"))
        value_tokens = [i for i, (a, b) in enumerate(encoded["offset_mapping"]) if a < char + 7 and b > char]
        n_context = method.context_length(len(ids))
        if value_tokens[-1] >= n_context:
            print(f"trial {trial}: needle in the decoder window, skipped", flush=True)
            continue
        chunk, offset = divmod(value_tokens[0], cfg.chunk_size)
        span = (offset, value_tokens[-1] - chunk * cfg.chunk_size + 1)
        if span[1] > cfg.chunk_size:
            print(f"trial {trial}: needle across a chunk boundary, skipped", flush=True)
            continue
        with torch.no_grad():
            captured.clear()
            model(ids[None], logits_to_keep=1)
            chunk_index = torch.cat(captured["chunk_index"])  # (N,) every chunk, over all passes
            keys = {layer: torch.cat(captured[layer]) for layer in args.layers}  # (N, Hkv, C, hd)
            row = dict(trial=trial, depth=sample.info["depth"], chunk=chunk, n_chunks=len(chunk_index), span=span)
            original_layer = cfg.selection_layer
            for layer in args.layers:
                cfg.selection_layer = layer
                query = model._query_vectors(ids[None], torch.zeros(1, dtype=torch.long), torch.tensor([len(ids) - 1]))[:, -1]
                logits = encoder.attention_logits(query.expand(len(chunk_index), -1), keys[layer], chunk_index)
                hidden = window_hidden(model, ids, n_context, layer)  # (W, hidden), one forward for both uses
                window_lse = window_log_normalizer(model, hidden, layer)
                flat_logits = encoder.attention_logits(query.expand(len(chunk_index), -1),
                                                       unrotated_keys(model, keys[layer], chunk_index), chunk_index)
                named = scorers(logits, window_lse, flat_logits)
                if args.per_head:
                    named.update(per_head(logits))
                for n_queries in args.query_tokens:
                    named.update(several_query_scores(model, hidden, keys[layer], chunk_index, n_queries,
                                                      args.per_head))
                for name, token_scores in named.items():
                    metrics = needle_metrics(token_scores, chunk, span, cfg.chunk_size, cfg.tree_depth)
                    if args.task == "niah_multikey":  # the best-ranked other key's needle (lower = more in the way)
                        others = [needle_metrics(token_scores, c, sp, cfg.chunk_size, cfg.tree_depth)
                                  for c, sp in other_needles(sample, encoded, cfg.chunk_size, n_context)]
                        metrics["distractor_chunk_rank"] = min((o["chunk_rank"] for o in others), default=None)
                        metrics["distractor_global_block_rank"] = min((o["global_block_rank"] for o in others),
                                                                      default=None)
                    row[f"L{layer}/{name}"] = metrics
                    for key, value in metrics.items():
                        if value is not None and not isinstance(value, list):
                            summary[f"L{layer}/{name}"][key].append(value)
            cfg.selection_layer = original_layer
        rows.append(row)
        if args.output:  # after every trial: a stopped probe keeps what it measured (the table comes at the end)
            json.dump(dict(args=vars(args), adapter=args.adapter, rows=rows), open(args.output, "w"), indent=1)
        print(json.dumps({k: v for k, v in row.items() if not k.startswith("L")}),
              f"layer {args.layers[0]}, max_logit:", row[f"L{args.layers[0]}/max_logit"], flush=True)

    table = {}
    for scorer, metrics in summary.items():
        n = len(metrics["tree_hit"])
        table[scorer] = dict(
            n=n,
            tree_hit=sum(metrics["tree_hit"]) / n,
            chunk_in_top8=sum(r < 8 for r in metrics["chunk_rank"]) / n,
            block_top2=sum(r < 2 for r in metrics["block_rank"]) / n,
            block_top4=sum(r < 4 for r in metrics["block_rank"]) / n,
            global_block_top16=sum(r < 16 for r in metrics["global_block_rank"]) / n,
            mean_chunk_rank=sum(metrics["chunk_rank"]) / n,
        )
    for scorer, values in table.items():
        print(f"{scorer:18s}", " ".join(f"{k}={v:.2f}" if isinstance(v, float) else f"{k}={v}" for k, v in values.items()))
    if args.output:
        json.dump(dict(args=vars(args), adapter=args.adapter, rows=rows, table=table), open(args.output, "w"), indent=1)


if __name__ == "__main__":
    main()
