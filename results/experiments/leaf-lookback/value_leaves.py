"""Where a RULER needle's value lies: for each prompt (rebuilt and tokenised, no model run) the token span of the
asked key's needle sentence and of its value, and the (chunk, leaf) of their first and last tokens (C = 512, 64-token
leaves, the default's). A value whose first and last tokens lie in different leaves is cut by a leaf border.

    python results/experiments/leaf-lookback/value_leaves.py --split validation --task niah_single --length 16384 --trials 6
"""

import argparse
import re

from sharedllm.evaluation.needle import load_haystack, make_sample
from sharedllm.loading import DEFAULT_BASE, load_tokenizer, resolve_base_path


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--split", default="validation")
    parser.add_argument("--domains", nargs="+", default=["books"])
    parser.add_argument("--task", default="niah_single", choices=["niah_single", "niah_multikey"])
    parser.add_argument("--length", type=int, default=16384)
    parser.add_argument("--trials", type=int, nargs="+", default=list(range(10)))
    parser.add_argument("--chunk-size", type=int, default=512)
    parser.add_argument("--leaf", type=int, default=64)
    args = parser.parse_args()
    tokenizer = load_tokenizer(resolve_base_path(DEFAULT_BASE))
    haystack = load_haystack(args.split, args.domains)
    where = lambda t: (t // args.chunk_size, t % args.chunk_size // args.leaf)  # noqa: E731
    for trial in args.trials:
        sample = make_sample(args.task, tokenizer, args.length, f"0/{trial}", haystack)
        offsets = tokenizer(sample.prompt, return_offsets_mapping=True)["offset_mapping"]
        tokens = lambda a, b: [i for i, (x, y) in enumerate(offsets) if x < b and y > a]  # noqa: E731
        value = sample.golds[0]
        match = re.search(rf"One of the special magic numbers for \S+ is: {value}\.", sample.prompt)
        value_start = match.start() + match.group(0).index(value)
        sentence, digits = tokens(*match.span()), tokens(value_start, value_start + len(value))
        cut = "CUT" if where(digits[0]) != where(digits[-1]) else "whole"
        print(f"trial {trial}: sentence tokens {sentence[0]}-{sentence[-1]}, value {digits[0]}-{digits[-1]} "
              f"(chunk, leaf) {where(digits[0])} -> {where(digits[-1])} {cut}; prompt {len(offsets)} tokens")


if __name__ == "__main__":
    main()
