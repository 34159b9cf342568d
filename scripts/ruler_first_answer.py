"""RULER's score (string match: the gold value anywhere in the answer) beside a stricter reading of the same answers:
whether the first number of six or more digits answered is the gold (the niah tasks' values are 7-digit numbers),
and of the wrong first numbers, how many are another needle's value of the same prompt (the needles' values depend
on the task, seed, trial and length only, so the prompt is rebuilt without its haystack). An answer that lists
several needles' values scores under string match without having told them apart.

    python scripts/ruler_first_answer.py results/retrieval/ruler_sharedllm_ruler_20261206-184743.json ...
"""

import argparse
import json
import re
from pathlib import Path

from sharedllm.evaluation.needle import make_sample
from sharedllm.loading import DEFAULT_BASE, load_base_tokenizer

NUMBER = re.compile(r"\d{6,8}")


def first_answer_counts(result: dict, tokenizer) -> tuple[int, int, int, int]:
    """(string-match hits, first number right, wrong first numbers that are another needle's value, trials) of one
    RULER result file's single-gold trials."""
    hits = first_right = other_needle = trials = 0
    for record in result["details"]["records"]:
        if len(record["golds"]) != 1:
            continue
        numbers = NUMBER.findall(record["output"])
        first = numbers[0] if numbers else None
        hits += record["score"] == 1.0
        first_right += first == record["golds"][0]
        if first is not None and first != record["golds"][0]:
            sample = make_sample(record["task"], tokenizer, record["length"], f"{result['seed']}/{record['trial']}",
                                 fill=False)
            if sample.golds != record["golds"]:
                raise SystemExit(f"trial {record['trial']}: the rebuilt prompt asks for {sample.golds}, the file "
                                 f"for {record['golds']} (another seed or task?)")
            other_needle += first in NUMBER.findall(sample.prompt)
        trials += 1
    return hits, first_right, other_needle, trials


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("files", nargs="+", type=Path, help="RULER result files (`sharedllm eval ruler`)")
    tokenizer = load_base_tokenizer(DEFAULT_BASE)  # the needles' values do not depend on it
    for path in parser.parse_args().files:
        result = json.loads(path.read_text())
        hits, first_right, other_needle, trials = first_answer_counts(result, tokenizer)
        tasks = " ".join(result["details"].get("tasks") or [])
        lengths = " ".join(f"{n // 1024}K" for n in result["lengths"])
        print(f"{path.name}: {result['method']} {tasks} {lengths}: string match {hits}/{trials}, "
              f"first number right {first_right}/{trials} (of the wrong ones, another needle's value: {other_needle})")


if __name__ == "__main__":
    main()
