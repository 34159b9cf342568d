"""Needle in a haystack on real prose, and RULER-style synthetic tasks (judge-free).

Every task is a seeded generator returning a `Sample` (prompt text ending with RULER's answer prefix,
gold strings, generation budget); the score is RULER's string match: the fraction of gold strings found,
case-insensitive, in the greedy output. Prompts are filled to `length - max_new_tokens` tokens (RULER
counts the answer in the sequence length) by bisection on the number of haystack sentences or words.

Tasks (RULER, NVIDIA, with its templates):
* niah_single / niah_multikey / niah_multivalue / niah_multiquery: "One of the special magic numbers
  for <key> is: <value>." needles at sentence boundaries of a haystack that is either the repeated
  grass/sky filler or real prose (`haystack_text`).
* variable_tracking: "VAR ABCDE = 12345." then a chain "VAR FGHIJ = VAR ABCDE." scattered in filler;
  every variable of the chain must be named.
* common_words: a numbered word list where 10 words repeat far more often; name the top 10. Words are
  pronounceable pseudo-words built from syllables (RULER samples English words from a package that is
  not available offline).
"""

import itertools
import random
import re
from dataclasses import dataclass, field

from .journal import ReusedTrials
from .metrics import string_match_all
from .passkey import FILLER, encode, generate_text, longest_fitting

FILLER_SENTENCES = re.split(r"(?<=\.) ", FILLER)
ADJECTIVES = ("ancient bitter brave calm clever cold crooked curious damp eager elegant empty fancy fierce "
              "gentle gloomy golden grumpy hollow humble icy jolly lazy little lively loud lucky mellow "
              "narrow nervous noisy odd plain proud quiet rapid rough shiny silent silly sleepy slow "
              "smooth sticky sturdy swift tame tender tidy tiny vast wild witty young zealous").split()
NOUNS = ("anchor apple badger barrel basket beacon bicycle blanket bottle bridge bucket cabin camera "
         "candle canyon castle cactus cellar chimney compass cottage crayon dentist dolphin engine falcon "
         "feather fiddle garden glacier hammer harbor helmet island kettle ladder lantern lemon magnet "
         "meadow mirror needle orchard otter paddle parrot pencil pillow pirate puzzle rabbit saddle "
         "sailor tractor trumpet tunnel violin walrus window wizard").split()
SYLLABLES = [c + v for c in "bdfgklmnprstvz" for v in "aeiou"]

NIAH_TEMPLATE = ("Some special magic {kind} are hidden within the following text. Make sure to memorize it. "
                 "I will quiz you about the {kind} afterwards.\n{context}\nWhat are all the special magic "
                 "{kind} for {query} mentioned in the provided text? The special magic {kind} for {query} "
                 "mentioned in the provided text are")
NEEDLE_TEMPLATE = "One of the special magic {kind} for {key} is: {value}."
VT_TEMPLATE = ("Memorize and track the chain(s) of variable assignment hidden in the following text.\n\n"
               "{context}\nQuestion: Find all variables that are assigned the value {value} in the text "
               "above. Answer: According to the chain(s) of variable assignment in the text above, {n} "
               "variables are assigned the value {value}, they are:")
CWE_TEMPLATE = ("Below is a numbered list of words. In these words, some appear more often than others. "
                "Memorize the ones that appear most often.\n{context}\nQuestion: What are the 10 most common "
                "words in the above list? Answer: The top 10 words that appear most frequently in the list "
                "are:")

# task -> (needle counts for NIAH, RULER's max_new_tokens)
RULER_TASKS = {
    "niah_single": dict(n_keys=1, n_values=1, n_queries=1, max_new_tokens=128),
    "niah_multikey": dict(n_keys=4, n_values=1, n_queries=1, max_new_tokens=128),
    "niah_multivalue": dict(n_keys=1, n_values=4, n_queries=1, max_new_tokens=128),
    "niah_multiquery": dict(n_keys=4, n_values=1, n_queries=4, max_new_tokens=128),
    "variable_tracking": dict(max_new_tokens=30),
    "common_words": dict(max_new_tokens=120),
}


@dataclass
class Sample:
    task: str
    prompt: str
    golds: list[str]
    max_new_tokens: int
    info: dict = field(default_factory=dict)


def prose_sentences(text: str) -> list[str]:
    """Sentences of real prose (split after . ! ? followed by whitespace), inner whitespace collapsed."""
    sentences = [" ".join(s.split()) for s in re.split(r"(?<=[.!?])\s+", text)]
    return [s for s in sentences if s]


def load_haystack(split="test", domains=("books",)) -> str:
    """Concatenated documents of the project's corpus (the books by default), for prose haystacks."""
    from sharedllm.assets import load_documents

    docs = load_documents(split, list(domains))
    if not docs:
        raise ValueError(f"no {split} documents in domains {domains}")
    return "\n\n".join(doc.text for doc in docs)


def insert_at_depths(sentences: list[str], inserts: list[tuple[float, str]]) -> str:
    """Join sentences with each (depth, text) placed at the sentence boundary nearest depth * len."""
    slots = {}
    for depth, text in inserts:  # inserts keep their given order at a shared boundary
        slots.setdefault(round(depth * len(sentences)), []).append(text)
    parts = []
    for i in range(len(sentences) + 1):
        parts.extend(slots.get(i, []))
        if i < len(sentences):
            parts.append(sentences[i])
    return " ".join(parts)


def _fill(tokenizer, budget, build_with_n_sentences, fill=True):
    """The longest prompt of at most `budget` tokens; without `fill`, the shortest (no haystack at all): what the
    length check made before any method runs counts (`shortest_length`)."""
    if not fill:
        return build_with_n_sentences(0)
    n = longest_fitting(build_with_n_sentences, tokenizer, budget)
    return build_with_n_sentences(n)


def _cycle(sentences, n):
    # Haystacks shorter than the target are repeated rather than silently truncating the prompt.
    return [sentences[i % len(sentences)] for i in range(n)]


def _value(rng):
    """A needle's value: a 7-digit number, as RULER's niah tasks with number values draw it."""
    return str(rng.randint(1_000_000, 9_999_999))


def niah_sample(tokenizer, length, seed, n_keys=1, n_values=1, n_queries=1, haystack_text=None, depth=None,
                max_new_tokens=128, task="niah_single", fill=True) -> Sample:
    """NIAH with n_keys keys (n_queries of them asked), n_values values per asked key.

    The first needle goes at `depth` (random if None); the others at random depths. `fill=False`: the prompt without
    haystack (`_fill`).
    """
    rng = random.Random(f"{task}/{seed}/{length}/{depth}")
    keys = [f"{a}-{b}" for a, b in zip(rng.sample(ADJECTIVES, n_keys), rng.sample(NOUNS, n_keys))]
    values = {key: [_value(rng) for _ in range(n_values)] for key in keys}
    needles = [NEEDLE_TEMPLATE.format(kind="numbers", key=k, value=v) for k in keys for v in values[k]]
    depths = [rng.random() if depth is None else depth] + [rng.random() for _ in needles[1:]]
    asked = keys[:n_queries]
    query = asked[0] if n_queries == 1 else ", ".join(asked[:-1]) + ", and " + asked[-1]
    sentences = prose_sentences(haystack_text) if haystack_text else FILLER_SENTENCES
    if not sentences:
        raise ValueError("empty haystack")

    def build(n):
        context = insert_at_depths(_cycle(sentences, n), list(zip(depths, needles)))
        return NIAH_TEMPLATE.format(kind="numbers", context=context, query=query)

    prompt = _fill(tokenizer, length - max_new_tokens, build, fill)
    golds = [v for k in asked for v in values[k]]
    return Sample(task, prompt, golds, max_new_tokens, {"depth": depths[0], "keys": asked})


def _variable_name(rng):
    return "".join(rng.choice("ABCDEFGHIJKLMNOPQRSTUVWXYZ") for _ in range(5))


def variable_tracking_sample(tokenizer, length, seed, n_hops=4, max_new_tokens=30,
                             task="variable_tracking", fill=True) -> Sample:
    """One chain of n_hops + 1 variables holding the same value, statements in order inside filler."""
    rng = random.Random(f"{task}/{seed}/{length}")
    names = []
    while len(names) < n_hops + 1:
        name = _variable_name(rng)
        if name not in names:
            names.append(name)
    value = str(rng.randint(10_000, 99_999))
    statements = [f"VAR {names[0]} = {value}."] + [f"VAR {b} = VAR {a}." for a, b in zip(names, names[1:])]
    depths = sorted(rng.random() for _ in statements)  # sorted: an assignment never precedes its source

    def build(n):
        context = insert_at_depths(_cycle(FILLER_SENTENCES, n), list(zip(depths, statements)))
        return VT_TEMPLATE.format(context=context, value=value, n=len(names))

    prompt = _fill(tokenizer, length - max_new_tokens, build, fill)
    return Sample(task, prompt, names, max_new_tokens, {"value": value})


def _pseudo_words(rng, count):
    indices = rng.sample(range(len(SYLLABLES) ** 3), count)
    return ["".join(SYLLABLES[i // len(SYLLABLES) ** p % len(SYLLABLES)] for p in range(3)) for i in indices]


def common_words_sample(tokenizer, length, seed, n_common=10, max_new_tokens=120,
                        task="common_words", fill=True) -> Sample:
    """Numbered list: n_common words repeated freq_common times, uncommon words 3 times each.

    RULER repeats common words 30 times; short prompts (< 4K tokens) use 10 so that the list still
    has room for uncommon words.
    """
    budget = length - max_new_tokens
    freq_common, freq_uncommon = (30, 3) if length >= 4096 else (10, 3)
    rng = random.Random(f"{task}/{seed}/{length}")
    words = _pseudo_words(rng, n_common + max(budget, 0) // 2)  # every list entry costs >= 2 tokens
    common, uncommon = words[:n_common], words[n_common:]

    def build(n):
        items = common * freq_common + uncommon[:n] * freq_uncommon
        random.Random(f"{task}/{seed}/{length}/{n}").shuffle(items)
        context = "\n".join(f"{i}. {w}" for i, w in enumerate(items, start=1))
        return CWE_TEMPLATE.format(context=context)

    prompt = _fill(tokenizer, budget, build, fill)
    return Sample(task, prompt, common, max_new_tokens, {"freq_common": freq_common})


def make_sample(task, tokenizer, length, seed, haystack_text=None, depth=None, fill=True) -> Sample:
    """One seeded sample of a RULER task at `length` tokens (prompt + answer budget)."""
    spec = dict(RULER_TASKS[task], fill=fill)
    if task.startswith("niah"):
        return niah_sample(tokenizer, length, seed, haystack_text=haystack_text, depth=depth, task=task, **spec)
    if task == "variable_tracking":
        return variable_tracking_sample(tokenizer, length, seed, **spec)
    return common_words_sample(tokenizer, length, seed, **spec)


def shortest_length(tokenizer, sample: Sample) -> int:
    """Tokens of a sample built with `fill=False` (its prompt without haystack) and of its answer, which RULER counts
    in the length: a shorter length has no prompt of that sample. No haystack sentence is in such a prompt, so the
    haystack need not be read to count it."""
    return len(encode(tokenizer, sample.prompt)) + sample.max_new_tokens


def score_sample(sample: Sample, output: str) -> float:
    return string_match_all(output, sample.golds)


def sample_trial(method, tokenizer, sample, **key) -> dict:
    """One sample's record: its key (length, depth or task, trial), golds, the method's answer and its score."""
    output = generate_text(method, tokenizer, sample.prompt, sample.max_new_tokens)
    return {**key, "golds": sample.golds, "output": output, "score": score_sample(sample, output)}


NIAH_ANSWER_TOKENS = 32  # the generation budget of a needle-in-prose trial (one 7-digit number)


def run_needle_grid(method, tokenizer, lengths, depths, trials, seed, haystack_text, max_new_tokens=NIAH_ANSWER_TOKENS,
                    progress=True, done=(), on_record=None):
    """NIAH (single key -> 7-digit number) on real prose: accuracy per (length, depth) cell. `done` / `on_record`:
    trials of a stopped run reused / each new trial's record, as in `passkey.run_passkey`."""
    planned = list(itertools.product(lengths, depths, range(trials)))
    reuse = ReusedTrials(done, ("length", "depth", "trial"), planned, on_record, "niah", progress)
    cells, records = [], []
    for length in lengths:
        for depth in depths:
            scores = []
            for trial in range(trials):
                record = reuse((length, depth, trial), lambda: sample_trial(
                    method, tokenizer, niah_sample(tokenizer, length, f"{seed}/{trial}", haystack_text=haystack_text,
                                                   depth=depth, max_new_tokens=max_new_tokens),
                    length=length, depth=depth, trial=trial))
                scores.append(record["score"])
                records.append(record)
            cells.append({"length": length, "depth": depth, "trials": trials,
                          "accuracy": sum(scores) / trials})
    reuse.close()
    return {"cells": cells, "records": records}


def run_ruler(method, tokenizer, lengths, tasks, trials, seed, haystack_text=None, progress=True, done=(),
              on_record=None):
    """Mean score per task and length, and the average over tasks per length. `done` / `on_record`: trials of a
    stopped run reused / each new trial's record, as in `passkey.run_passkey`."""
    planned = list(itertools.product(lengths, tasks, range(trials)))
    reuse = ReusedTrials(done, ("length", "task", "trial"), planned, on_record, "ruler", progress)
    scores, records = {}, []
    for length in lengths:
        scores[length] = {}
        for task in tasks:
            task_scores = []
            for trial in range(trials):
                record = reuse((length, task, trial), lambda: sample_trial(
                    method, tokenizer, make_sample(task, tokenizer, length, f"{seed}/{trial}", haystack_text),
                    length=length, task=task, trial=trial))
                task_scores.append(record["score"])
                records.append(record)
            scores[length][task] = sum(task_scores) / trials
        scores[length]["average"] = sum(scores[length][t] for t in tasks) / len(tasks)
    reuse.close()
    return {"scores": scores, "records": records}


def effective_length(average_by_length: dict[int, float], threshold: float) -> int | None:
    """RULER's effective length: the longest length up to which every tested length scores > threshold.

    `threshold` is the base model's score at its native length; None if even the shortest fails.
    """
    best = None
    for length in sorted(average_by_length):
        if average_by_length[length] <= threshold:
            break
        best = length
    return best
