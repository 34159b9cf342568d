"""The ceiling of any chunk selection on niah_multikey: the window reads exactly one chunk, the asked key's needle
chunk (forced), every other knob the default's (its leaves chosen as the default chooses them). What the model then
answers says whether a selection that never reads another key's needle could reach the issue's 80%: misses left
are other keys' needles inside the decoder window, or copies that fail.

    OMP_NUM_THREADS=1 python results/experiments/multikey-focus/oracle_read.py --trials 10 \
        --output results/experiments/multikey-focus/oracle-16k-validation-10.json
"""

import argparse
import json

import torch

import sharedllm.context_encoder as context_encoder
from sharedllm.assets import DEFAULT_ADAPTER
from sharedllm.evaluation.needle import load_haystack, make_sample, score_sample
from sharedllm.evaluation.passkey import encode, generate_text
from sharedllm.loading import DEFAULT_BASE, load_causal_lm
from sharedllm.methods import load_method

forced = {}  # {"chunk": the asked needle's chunk index} for the prompt being answered
union_order = context_encoder.union_order  # the library's, which forced_first wraps


def forced_first(rankings):
    """`tree.union_order` with the asked chunk scored above every other chunk in the first ranking."""
    (scores, count), later = rankings[0], rankings[1:]
    scores = scores.clone()
    scores[:, forced["chunk"]] = float("inf")
    return union_order(((scores, count), *later))


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--length", type=int, default=16384)
    parser.add_argument("--trials", type=int, default=10)
    parser.add_argument("--split", default="validation")
    parser.add_argument("--domains", nargs="+", default=["books"])
    parser.add_argument("--output")
    args = parser.parse_args()
    base, tokenizer = load_causal_lm(DEFAULT_BASE)
    # one chunk read, ranked by the query token alone (whose ranking is then forced); leaves as the default's
    method = load_method("sharedllm", base, tokenizer, adapter=str(DEFAULT_ADAPTER), context_chunks=1,
                         query_chunks=0, query_layer=None)
    context_encoder.union_order = forced_first
    chunk_size = method.model.config.chunk_size
    haystack = load_haystack(args.split, args.domains)
    records = []
    for trial in range(args.trials):
        sample = make_sample("niah_multikey", tokenizer, args.length, f"0/{trial}", haystack)
        encoded = tokenizer(sample.prompt, return_offsets_mapping=True)
        value_char = sample.prompt.index(f"is: {sample.golds[0]}.") + len("is: ")
        token = next(i for i, (a, b) in enumerate(encoded["offset_mapping"]) if b > value_char)
        n_context = method.context_length(len(encode(tokenizer, sample.prompt)))
        forced["chunk"] = token // chunk_size
        output = generate_text(method, tokenizer, sample.prompt, sample.max_new_tokens)
        record = dict(trial=trial, golds=sample.golds, chunk=forced["chunk"], in_window=token >= n_context,
                      output=output, score=score_sample(sample, output))
        records.append(record)
        print(json.dumps(record)[:300], flush=True)
    summary = dict(args=vars(args), right=sum(r["score"] for r in records), n=len(records), records=records)
    print("right", summary["right"], "of", summary["n"])
    if args.output:
        json.dump(summary, open(args.output, "w"), indent=1)


if __name__ == "__main__":
    main()
