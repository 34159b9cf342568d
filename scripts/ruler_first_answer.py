"""RULER's score (string match: the gold value anywhere in the answer) beside a stricter reading of the same answers:
whether the first number of six or more digits answered is the gold (the niah tasks' values are 7-digit numbers),
and of the wrong first numbers, how many are another needle's value of the same prompt (the needles' values depend
on the task, seed, trial and length only, so the prompt is rebuilt with the built-in filler instead of its
haystack) and where that needle stands against the asked one: before it in the text, after it, or next to it (no
other needle between them). The needles' depths depend on the same, so the rebuilt prompt holds them in the same
order, but for two needles so close that one haystack puts them at one sentence boundary and the other does not.
An answer that lists several needles' values scores under string match without having told them apart.

    python scripts/ruler_first_answer.py results/retrieval/ruler_sharedllm_ruler_20261206-184743.json ...
"""

import argparse
import json
import re
from pathlib import Path

from sharedllm.evaluation.needle import make_sample
from sharedllm.loading import DEFAULT_BASE, load_base_tokenizer

NUMBER = re.compile(r"\d{6,8}")


def first_answer_counts(result: dict, tokenizer) -> dict[str, int]:
    """Of one RULER result file's single-gold trials: string-match hits, first number right, wrong first numbers that
    are another needle's value, and of those the needles before the asked one in the text, after it, next to it."""
    counts = dict.fromkeys(("hits", "first_right", "other_needle", "before", "after", "next_to", "trials"), 0)
    for record in result["details"]["records"]:
        if len(record["golds"]) != 1:
            continue
        numbers = NUMBER.findall(record["output"])
        first = numbers[0] if numbers else None
        counts["hits"] += record["score"] == 1.0
        counts["first_right"] += first == record["golds"][0]
        if first is not None and first != record["golds"][0]:
            sample = make_sample(record["task"], tokenizer, record["length"], f"{result['seed']}/{record['trial']}")
            if sample.golds != record["golds"]:
                raise SystemExit(f"trial {record['trial']}: the rebuilt prompt asks for {sample.golds}, the file "
                                 f"for {record['golds']} (another seed or task?)")
            in_text_order = NUMBER.findall(sample.prompt)  # the needles' values: the filler holds no number
            if first in in_text_order:
                answered, asked = in_text_order.index(first), in_text_order.index(record["golds"][0])
                counts["other_needle"] += 1
                counts["before" if answered < asked else "after"] += 1
                counts["next_to"] += abs(answered - asked) == 1
        counts["trials"] += 1
    return counts


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("files", nargs="+", type=Path, help="RULER result files (`sharedllm eval ruler`)")
    tokenizer = load_base_tokenizer(DEFAULT_BASE)  # the needles' values do not depend on it
    for path in parser.parse_args().files:
        result = json.loads(path.read_text())
        c = first_answer_counts(result, tokenizer)
        tasks = " ".join(result["details"].get("tasks") or [])
        lengths = " ".join(f"{n // 1024}K" for n in result["lengths"])
        print(f"{path.name}: {result['method']} {tasks} {lengths}: string match {c['hits']}/{c['trials']}, "
              f"first number right {c['first_right']}/{c['trials']} (of the wrong ones, another needle's value: "
              f"{c['other_needle']}: {c['before']} before the asked one in the text, {c['after']} after, "
              f"{c['next_to']} next to it)")


if __name__ == "__main__":
    main()
