"""LongBench evaluation on files the user provides (the data cannot be fetched here).

Records are LongBench's (and LongBench-E's) JSON lines: `input`, `context`, `answers` (a non-empty list of
strings), `dataset` (default: the file name; `<name>_e` is LongBench-E's copy of `<name>`), and `all_classes`
for trec. The English datasets use LongBench's published templates (config/dataset2prompt.json), per-dataset
max_new_tokens (config/dataset2maxlen.json) and metrics; another dataset name gets a generic QA prompt and token
F1. Chinese datasets (their metrics tokenize with jieba) and InfiniteBench files (`answer`, other prompts and
metrics) are refused when the files are read, not scored wrongly. Prompts longer than the token budget keep their
first and last halves (LongBench's middle truncation, applied to token ids); decoding is greedy; the score of a
record is the best over its gold answers, as in LongBench's eval.py.
"""

import json
import re
from pathlib import Path

import torch
from tqdm.auto import tqdm

from sharedllm.cli import InputError

from . import metrics
from .passkey import encode

PROMPTS = {
    "narrativeqa": "You are given a story, which can be either a novel or a movie script, and a question. Answer the question as concisely as you can, using a single phrase if possible. Do not provide any explanation.\n\nStory: {context}\n\nNow, answer the question based on the story as concisely as you can, using a single phrase if possible. Do not provide any explanation.\n\nQuestion: {input}\n\nAnswer:",  # noqa: E501
    "qasper": "You are given a scientific article and a question. Answer the question as concisely as you can, using a single phrase or sentence if possible. If the question cannot be answered based on the information in the article, write \"unanswerable\". If the question is a yes/no question, answer \"yes\", \"no\", or \"unanswerable\". Do not provide any explanation.\n\nArticle: {context}\n\n Answer the question based on the above article as concisely as you can, using a single phrase or sentence if possible. If the question cannot be answered based on the information in the article, write \"unanswerable\". If the question is a yes/no question, answer \"yes\", \"no\", or \"unanswerable\". Do not provide any explanation.\n\nQuestion: {input}\n\nAnswer:",  # noqa: E501
    "multifieldqa_en": "Read the following text and answer briefly.\n\n{context}\n\nNow, answer the following question based on the above text, only give me the answer and do not output any other words.\n\nQuestion: {input}\nAnswer:",  # noqa: E501
    "hotpotqa": "Answer the question based on the given passages. Only give me the answer and do not output any other words.\n\nThe following are given passages.\n{context}\n\nAnswer the question based on the given passages. Only give me the answer and do not output any other words.\n\nQuestion: {input}\nAnswer:",  # noqa: E501
    "gov_report": "You are given a report by a government agency. Write a one-page summary of the report.\n\nReport:\n{context}\n\nNow, write a one-page summary of the report.\n\nSummary:",  # noqa: E501
    "qmsum": "You are given a meeting transcript and a query containing a question or instruction. Answer the query in one or more sentences.\n\nTranscript:\n{context}\n\nNow, answer the query based on the above meeting transcript in one or more sentences.\n\nQuery: {input}\nAnswer:",  # noqa: E501
    "multi_news": "You are given several news passages. Write a one-page summary of all news. \n\nNews:\n{context}\n\nNow, write a one-page summary of all the news.\n\nSummary:",  # noqa: E501
    "trec": "Please determine the type of the question below. Here are some examples of questions.\n\n{context}\n{input}",  # noqa: E501
    "triviaqa": "Answer the question based on the given passage. Only give me the answer and do not output any other words. The following are some examples.\n\n{context}\n\n{input}",  # noqa: E501
    "samsum": "Summarize the dialogue into a few short sentences. The following are some examples.\n\n{context}\n\n{input}",  # noqa: E501
    "passage_count": "There are some paragraphs below sourced from Wikipedia. Some of them may be duplicates. Please carefully read these paragraphs and determine how many unique paragraphs there are after removing duplicates. In other words, how many non-repeating paragraphs are there in total?\n\n{context}\n\nPlease enter the final count of unique paragraphs after removing duplicates. The output format should only contain the number, such as 1, 2, 3, and so on.\n\nThe final answer is: ",  # noqa: E501
    "passage_retrieval_en": "Here are 30 paragraphs from Wikipedia, along with an abstract. Please determine which paragraph the abstract is from.\n\n{context}\n\nThe following is an abstract.\n\n{input}\n\nPlease enter the number of the paragraph that the abstract is from. The answer format must be like \"Paragraph 1\", \"Paragraph 2\", etc.\n\nThe answer is: ",  # noqa: E501
    "lcc": "Please complete the code given below. \n{context}Next line of code:\n",
    "repobench-p": "Please complete the code given below. \n{context}{input}Next line of code:\n",
}
PROMPTS["2wikimqa"] = PROMPTS["musique"] = PROMPTS["hotpotqa"]
GENERIC_PROMPT = "{context}\n\nAnswer the question based on the text above.\n\nQuestion: {input}\nAnswer:"

MAX_NEW_TOKENS = {
    "narrativeqa": 128, "qasper": 128, "multifieldqa_en": 64, "hotpotqa": 32, "2wikimqa": 32, "musique": 32,
    "gov_report": 512, "qmsum": 512, "multi_news": 512, "trec": 64, "triviaqa": 32, "samsum": 128,
    "passage_count": 32, "passage_retrieval_en": 32, "lcc": 64, "repobench-p": 64,
}
GENERIC_MAX_NEW_TOKENS = 64

METRICS = {
    "narrativeqa": "f1", "qasper": "f1", "multifieldqa_en": "f1", "hotpotqa": "f1", "2wikimqa": "f1",
    "musique": "f1", "triviaqa": "f1", "gov_report": "rouge_l", "qmsum": "rouge_l", "multi_news": "rouge_l",
    "samsum": "rouge_l", "trec": "classification", "passage_count": "count",
    "passage_retrieval_en": "retrieval", "lcc": "code_sim", "repobench-p": "code_sim",
}
METRIC_FUNCTIONS = {
    "f1": metrics.token_f1,
    "rouge_l": metrics.rouge_l,
    "count": metrics.count_score,
    "retrieval": metrics.retrieval_score,
    "code_sim": metrics.code_sim_score,
}
# Few-shot datasets: the model keeps producing examples after its answer; LongBench keeps line one.
FIRST_LINE_ONLY = {"trec", "triviaqa", "samsum"}
# LongBench's Chinese datasets: their F1 and ROUGE tokenize with jieba and their prompts are Chinese; the English
# prompt and whitespace F1 would score them wrongly, so they are refused.
CHINESE_DATASETS = {"multifieldqa_zh", "dureader", "vcsum", "lsht", "passage_retrieval_zh"}


def load_records(paths) -> list[dict]:
    """JSON-lines records from user files; `dataset` defaults to the file name without extension.

    A file that is missing, not UTF-8, holds no record, or has a line that `check_record` refuses raises InputError
    naming the file and line: a bad file is never scored as an empty table, nor fails midway through a run."""
    records = []
    for path in map(Path, paths):
        try:
            lines = path.read_bytes().decode("utf-8").splitlines()
        except FileNotFoundError:
            raise InputError(f"{path}: no such file") from None
        except IsADirectoryError:
            raise InputError(f"{path} is a folder: pass the .jsonl files") from None
        except UnicodeDecodeError as err:
            raise InputError(f"{path} is not UTF-8 text (byte at offset {err.start})") from None
        found = 0
        for number, line in enumerate(lines, start=1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as err:
                raise InputError(f"{path} line {number}: not JSON ({err.msg} at column {err.colno})") from None
            if not isinstance(record, dict):
                raise InputError(f"{path} line {number}: a JSON {type(record).__name__}, not a record (object)")
            record["dataset"] = dataset_name(record.get("dataset", path.stem))
            check_record(record, f"{path} line {number}")
            records.append(record)
            found += 1
        if not found:
            raise InputError(f"{path} holds no record (one JSON object per line, LongBench format)")
    return records


def dataset_name(name) -> str:
    """LongBench-E names its copy of a dataset `<name>_e` (file and records): the same prompt and metric."""
    if not isinstance(name, str):
        return name  # check_record names the field
    base = name.removesuffix("_e")
    return base if base in METRICS else name


def check_record(record: dict, where: str) -> None:
    """Refuse, before any generation, a record that would crash or be scored wrongly midway through a run."""
    if "answer" in record and "answers" not in record:
        raise InputError(f"{where}: field `answer`, not LongBench's `answers` (an InfiniteBench record? its prompts "
                         "and metrics are not implemented)")
    missing = {"input", "context", "answers"} - record.keys()
    if missing:
        raise InputError(f"{where}: record without {sorted(missing)}")
    for field in ("input", "context", "dataset"):
        if not isinstance(record[field], str):
            raise InputError(f"{where}: field `{field}` is a JSON {type(record[field]).__name__}, not a string")
    dataset, answers, language = record["dataset"], gold_answers(record), record.get("language")
    if dataset in CHINESE_DATASETS or dataset.endswith("_zh") or language == "zh":  # code sets name theirs ("python")
        raise InputError(f"{where}: dataset {dataset}, language {language or 'zh'}: only English datasets are "
                         "implemented (the Chinese ones' prompts and jieba-tokenized metrics are not)")
    if not isinstance(answers, list) or not answers or not all(isinstance(a, str) for a in answers):
        raise InputError(f"{where}: field `answers` must be a non-empty list of strings, got {answers!r:.80}")
    if METRICS.get(dataset) == "classification":
        classes = record.get("all_classes")
        if not isinstance(classes, list) or not classes or not all(isinstance(c, str) for c in classes):
            raise InputError(f"{where}: {dataset} needs field `all_classes`, a non-empty list of class names")
    if METRICS.get(dataset) == "retrieval" and not all(re.search(r"Paragraph \d+", a) for a in answers):
        raise InputError(f"{where}: {dataset} answers name the paragraph as \"Paragraph N\", got {answers!r:.80}")


def gold_answers(record: dict) -> list:
    """A record's `answers` as a list: some files hold a single answer as a string."""
    answers = record["answers"]
    return [answers] if isinstance(answers, str) else answers


def build_prompt(record: dict) -> str:
    template = PROMPTS.get(record["dataset"], GENERIC_PROMPT)
    return template.format(context=record["context"], input=record["input"])


def truncate_middle(ids: list[int], budget: int) -> list[int]:
    """Keep the first and last halves of an over-long prompt (LongBench pred.py; InfiniteBench too)."""
    if len(ids) <= budget:
        return ids
    head = budget // 2
    return ids[:head] + ids[len(ids) - (budget - head):]


def score_record(record: dict, prediction: str) -> float:
    """Best score over the gold answers with the dataset's official metric."""
    dataset = record["dataset"]
    if dataset in FIRST_LINE_ONLY:
        prediction = prediction.lstrip("\n").split("\n")[0]
    metric = METRICS.get(dataset, "f1")
    answers = gold_answers(record)
    if metric == "classification":
        return max(metrics.classification_score(prediction, a, record["all_classes"]) for a in answers)
    return max(METRIC_FUNCTIONS[metric](prediction, str(a)) for a in answers)


@torch.no_grad()
def run_longbench(method, tokenizer, records, max_input_tokens, progress=True):
    """Greedy predictions and scores; returns per-dataset mean score (x100), counts and records."""
    per_dataset, outputs = {}, []
    for record in tqdm(records, desc=f"longbench {max_input_tokens}", disable=not progress):
        dataset = record["dataset"]
        max_new = MAX_NEW_TOKENS.get(dataset, GENERIC_MAX_NEW_TOKENS)
        ids = encode(tokenizer, build_prompt(record))
        kept = truncate_middle(ids, max_input_tokens)
        new_ids = method.generate(torch.tensor(kept, dtype=torch.long), max_new)
        prediction = tokenizer.decode(torch.as_tensor(new_ids).tolist(), skip_special_tokens=True)
        score = score_record(record, prediction)
        per_dataset.setdefault(dataset, []).append(score)
        outputs.append({"dataset": dataset, "prompt_tokens": len(ids), "kept_tokens": len(kept),
                        "prediction": prediction, "answers": record["answers"], "score": score})
    scores = {d: 100 * sum(s) / len(s) for d, s in sorted(per_dataset.items())}
    if scores:
        scores["average"] = sum(scores.values()) / len(scores)
    return {"scores": scores, "counts": {d: len(s) for d, s in sorted(per_dataset.items())},
            "metrics": {d: METRICS.get(d, "f1") for d in per_dataset}, "records": outputs}
