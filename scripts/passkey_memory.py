"""Resident memory of consecutive passkey trials (eval's prompts, seed 0) read as `sharedllm eval passkey` reads
them, inside `reusing_chunk_encodings`: after loading, and per trial the peak during its prefill, what stays
resident after it, and the bytes the chunk memo and the cache's encoded context hold (each storage counted once: an
encoded context that keeps every token of a chunk holds the memo's own tensors). Sampled every 50 ms (psutil); one
thread.

    python scripts/passkey_memory.py 32K --adapter adapters/smollm2-135m-joint-exact
"""

import argparse
import threading
import time

import psutil
import torch

from sharedllm.assets import DEFAULT_ADAPTER
from sharedllm.evaluation.passkey import build_passkey_prompt, encode, passkey_key
from sharedllm.flags import parse_length
from sharedllm.loading import DEFAULT_BASE, load_causal_lm
from sharedllm.methods import load_method


def gigabytes(n_bytes: int) -> str:
    return f"{n_bytes / 2**30:.2f} GB"


def storage_bytes(tensors) -> int:
    """Bytes of the distinct storages under `tensors` (views of one tensor, or one tensor held twice, count once)."""
    storages = {t.untyped_storage().data_ptr(): t.untyped_storage().nbytes() for t in tensors if t is not None}
    return sum(storages.values())


class PeakRSS:
    """The highest resident set size seen since the last `reset`, sampled in a daemon thread."""

    def __init__(self, every_s: float = 0.05):
        self.process, self.peak = psutil.Process(), 0
        threading.Thread(target=self._watch, args=(every_s,), daemon=True).start()

    def _watch(self, every_s):
        while True:
            self.peak = max(self.peak, self.process.memory_info().rss)
            time.sleep(every_s)

    def now(self) -> int:
        return self.process.memory_info().rss

    def reset(self) -> None:
        self.peak = self.now()


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("length", type=parse_length, help="prompt length in tokens (e.g. 32K)")
    parser.add_argument("--adapter", default=str(DEFAULT_ADAPTER))
    parser.add_argument("--depths", type=float, nargs="+", default=[0.5, 0.5, 0.2],
                        help="one prompt per depth, trial i at the i-th (from the second on, the memo reuses the "
                             "filler's chunks)")
    args = parser.parse_args()
    torch.set_num_threads(1)
    rss = PeakRSS()
    base, tokenizer = load_causal_lm(DEFAULT_BASE)
    method = load_method("sharedllm", base, tokenizer, shared={"adapter": args.adapter})
    print(f"after loading: {gigabytes(rss.now())}", flush=True)
    with torch.no_grad(), method.reusing_encodings():
        for trial, depth in enumerate(args.depths):
            key = passkey_key(0, args.length, depth, trial)
            ids = torch.tensor(encode(tokenizer, build_passkey_prompt(tokenizer, args.length, depth, key)))
            rss.reset()
            method.prefill(ids, 10)
            context = method.state.context
            memo = method.model._chunk_memo
            kept = [t for part in memo.kept.values() for t in part]  # (keys-and-values, node vectors) per chunk
            chunks = [chunk for row in context.chunks for chunk in row]
            print(f"trial {trial}, depth {depth} ({len(ids)} tokens): peak {gigabytes(rss.peak)}, after prefill "
                  f"{gigabytes(rss.now())}; memo {gigabytes(storage_bytes(kept))}, cache's encoded context "
                  f"{gigabytes(storage_bytes(chunks))}, both {gigabytes(storage_bytes(kept + chunks))}", flush=True)
            del context
            method.reset()


if __name__ == "__main__":
    main()
