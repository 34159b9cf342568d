"""A candidate reading's grid beside the headline row it would replace: every headline cell of row AGAINST
(`results/heldout/heldout_*_AGAINST.json`, `results/retrieval/*_AGAINST_*.json`) next to the candidate's cell of the
same windows or prompts (`sharedllm.evaluation.compare.cell_key`) found under CANDIDATE_DIR with label LABEL, with
`sharedllm compare`'s paired line (A = the headline row, B = the candidate) and the promotion rule's verdict: a
perplexity cell fails when A is separated below 1, a passkey cell when the candidate misses more than one prompt, a
RULER cell when it reads more than one trial fewer than A. Cells the candidate has not run yet are listed as such.

    python scripts/grid_summary.py results/experiments/context-gap/test exact-g512 --against joint-more
    python scripts/grid_summary.py results/experiments/lora-continuation more --against joint-exercises \\
        --skip packaged-check
"""

import argparse
import json
from pathlib import Path

from sharedllm.evaluation.compare import cell_key, paired_heldout, paired_trials

REPO = Path(__file__).resolve().parents[1]


def load(paths: list[Path]) -> dict[tuple, tuple[Path, dict]]:
    """{cell_key: (path, result)}; two files of one cell are refused (which one counts is not this script's call)."""
    cells = {}
    for path in paths:
        result = json.loads(path.read_text())
        if (key := cell_key(result)) in cells:
            raise SystemExit(f"{cells[key][0]} and {path} are one cell: keep one of them")
        cells[key] = (path, result)
    return cells


def headline_cells(label: str) -> dict[tuple, tuple[Path, dict]]:
    """The headline's cells of one row (`sharedllm`: the default adapter's)."""
    return load(sorted((REPO / "results/heldout").glob(f"heldout_*_{label}.json"))
                + sorted((REPO / "results/retrieval").glob(f"*_{label}_*.json")))


def candidate_cells(folder: Path, label: str, skip: list[str]) -> dict[tuple, tuple[Path, dict]]:
    """The candidate's cells under `folder` (any depth), but for those in a subfolder named in `skip`."""
    patterns = (f"heldout_*_{label}.json", f"passkey_{label}_*.json", f"ruler_{label}_*.json")
    paths = sorted(path for pattern in patterns for path in folder.rglob(pattern))
    return load([path for path in paths if not set(path.relative_to(folder).parts[:-1]) & set(skip)])


def measured_as(label: str) -> str:
    """How the `relabelled` note of a cell `scripts/promote.py` copied into the headline names its label."""
    return f"measured as label '{label}'"


def promoted_cells(headline: dict, label: str) -> list[Path]:
    """The headline cells that are the candidate's own, copied in by `scripts/promote.py` (their `relabelled` note
    names the label): beside themselves every cell would hold."""
    return [path for path, result in headline.values() if measured_as(label) in result.get("relabelled", "")]


def name(key: tuple) -> str:
    if key[0] == "heldout":
        return f"perplexity {key[1]} {int(key[2]) // 1024}K"
    tasks = " ".join(key[5]) if key[5] else ""
    return f"{key[0]} {tasks} {' '.join(f'{n // 1024}K' for n in key[1])}".replace("  ", " ")


def verdict(key: tuple, headline: dict, candidate: dict) -> tuple[str, str]:
    """(compare's line, the rule's verdict) of one pair of cells."""
    if key[0] == "heldout":
        paired = paired_heldout(headline, candidate)
        return paired.ratio_line(), "fails" if paired.better() == "A" else "holds"
    (paired,) = paired_trials(headline, candidate)  # a grid cell is one length (passkey) or one task and length
    line = paired.line()
    if key[0] == "passkey":
        return line, "holds" if paired.score_b >= paired.trials - 1 else "fails"
    return line, "holds" if paired.score_b >= paired.score_a - 1 else "fails"


def summary_rows(headline: dict, candidates: dict) -> list[tuple[str, str, str, str]]:
    """(cell, verdict, compare's line, the candidate's file) per headline cell, by cell name."""
    rows = []
    for key, (path, result) in sorted(headline.items(), key=lambda item: name(item[0])):
        if result["task"] == "heldout" and result["summary"].get("not_run"):  # no test document that long
            rows.append((name(key), "nothing to score", "", result["summary"]["not_run"]))
        elif key not in candidates:
            rows.append((name(key), "not run yet", "", str(path.relative_to(REPO))))
        else:
            line, rule = verdict(key, result, candidates[key][1])
            rows.append((name(key), rule, line, str(candidates[key][0].relative_to(REPO))))
    return rows


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("candidate_dir", type=Path, help="the folder of the candidate's result files")
    parser.add_argument("label", help="the candidate's --label")
    parser.add_argument("--against", default="sharedllm", help="the headline row it is judged against")
    parser.add_argument("--skip", nargs="*", default=[], help="subfolders of CANDIDATE_DIR that are no grid cells")
    args = parser.parse_args()
    headline = headline_cells(args.against)
    if not headline:
        raise SystemExit(f"no headline cells of row {args.against!r} in results/heldout or results/retrieval")
    if promoted := promoted_cells(headline, args.label):
        raise SystemExit(f"row {args.against!r} is this candidate's own cells since its promotion "
                         f"({promoted[0].relative_to(REPO)}): judge it against the row it replaced (--against)")
    rows = summary_rows(headline, candidate_cells(args.candidate_dir.resolve(), args.label, args.skip))
    for row in rows:
        print(" | ".join(row))
    held = [row for row in rows if row[1] in ("holds", "fails")]
    print(f"\n{len(held)} cells compared: {sum(row[1] == 'holds' for row in held)} hold, "
          f"{sum(row[1] == 'fails' for row in held)} fail; {sum(row[1] == 'not run yet' for row in rows)} not run yet")


if __name__ == "__main__":
    main()
