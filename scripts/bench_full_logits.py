"""full_logits (logits for every position, what lm-eval's HFLM asks for): time with each chunk's lower pass run once
(`LowerChunksMemo`) against the same call re-encoding the chunks before every span (the library before it).

    OMP_NUM_THREADS=1 python scripts/bench_full_logits.py [--lengths 4K 8K] [--repeats 3] [--output FILE]

The input is the first L tokens of a held-out test book (splits.json), read by the default adapter. Both ways run in
this process, alternating, `--repeats` times each; the ratio of their medians is the number to quote (absolute
times on a shared CPU are not). It also reports the largest logit difference between the two ways.
"""

import argparse
import json
import statistics
import time
from pathlib import Path

import torch

import sharedllm.modeling
from sharedllm import provenance
from sharedllm.ask import DEFAULT_ADAPTER, load_model
from sharedllm.assets import load_documents, load_splits
from sharedllm.flags import format_length, parse_length


def full_logits(model, ids: torch.Tensor, memo: bool) -> tuple[float, torch.Tensor]:
    """(seconds, logits) of one full_logits forward, with or without the memo of lower passes."""
    kept = sharedllm.modeling.LowerChunksMemo
    if not memo:
        sharedllm.modeling.LowerChunksMemo = lambda encoder: None  # every span encodes its chunks again
    try:
        started = time.perf_counter()
        with torch.no_grad():
            logits = model(ids, full_logits=True).logits
        return time.perf_counter() - started, logits
    finally:
        sharedllm.modeling.LowerChunksMemo = kept


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--lengths", type=parse_length, nargs="+", default=[4096, 8192])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--adapter", type=Path, default=DEFAULT_ADAPTER)
    parser.add_argument("--output", type=Path, default=None, help="JSON file (default: print only)")
    args = parser.parse_args()
    provenance.pin_commit()  # the JSON names the code this run starts with, whatever is committed meanwhile

    model, tokenizer = load_model(args.adapter, "cpu")
    book = load_splits()["books"]["test"][0]
    text = next(doc.text for doc in load_documents("test", ["books"]) if doc.doc_id == book)
    tokens = torch.tensor(tokenizer(text, add_special_tokens=False, verbose=False)["input_ids"])
    full_logits(model, tokens[None, :2048], memo=True)  # first calls pay one-time setup: not timed
    rows = []
    for length in args.lengths:
        ids = tokens[None, :length]
        times = {"memo": [], "no_memo": []}
        for repeat in range(args.repeats):
            seconds, with_memo = full_logits(model, ids, memo=True)
            times["memo"].append(seconds)
            seconds, without = full_logits(model, ids, memo=False)
            times["no_memo"].append(seconds)
            print(f"{format_length(length)} run {repeat + 1}: {times['memo'][-1]:.1f} s with the memo, "
                  f"{seconds:.1f} s without", flush=True)
        row = {
            "length": length,
            "memo_s": times["memo"], "no_memo_s": times["no_memo"],
            "no_memo_over_memo": statistics.median(times["no_memo"]) / statistics.median(times["memo"]),
            "max_abs_logit_difference": float((with_memo - without).abs().max()),
        }
        rows.append(row)
        print(f"{format_length(length)}: without / with the memo {row['no_memo_over_memo']:.2f}x (medians of "
              f"{args.repeats}), largest logit difference {row['max_abs_logit_difference']:.2e}", flush=True)
        results = {"what": "full_logits with one lower pass per chunk against re-encoding per span", "book": book,
                   "adapter": str(args.adapter), "repeats": args.repeats, "rows": rows,
                   **provenance.record("cpu", str(model.base.dtype).removeprefix("torch."))}
        if args.output:  # after every length: a stopped run keeps what it measured
            args.output.parent.mkdir(parents=True, exist_ok=True)
            args.output.write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
