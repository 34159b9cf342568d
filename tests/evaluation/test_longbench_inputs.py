"""`longbench.load_records` refuses, before any generation, the records a run would crash on or score wrongly midway:
one line naming the file, line and field."""

import json

import pytest

from sharedllm.cli import InputError
from sharedllm.evaluation import longbench

QA = {"input": "q", "context": "c", "answers": ["a"]}


def _load(tmp_path, record, name="set.jsonl"):
    path = tmp_path / name
    path.write_text(json.dumps(record) + "\n")
    return longbench.load_records([path])


@pytest.mark.parametrize("record, name, message", [
    (QA | {"all_classes": None}, "trec.jsonl", "line 1: trec needs field `all_classes`, a non-empty list"),
    (QA | {"answers": []}, "set.jsonl", "line 1: field `answers` must be a non-empty list of strings, got []"),
    (QA | {"answers": [3]}, "set.jsonl", "line 1: field `answers` must be a non-empty list of strings, got [3]"),
    (QA | {"input": None}, "set.jsonl", "line 1: field `input` is a JSON NoneType, not a string"),
    (QA | {"answers": ["3"]}, "passage_retrieval_en.jsonl", 'answers name the paragraph as "Paragraph N"'),
    (QA, "multifieldqa_zh.jsonl", "dataset multifieldqa_zh, language zh: only English datasets are implemented"),
    (QA | {"dataset": "dureader", "language": "zh"}, "set.jsonl", "dataset dureader, language zh: only English"),
    (QA | {"language": "zh"}, "mine.jsonl", "dataset mine, language zh: only English"),
    ({"id": 0, "context": "c", "input": "q", "answer": ["a"], "options": []}, "longbook_qa_eng.jsonl",
     "line 1: field `answer`, not LongBench's `answers` (an InfiniteBench record?"),
])
def test_records_that_would_fail_or_score_wrongly_are_refused_when_read(tmp_path, record, name, message):
    with pytest.raises(InputError) as err:
        _load(tmp_path, record, name)
    assert str(err.value).startswith(f"{tmp_path / name} line 1: ") and message in str(err.value)


def test_longbench_e_names_read_as_their_datasets(tmp_path):
    # LongBench-E's trec_e is trec: the classification metric, not the generic prompt and F1
    trec_e = QA | {"dataset": "trec_e", "answers": ["Location"], "all_classes": ["Location", "Date"]}
    (record,) = _load(tmp_path, trec_e)
    assert record["dataset"] == "trec"
    assert longbench.score_record(record, "Location") == 1.0 and longbench.score_record(record, "Date") == 0.0
    assert _load(tmp_path, QA, "hotpotqa_e.jsonl")[0]["dataset"] == "hotpotqa"
    assert _load(tmp_path, QA, "my_set_e.jsonl")[0]["dataset"] == "my_set_e"  # not a LongBench set: its own name


def test_a_single_answer_string_and_other_names_still_load(tmp_path):
    (record,) = _load(tmp_path, QA | {"answers": "Paris", "language": "en"}, "my_custom_set.jsonl")
    assert record["dataset"] == "my_custom_set" and longbench.score_record(record, "Paris") == 1.0


def test_code_sets_that_name_their_programming_language_are_read(tmp_path):
    # LongBench's lcc / repobench-p records say "language": "python" (or java, c#): English sets, not Chinese ones
    assert _load(tmp_path, QA | {"dataset": "lcc", "language": "python"}, "lcc.jsonl")
