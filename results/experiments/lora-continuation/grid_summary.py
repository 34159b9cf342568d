"""Every headline cell of the default (renamed `joint-exercises` since the promotion) beside the candidate's cell of
the same windows or prompts (matched as `promote.py` matches them), with `sharedllm compare`'s paired line (A = the
default, B = the candidate) and the grid rule's verdict (README.md, "The rest of the grid"): a perplexity cell fails
when A is separated below 1, a passkey cell when the candidate reads fewer than 49 of 50, a RULER cell when it reads
more than one trial fewer than the default. Cells the candidate has not run yet are listed as such.

    python results/experiments/lora-continuation/grid_summary.py
"""

from promote import REPO, candidate_cells, judged_cells

from sharedllm.evaluation.compare import heldout_lines, retrieval_lines


def name(key: tuple) -> str:
    if key[0] == "heldout":
        return f"perplexity {key[1]} {int(key[2]) // 1024}K"
    tasks = " ".join(key[5]) if key[5] else ""
    return f"{key[0]} {tasks} {' '.join(f'{n // 1024}K' for n in key[1])}".replace("  ", " ")


def verdict(key: tuple, default: dict, candidate: dict) -> tuple[str, str]:
    """(compare's line, the rule's verdict) of one pair of cells."""
    if key[0] == "heldout":
        line = next(line for line in heldout_lines(default, candidate) if line.startswith("PPL A / PPL B"))
        return line, "fails" if "A is better" in line else "holds"
    line = retrieval_lines(default, candidate)[1]
    score = lambda side: float(line.split(f"{side} ")[1].split("/")[0])  # noqa: E731
    total = int(line.split("/")[1].split(",")[0].split(";")[0])
    if key[0] == "passkey":
        return line, "holds" if score("B") >= total - 1 else "fails"
    return line, "holds" if score("B") >= score("A") - 1 else "fails"


def main():
    candidates = candidate_cells()
    rows = []
    for key, (path, default) in sorted(judged_cells().items(), key=lambda item: name(item[0])):
        if key not in candidates:
            rows.append((name(key), "not run yet", "", str(path.relative_to(REPO))))
            continue
        if default["task"] == "heldout" and default["summary"].get("not_run"):
            rows.append((name(key), "nothing to score", "", default["summary"]["not_run"]))
            continue
        line, rule = verdict(key, default, candidates[key][1])
        rows.append((name(key), rule, line, str(candidates[key][0].relative_to(REPO))))
    for row in rows:
        print(" | ".join(row))
    held = [row for row in rows if row[1] in ("holds", "fails")]
    print(f"\n{len(held)} cells compared: {sum(row[1] == 'holds' for row in held)} hold, "
          f"{sum(row[1] == 'fails' for row in held)} fail; {sum(row[1] == 'not run yet' for row in rows)} not run yet")


if __name__ == "__main__":
    main()
