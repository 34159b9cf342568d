"""Passkey retrieval in the Landmark Attention format (used by LongLoRA, LongLLaMA, YaRN).

Prompt lines: instruction / filler prefix / "The pass key is K. Remember it. K is the pass key." /
filler rest / "What is the pass key? The pass key is". As in Landmark, the filler is a repeated
5-sentence string cut at a character count; here the count is chosen so that the prompt has the target
number of tokens and the needle sits at the requested depth. Correct = the first integer in at most
~10 greedily generated tokens equals K.
"""

import itertools
import random

from sharedllm.flags import format_length

from .journal import ReusedTrials
from .metrics import first_integer

INSTRUCTION = ("There is an important info hidden inside a lot of irrelevant text. Find it and memorize "
               "them. I will quiz you about the important information there.")
FILLER = "The grass is green. The sky is blue. The sun is yellow. Here we go. There and back again."
QUESTION = "What is the pass key? The pass key is"
DEFAULT_DEPTHS = (0.0, 0.25, 0.5, 0.75, 1.0)


def encode(tokenizer, text: str) -> list[int]:
    """Token ids as the model will see them (HF tokenizers add BOS here when the model expects one)."""
    ids = tokenizer.encode(text)
    return list(getattr(ids, "ids", ids))  # a `tokenizers.Tokenizer` returns an Encoding


# How far a prompt's token count may fall as n grows (BPE re-splits only the words at the prompt's cut points; at
# most 2 on SmolLM2's passkey prompts, measured over 1,200 consecutive n at 4K), and longest_fitting's first point
# past 0 and secant steps per aim.
COUNT_DIP_TOKENS = 4
SECANT_PROBE, SECANT_STEPS = 256, 2


def longest_fitting(build, tokenizer, target_tokens: int) -> int:
    """Largest n >= 0 with len(encode(build(n))) <= target_tokens, by doubling then bisecting from 0.

    The count is monotone in n only up to COUNT_DIP_TOKENS (a token can come back one character later), so the
    search's path decides which n it returns, and that path is kept. What it costs is not: a point is tokenized
    only when no point already counted settles it (one counted at or beyond it at least COUNT_DIP_TOKENS below the
    target fits it; one counted at or before it more than that above the target rules it out), after secant steps
    (the count is about linear in n) have counted points just below and just above the target: at 128K, 12
    tokenizer calls instead of 39 and half the time (3.6 s instead of 6.7 s per passkey prompt on the CPU; the
    search was most of a 128K passkey trial on a GPU), with the same prompts (checked on every prompt of the
    committed passkey 8K-32K and RULER 16K-32K cells and on samples at 64K-128K: results/experiments/prompt-search/).
    Whatever the dips, the n returned is a counted point that fits: one settled as fitting by a counted point
    beyond it would have settled the point after it too.
    """
    counts: dict[int, int] = {}

    def count(n: int) -> int:
        if n not in counts:
            counts[n] = len(encode(tokenizer, build(n)))
        return counts[n]

    def settled_or_counted(n: int) -> bool:
        if any(m >= n and c + COUNT_DIP_TOKENS <= target_tokens for m, c in counts.items()):
            return True
        if any(m <= n and c - COUNT_DIP_TOKENS > target_tokens for m, c in counts.items()):
            return False
        return count(n) <= target_tokens

    if count(0) > target_tokens:
        raise ValueError(f"even the empty prompt is longer than {target_tokens} tokens")
    count(SECANT_PROBE)
    for aim in (target_tokens - COUNT_DIP_TOKENS - 2, target_tokens + COUNT_DIP_TOKENS + 2):
        for _ in range(SECANT_STEPS):
            (n0, c0), (n1, c1) = sorted(counts.items(), key=lambda item: abs(item[1] - aim))[:2]
            guess = max(0, round(n0 + (aim - c0) * (n1 - n0) / (c1 - c0))) if c0 != c1 else n0
            if guess in counts:
                break
            count(guess)
    return _doubling_bisection(settled_or_counted)


def _doubling_bisection(fits) -> int:
    """The largest n with fits(n) that doubling from 1 and then bisecting finds (fits(0) holds)."""
    lo, hi = 0, 1
    while fits(hi):
        lo, hi = hi, hi * 2
    while hi - lo > 1:
        mid = (lo + hi) // 2
        lo, hi = (mid, hi) if fits(mid) else (lo, mid)
    return lo


def _filler(n_chars: int) -> str:
    repeats = n_chars // (len(FILLER) + 1) + 1
    return " ".join([FILLER] * repeats)[:n_chars]


def passkey_prompt(n_filler_chars: int, depth: float, key: int) -> str:
    """The Landmark prompt with `n_filler_chars` of filler, `depth` of it before the needle."""
    n_prefix = round(depth * n_filler_chars)
    needle = f"The pass key is {key}. Remember it. {key} is the pass key."
    return "\n".join([INSTRUCTION, _filler(n_prefix), needle, _filler(n_filler_chars - n_prefix), QUESTION])


def build_passkey_prompt(tokenizer, length: int, depth: float, key: int) -> str:
    """The longest Landmark prompt of at most `length` tokens (within a few tokens of it)."""
    if not 0.0 <= depth <= 1.0:
        raise ValueError(f"depth must be in [0, 1], got {depth}")
    n_chars = longest_fitting(lambda n: passkey_prompt(n, depth, key), tokenizer, length)
    return passkey_prompt(n_chars, depth, key)


def passkey_key(seed: int, length: int, depth: float, trial: int) -> int:
    """K in 1..50000, fixed by (seed, cell, trial) so that any cell can be rerun alone."""
    return random.Random(f"passkey/{seed}/{length}/{depth}/{trial}").randint(1, 50000)


def teacher_forced_trials(tokenizer, length: int, depths, trials: int, seed: int = 0) -> list[tuple[float, list[int], int]]:
    """Inputs of teacher-forced passkey scoring (a trial counts when argmax predicts every key token, the event of
    greedy generation emitting the key): per trial t, at depth depths[t % len(depths)], (depth, the prompt's ids
    followed by those of " KEY", the number of key tokens)."""
    out = []
    for trial in range(trials):
        depth = depths[trial % len(depths)]
        key = passkey_key(seed, length, depth, trial)
        prompt = build_passkey_prompt(tokenizer, length, depth, key)
        ids, full = encode(tokenizer, prompt), encode(tokenizer, f"{prompt} {key}")
        if full[: len(ids)] != ids:
            raise ValueError("the tokenizer merges the prompt's end with the key: the key tokens are not a suffix")
        out.append((depth, full, len(full) - len(ids)))
    return out


def passkey_correct(generated_text: str, key: int) -> bool:
    return first_integer(generated_text) == key


def generate_text(method, tokenizer, prompt: str, max_new_tokens: int) -> str:
    """The method's greedy answer to `prompt`: every passkey, niah and ruler trial runs the method here, the one
    place these protocols import torch (their prompts, defaults and plots need none: eval's parser, the report)."""
    import torch

    input_ids = torch.tensor(encode(tokenizer, prompt), dtype=torch.long)
    with torch.no_grad():
        new_ids = method.generate(input_ids, max_new_tokens)
    return tokenizer.decode(torch.as_tensor(new_ids).tolist(), skip_special_tokens=True)


def passkey_trial(method, tokenizer, seed: int, length: int, depth: float, trial: int, max_new_tokens: int) -> dict:
    """One prompt: its key, the method's answer and whether it holds the key."""
    key = passkey_key(seed, length, depth, trial)
    prompt = build_passkey_prompt(tokenizer, length, depth, key)
    output = generate_text(method, tokenizer, prompt, max_new_tokens)
    return {"length": length, "depth": depth, "trial": trial, "key": key,
            "prompt_tokens": len(encode(tokenizer, prompt)), "output": output, "correct": passkey_correct(output, key)}


def run_passkey(method, tokenizer, lengths, depths=DEFAULT_DEPTHS, trials=10, seed=0, max_new_tokens=10,
                progress=True, done=(), on_record=None):
    """Accuracy per (length, depth) cell over `trials` prompts; also per length and per trial.

    `done`: records of trials already run (a journal of a stopped run), reused instead of run again;
    `on_record(record)` is called after each trial that runs (to journal it)."""
    planned = list(itertools.product(lengths, depths, range(trials)))
    reuse = ReusedTrials(done, ("length", "depth", "trial"), planned, on_record, "passkey", progress)
    cells, records = [], []
    for length in lengths:
        for depth in depths:
            correct = 0
            for trial in range(trials):
                record = reuse((length, depth, trial), lambda: passkey_trial(
                    method, tokenizer, seed, length, depth, trial, max_new_tokens))
                correct += record["correct"]
                records.append(record)
            cells.append({"length": length, "depth": depth, "correct": correct, "trials": trials,
                          "accuracy": correct / trials})
    reuse.close()
    return {"cells": cells, "per_length": accuracy_per_length(cells), "records": records}


def accuracy_per_length(cells) -> dict[int, float]:
    """Mean accuracy over depths, per length (all cells of a length have the same number of trials)."""
    by_length = {}
    for cell in cells:
        by_length.setdefault(cell["length"], []).append(cell["accuracy"])
    return {length: sum(v) / len(v) for length, v in by_length.items()}


def plot_heatmap(cells, path, title: str) -> None:
    """Depth (rows) x length (columns) accuracy heatmap, annotated with percentages."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    lengths = sorted({c["length"] for c in cells})
    depths = sorted({c["depth"] for c in cells})
    grid = [[float("nan")] * len(lengths) for _ in depths]
    for c in cells:
        grid[depths.index(c["depth"])][lengths.index(c["length"])] = 100 * c["accuracy"]
    fig, ax = plt.subplots(figsize=(1.2 * len(lengths) + 2.5, 0.5 * len(depths) + 1.8))
    image = ax.imshow(grid, cmap="RdYlGn", vmin=0, vmax=100, aspect="auto")
    for i, row in enumerate(grid):
        for j, value in enumerate(row):
            if value == value:  # not NaN
                ax.text(j, i, f"{value:.0f}", ha="center", va="center", fontsize=8)
    ax.set_xticks(range(len(lengths)), [format_length(n) for n in lengths])
    ax.set_yticks(range(len(depths)), [f"{100 * d:.0f}%" for d in depths])
    ax.set_xlabel("context length (tokens)")
    ax.set_ylabel("needle depth")
    ax.set_title(title, fontsize=9)
    fig.colorbar(image, ax=ax, label="accuracy (%)")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
