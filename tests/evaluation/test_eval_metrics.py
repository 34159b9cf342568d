"""Metric values against hand-computed numbers."""

import math

import pytest

from sharedllm.evaluation import metrics


def test_normalize_answer_lowercases_drops_punctuation_articles_and_spaces():
    assert metrics.normalize_answer("  The Cat,  sat on a MAT! ") == "cat sat on mat"


def test_token_f1_hand_computed():
    # pred tokens {cat, sat, on, mat} (articles dropped), gold {cat, sat, on, hat}: 3 common
    # P = 3/4, R = 3/4 -> F1 = 0.75
    assert metrics.token_f1("The cat sat on the mat.", "a cat sat on a hat") == pytest.approx(0.75)
    # pred "paris france" vs gold "paris": P = 1/2, R = 1 -> F1 = 2/3
    assert metrics.token_f1("Paris, France", "Paris") == pytest.approx(2 / 3)
    assert metrics.token_f1("London", "Paris") == 0.0
    assert metrics.token_f1("", "Paris") == 0.0


def test_rouge_l_hand_computed():
    # pred: the cat was found under the bed (7), gold: the cat was under the bed (6)
    # LCS = the cat was under the bed = 6 -> P = 6/7, R = 1, F = 2*(6/7)/(6/7+1) = 12/13
    assert metrics.rouge_l("The cat was found under the bed.", "the cat was under the bed") == pytest.approx(12 / 13)
    # order matters: LCS("a b c d", "d c b a") = 1 -> P = R = 1/4 -> F = 1/4
    assert metrics.rouge_l("a b c d", "d c b a") == pytest.approx(0.25)
    assert metrics.rouge_l("", "anything") == 0.0


def test_levenshtein_and_edit_similarity():
    assert metrics.levenshtein("kitten", "sitting") == 3
    assert metrics.levenshtein("", "abc") == 3
    assert metrics.levenshtein("flaw", "lawn") == 2
    assert metrics.edit_similarity("kitten", "sitting") == pytest.approx(1 - 3 / 7)
    assert metrics.edit_similarity("same", "same") == 1.0
    assert metrics.edit_similarity("", "") == 1.0


def test_code_sim_skips_comment_and_fence_lines():
    prediction = "\n# the next line\n```python\nreturn x + 1\n"
    assert metrics.code_sim_score(prediction, "return x + 1") == 1.0
    assert metrics.code_sim_score("return x", "return x + 1") == pytest.approx(1 - 4 / 12)


def test_classification_score_longbench_style():
    classes = ["Location", "Description", "Abbreviation", "City"]
    assert metrics.classification_score("Type: Location", "Location", classes) == 1.0
    # two classes named, one right -> 1/2
    assert metrics.classification_score("Location or City", "City", classes) == 0.5
    assert metrics.classification_score("Description", "Location", classes) == 0.0
    # a class that is a strict substring of the gold label does not count as a second guess
    assert metrics.classification_score("Entity, Entity type", "Entity type", ["Entity", "Entity type"]) == 1.0


def test_count_and_retrieval_scores():
    assert metrics.count_score("There are 12 paragraphs", "12") == 1.0
    assert metrics.count_score("12 or 13", "12") == 0.5
    assert metrics.count_score("no idea", "12") == 0.0
    assert metrics.retrieval_score("Paragraph 7", "Paragraph 7") == 1.0
    assert metrics.retrieval_score("Paragraph 3, maybe 7", "Paragraph 7") == 0.5


def test_match_metrics():
    assert metrics.exact_match("The Eiffel Tower.", "eiffel tower") == 1.0
    assert metrics.substring_match("It is the EIFFEL tower", "Eiffel Tower") == 1.0
    assert metrics.substring_match("It is Big Ben", "Eiffel Tower") == 0.0
    assert metrics.string_match_all("values: 111, 333", ["111", "222", "333", "444"]) == 0.5


@pytest.mark.parametrize("text,expected", [
    ("The pass key is 12345.", 12345),
    (" 42. Remember it.", 42),
    ("no number", None),
    ("", None),
    ("key: 007 then 9", 7),
])
def test_first_integer(text, expected):
    assert metrics.first_integer(text) == expected


def test_f1_is_symmetric_in_precision_recall():
    a, b = "one two three four", "one two"
    assert metrics.token_f1(a, b) == metrics.token_f1(b, a) == pytest.approx(2 * 1 * 0.5 / 1.5)
    assert not math.isnan(metrics.rouge_l(a, b))
