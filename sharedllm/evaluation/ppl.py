"""Perplexity under the field's two protocols.

* CEPE / SharedLLM: windows of T = context + decoder tokens every 256 tokens of each document that is at
  least T long; only the last 256 tokens of a window are scored; PPL = exp(mean over windows of the
  window's mean token loss).
* Sliding window (YaRN / Press et al.): windows of T advancing by 256; every token is scored exactly once,
  by the first window that covers it in its last `stride` positions, i.e. with the most context;
  PPL = exp(total NLL / total scored tokens).

`method.token_nll(input_ids, score_start)` returns the NLL of tokens [score_start, T) of the window. Each window's
mean NLL is recorded, so that two runs of the same windows pair (`sharedllm compare`), and can be journaled as it is
scored, so that a stopped run continues where it stopped (`eval ppl`).
"""

import math

import numpy as np

from .journal import ReusedTrials

PROTOCOLS = ("cepe", "sliding")
STRIDE = 256  # window starts lie on this grid (both protocols)
SCORED = 256  # tokens scored at the end of each CEPE window
WINDOW_KEY = ("doc", "start", "end", "score_start")  # what a window record is found by in a stopped run's journal


def cepe_windows(n_tokens, context_len, decoder_len, stride=STRIDE, scored=SCORED, max_windows=None):
    """(start, end, score_start) of every CEPE window of a document of `n_tokens` tokens.

    No window if the document is shorter than T. With `max_windows`, keep that many windows evenly
    spread over the document (always including the first), still on the stride grid.
    """
    total = context_len + decoder_len
    if scored > total:
        raise ValueError(f"cannot score {scored} tokens of a {total}-token window")
    starts = list(range(0, n_tokens - total + 1, stride))
    if max_windows is not None and len(starts) > max_windows:
        # Evenly spaced indices into the grid: windows far apart share the least text.
        starts = [starts[i * len(starts) // max_windows] for i in range(max_windows)]
    return [(s, s + total, s + total - scored) for s in starts]


def sliding_windows(n_tokens, window_len, stride=STRIDE):
    """(start, end, score_start) windows that score tokens 1..n_tokens-1 exactly once each.

    The first window scores all it can (token 0 has nothing to be predicted from); each later window
    scores only the tokens past the previous window's end, so every token gets >= window_len - stride
    tokens of context once the first window is passed.
    """
    windows, scored_until = [], 1
    for start in range(0, max(n_tokens - 1, 1), stride):
        end = min(start + window_len, n_tokens)
        if end > scored_until:
            windows.append((start, end, scored_until))
            scored_until = end
        if end == n_tokens:
            break
    return windows


def _allocate(n_available, budget):
    """Round-robin split of a window budget over documents (a document never gets more than it has)."""
    quota = [0] * len(n_available)
    while budget > 0 and any(q < n for q, n in zip(quota, n_available)):
        for i, n in enumerate(n_available):
            if budget > 0 and quota[i] < n:
                quota[i] += 1
                budget -= 1
    return quota


def plan_windows(doc_lengths, protocol, length, decoder_len=0, stride=STRIDE, scored=SCORED, max_windows=None):
    """Per document, the list of windows the protocol evaluates (empty for documents that are skipped)."""
    if protocol == "sliding":
        plans = [sliding_windows(n, length, stride) for n in doc_lengths]
        if max_windows is not None:
            # Truncating a document's window list still scores each covered token once.
            quota = _allocate([len(p) for p in plans], max_windows)
            plans = [p[:q] for p, q in zip(plans, quota)]
        return plans
    if protocol != "cepe":
        raise ValueError(f"unknown protocol {protocol!r}; expected one of {PROTOCOLS}")
    context_len = length - decoder_len
    plans = [cepe_windows(n, context_len, decoder_len, stride, scored) for n in doc_lengths]
    if max_windows is None:
        return plans
    quota = _allocate([len(p) for p in plans], max_windows)
    return [cepe_windows(n, context_len, decoder_len, stride, scored, max_windows=q) if q else []
            for n, q in zip(doc_lengths, quota)]


def _summary(windows, protocol):
    """PPL and counts for one group of window records (each with its mean_nll and scored_tokens)."""
    n_tokens = sum(w["scored_tokens"] for w in windows)
    if not windows:
        return {"ppl": None, "mean_nll": None, "n_windows": 0, "scored_tokens": 0}
    if protocol == "cepe":
        mean_nll = sum(w["mean_nll"] for w in windows) / len(windows)
    else:
        mean_nll = sum(w["mean_nll"] * w["scored_tokens"] for w in windows) / n_tokens
    return {"ppl": math.exp(mean_nll), "mean_nll": mean_nll, "n_windows": len(windows), "scored_tokens": n_tokens}


def perplexity(method, docs_token_ids, protocol, length, domains=None, doc_ids=None, decoder_len=0, stride=STRIDE,
               scored=SCORED, max_windows=None, progress=True, done=(), on_record=None):
    """Perplexity of `method` on tokenised documents under `protocol` ("cepe" or "sliding").

    `length` is the window length T; `decoder_len` (CEPE only) is how much of T is the decoder window,
    recorded so that a number states its n*C + Ld split. `domains` labels each document for the
    per-domain breakdown, `doc_ids` names it in the window records. Returns ppl, mean_nll, per_domain,
    n_docs, n_docs_skipped, n_windows, scored_tokens and `windows`: one record per window (doc, domain,
    start, score_start, end, mean_nll, scored_tokens), so that two runs pair window by window
    (`sharedllm compare`). `done`: window records of a stopped run, reused (found by `WINDOW_KEY`); `on_record(record)`
    after each window scored here.
    """
    import torch  # here, where the method runs: the protocols' names and windows (eval's parser, its checks) need none

    domains = list(domains) if domains is not None else ["all"] * len(docs_token_ids)
    doc_ids = list(doc_ids) if doc_ids is not None else [str(i) for i in range(len(docs_token_ids))]
    plans = plan_windows([len(ids) for ids in docs_token_ids], protocol, length, decoder_len, stride,
                         scored, max_windows)
    planned = [(doc_id, start, end, score_start) for doc_id, windows in zip(doc_ids, plans)
               for start, end, score_start in windows]
    reuse = ReusedTrials(done, WINDOW_KEY, planned, on_record, f"ppl {protocol} T={length}", progress)
    records = []
    for ids, doc_id, domain, windows in zip(docs_token_ids, doc_ids, domains, plans):
        ids = torch.from_numpy(np.array(ids, dtype=np.int64))  # a copy: cached ids are read-only memmaps
        for start, end, score_start in windows:

            def run() -> dict:
                with torch.no_grad():
                    nll = torch.as_tensor(method.token_nll(ids[start:end], score_start - start), dtype=torch.float64)
                if nll.numel() != end - score_start:
                    raise ValueError(f"token_nll returned {nll.numel()} values for {end - score_start} tokens")
                return {"doc": doc_id, "domain": domain, "start": start, "score_start": score_start, "end": end,
                        "mean_nll": nll.mean().item(), "scored_tokens": nll.numel()}

            records.append(reuse((doc_id, start, end, score_start), run))
    reuse.close()
    result = _summary(records, protocol)
    result["per_domain"] = {d: _summary([w for w in records if w["domain"] == d], protocol)
                            for d in sorted({w["domain"] for w in records})}
    for d in result["per_domain"]:
        result["per_domain"][d]["n_docs"] = sum(1 for dom, p in zip(domains, plans) if dom == d and p)
    result["n_docs"] = sum(1 for p in plans if p)
    result["n_docs_skipped"] = len(plans) - result["n_docs"]
    result.update(protocol=protocol, length=length, decoder_len=decoder_len, stride=stride,
                  scored_per_window=scored if protocol == "cepe" else None, max_windows=max_windows, windows=records)
    return result
