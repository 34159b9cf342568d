"""RULER's score (string match: the gold value anywhere in the answer) beside a stricter reading of the same answers:
whether the first number of six or more digits answered is the gold (the niah tasks' values are 7-digit numbers).
An answer that lists several needles' values scores under string match without having told them apart.

    python scripts/ruler_first_answer.py results/retrieval/ruler_sharedllm_ruler_20261206-184743.json ...
"""

import argparse
import json
import re
from pathlib import Path

NUMBER = re.compile(r"\d{6,8}")


def first_answer_counts(result: dict) -> tuple[int, int, int]:
    """(string-match hits, first number right, trials) of one RULER result file's single-gold trials."""
    hits = first_right = trials = 0
    for record in result["details"]["records"]:
        if len(record["golds"]) != 1:
            continue
        numbers = NUMBER.findall(record["output"])
        hits += record["score"] == 1.0
        first_right += bool(numbers) and numbers[0] == record["golds"][0]
        trials += 1
    return hits, first_right, trials


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("files", nargs="+", type=Path, help="RULER result files (`sharedllm eval ruler`)")
    for path in parser.parse_args().files:
        result = json.loads(path.read_text())
        hits, first_right, trials = first_answer_counts(result)
        tasks = " ".join(result["details"].get("tasks") or [])
        lengths = " ".join(f"{n // 1024}K" for n in result["lengths"])
        print(f"{path.name}: {result['method']} {tasks} {lengths}: string match {hits}/{trials}, "
              f"first number right {first_right}/{trials}")


if __name__ == "__main__":
    main()
