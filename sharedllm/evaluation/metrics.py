"""Judge-free answer metrics: LongBench's official scorers, RULER's string match, passkey parsing.

Everything is implemented here (no rouge / fuzzywuzzy dependency) and checked against hand-computed
values in tests/test_eval_metrics.py. Scores are in [0, 1]; tables multiply by 100.
"""

import re
import string
from collections import Counter

_PUNCTUATION = set(string.punctuation)


def normalize_answer(text: str) -> str:
    """LongBench / SQuAD normalisation: lowercase, drop punctuation, articles and extra whitespace."""
    text = "".join(ch for ch in text.lower() if ch not in _PUNCTUATION)
    text = re.sub(r"\b(a|an|the)\b", " ", text)
    return " ".join(text.split())


def token_f1(prediction: str, ground_truth: str) -> float:
    """LongBench `qa_f1_score`: bag-of-tokens F1 after `normalize_answer`."""
    pred_tokens = normalize_answer(prediction).split()
    gold_tokens = normalize_answer(ground_truth).split()
    num_same = sum((Counter(pred_tokens) & Counter(gold_tokens)).values())
    if num_same == 0:
        return 0.0
    precision = num_same / len(pred_tokens)
    recall = num_same / len(gold_tokens)
    return 2 * precision * recall / (precision + recall)


def _lcs_length(a: list, b: list) -> int:
    """Longest common subsequence length, O(len(a) * len(b)) time, O(len(b)) memory."""
    previous = [0] * (len(b) + 1)
    for x in a:
        current = [0]
        for j, y in enumerate(b, start=1):
            current.append(previous[j - 1] + 1 if x == y else max(previous[j], current[j - 1]))
        previous = current
    return previous[-1]


def _rouge_tokens(text: str) -> list[str]:
    # The `rouge` package LongBench calls lowercases and splits on non-alphanumerics.
    return re.sub(r"[^a-z0-9]+", " ", text.lower()).split()


def rouge_l(prediction: str, ground_truth: str) -> float:
    """ROUGE-L F1 on tokens: P = LCS / |pred|, R = LCS / |gold|, F = 2PR / (P + R)."""
    pred_tokens, gold_tokens = _rouge_tokens(prediction), _rouge_tokens(ground_truth)
    if not pred_tokens or not gold_tokens:
        return 0.0
    lcs = _lcs_length(pred_tokens, gold_tokens)
    if lcs == 0:
        return 0.0
    precision, recall = lcs / len(pred_tokens), lcs / len(gold_tokens)
    return 2 * precision * recall / (precision + recall)


def classification_score(prediction: str, ground_truth: str, all_classes: list[str]) -> float:
    """LongBench accuracy for trec-style tasks: 1 / (#classes named) if the gold class is among them.

    Classes that are a strict substring of the gold label are not counted as extra guesses.
    """
    matched = [name for name in all_classes if name in prediction]
    matched = [name for name in matched if not (name in ground_truth and name != ground_truth)]
    return 1.0 / len(matched) if ground_truth in matched else 0.0


def levenshtein(a: str, b: str) -> int:
    """Edit distance with unit-cost insertions, deletions and substitutions."""
    if len(a) < len(b):
        a, b = b, a
    previous = list(range(len(b) + 1))
    for i, x in enumerate(a, start=1):
        current = [i]
        for j, y in enumerate(b, start=1):
            current.append(min(previous[j] + 1, current[j - 1] + 1, previous[j - 1] + (x != y)))
        previous = current
    return previous[-1]


def edit_similarity(prediction: str, ground_truth: str) -> float:
    """1 - Levenshtein / max(len): 1.0 for identical strings (and for two empty ones)."""
    longest = max(len(prediction), len(ground_truth))
    return 1.0 if longest == 0 else 1.0 - levenshtein(prediction, ground_truth) / longest


def code_sim_score(prediction: str, ground_truth: str) -> float:
    """LongBench code metric: the first generated line that is not a comment or a fence, vs the gold line."""
    first_code_line = ""
    for line in prediction.lstrip("\n").split("\n"):
        if "`" not in line and "#" not in line and "//" not in line:
            first_code_line = line
            break
    return edit_similarity(first_code_line, ground_truth)


def count_score(prediction: str, ground_truth: str) -> float:
    """LongBench passage_count: fraction of the numbers in the output that equal the gold count."""
    numbers = re.findall(r"\d+", prediction)
    return sum(n == str(ground_truth) for n in numbers) / len(numbers) if numbers else 0.0


def retrieval_score(prediction: str, ground_truth: str) -> float:
    """LongBench passage_retrieval: fraction of numbers in the output equal to the gold paragraph id."""
    gold_id = re.findall(r"Paragraph (\d+)", ground_truth)[0]
    numbers = re.findall(r"\d+", prediction)
    return sum(n == gold_id for n in numbers) / len(numbers) if numbers else 0.0


def exact_match(prediction: str, ground_truth: str) -> float:
    return float(normalize_answer(prediction) == normalize_answer(ground_truth))


def substring_match(prediction: str, ground_truth: str) -> float:
    """Case-insensitive: does the gold string occur in the output?"""
    return float(ground_truth.lower() in prediction.lower())


def string_match_all(prediction: str, golds: list[str]) -> float:
    """RULER's score: the fraction of gold strings found (case-insensitive) in the output."""
    return sum(substring_match(prediction, gold) for gold in golds) / len(golds)


def first_integer(text: str) -> int | None:
    """The first run of digits in `text` as an int ("The pass key is 12345." -> 12345), else None."""
    match = re.search(r"\d+", text)
    return int(match.group()) if match else None
