"""How many chunk encodings an `eval passkey`, `eval niah` or `eval ruler` grid runs with and without
`reusing_chunk_encodings`, for the default adapter's split (C = 512, Ld = 1024, 64 overlap tokens read before each
chunk): the share of lower passes the memo leaves to run. The prompts are eval's defaults (seed 0, 10 trials, the
passkey / niah depths, RULER's test books haystack). Tokenizer only, no model.

    python scripts/chunk_reuse.py passkey 8K 32K
    python scripts/chunk_reuse.py niah_single 32K      # a RULER task; niah: the needle-in-prose grid
"""

import argparse

import torch

from sharedllm.assets import DEFAULT_ADAPTER
from sharedllm.evaluation.needle import NIAH_ANSWER_TOKENS, RULER_TASKS, load_haystack, make_sample, niah_sample
from sharedllm.evaluation.passkey import DEFAULT_DEPTHS, build_passkey_prompt, encode, passkey_key
from sharedllm.flags import format_length, parse_length
from sharedllm.knob_rules import read_knobs
from sharedllm.loading import DEFAULT_BASE, load_base_tokenizer
from sharedllm.rows import context_chunk_counts

DEFAULT = read_knobs(str(DEFAULT_ADAPTER), {})  # the split the default adapter reads with (one config source)
CHUNK, WINDOW, OVERLAP = DEFAULT.chunk_size, DEFAULT.decoder_window, DEFAULT.overlap_length
SEED, TRIALS = 0, 10


BY_INDEX = DEFAULT.injection != "joint"  # `ContextEncoder.chunks_share_positions`, from the config alone (no model)


def chunk_keys(ids: list[int]) -> list[tuple]:
    """What each chunk's lower pass depends on (`LowerChunksMemo.chunk_keys`): its tokens, the tokens before it and,
    under cross injection, its index. A prompt's chunks with one key (a repeated filler's) run one pass."""
    n_chunks = int(context_chunk_counts(torch.tensor(len(ids)), CHUNK, WINDOW))  # the model's split rule
    return [(i if BY_INDEX else None, tuple(ids[max(0, i * CHUNK - OVERLAP) : (i + 1) * CHUNK]))
            for i in range(n_chunks)]


def prompts(protocol: str, tokenizer, length: int, haystack: str):
    """The grid's prompts at one length, in the order eval reads them (trials of one cell follow each other)."""
    if protocol == "passkey":
        for depth in DEFAULT_DEPTHS:
            for trial in range(TRIALS):
                yield build_passkey_prompt(tokenizer, length, depth, passkey_key(SEED, length, depth, trial))
    elif protocol == "niah":
        for depth in DEFAULT_DEPTHS:
            for trial in range(TRIALS):
                yield niah_sample(tokenizer, length, f"{SEED}/{trial}", haystack_text=haystack, depth=depth,
                                  max_new_tokens=NIAH_ANSWER_TOKENS).prompt
    else:
        for trial in range(TRIALS):
            yield make_sample(protocol, tokenizer, length, f"{SEED}/{trial}", haystack).prompt


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("protocol", choices=["passkey", "niah", *RULER_TASKS])
    parser.add_argument("lengths", nargs="+", type=parse_length)
    args = parser.parse_args()
    tokenizer = load_base_tokenizer(DEFAULT_BASE)
    haystack = None if args.protocol == "passkey" else load_haystack("test")
    for length in args.lengths:
        total = fresh = 0
        previous = set()
        for prompt in prompts(args.protocol, tokenizer, length, haystack):
            keys = chunk_keys(encode(tokenizer, prompt))
            # the memo keeps what the prompt before it encoded and this one reads (`LowerChunksMemo.start_input`)
            total, fresh, previous = total + len(keys), fresh + len(set(keys) - previous), set(keys)
        print(f"{args.protocol} {format_length(length)}: {total} chunk passes without the memo, {fresh} with it "
              f"({fresh / total:.0%})", flush=True)


if __name__ == "__main__":
    main()
