"""How many chunk encodings `sharedllm eval passkey` runs with and without `reusing_chunk_encodings`, for the
default adapter's split (C = 512, Ld = 1024, 64 overlap tokens read before each chunk) and the standard grid (5
depths x 10 trials, seed 0): the share of lower passes the memo leaves to run. Tokenizer only, no model.

    python scripts/passkey_chunk_reuse.py 8K 32K
"""

import argparse

from sharedllm.assets import DEFAULT_ADAPTER
from sharedllm.evaluation.passkey import DEFAULT_DEPTHS, build_passkey_prompt, encode, passkey_key
from sharedllm.flags import format_length, parse_length
from sharedllm.knob_rules import read_knobs
from sharedllm.loading import DEFAULT_BASE, load_base_tokenizer

DEFAULT = read_knobs(str(DEFAULT_ADAPTER), {})  # the split the default adapter reads with (one config source)
CHUNK, WINDOW, OVERLAP = DEFAULT.chunk_size, DEFAULT.decoder_window, DEFAULT.overlap_length


def chunk_keys(ids: list[int]) -> set:
    """What a chunk's lower pass depends on (`LowerChunksMemo`): its index, its tokens and the tokens before it."""
    n_chunks = -(-max(0, len(ids) - WINDOW) // CHUNK)
    return {(i, tuple(ids[max(0, i * CHUNK - OVERLAP) : (i + 1) * CHUNK])) for i in range(n_chunks)}


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("lengths", nargs="+", type=parse_length)
    args = parser.parse_args()
    tokenizer = load_base_tokenizer(DEFAULT_BASE)
    for length in args.lengths:
        total = fresh = 0
        previous = set()
        for depth in DEFAULT_DEPTHS:
            for trial in range(10):
                prompt = build_passkey_prompt(tokenizer, length, depth, passkey_key(0, length, depth, trial))
                keys = chunk_keys(encode(tokenizer, prompt))
                total, fresh, previous = total + len(keys), fresh + len(keys - previous), keys
        print(f"{format_length(length)}: {total} chunk passes without the memo, {fresh} with it ({fresh / total:.0%})")


if __name__ == "__main__":
    main()
