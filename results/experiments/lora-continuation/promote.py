"""Make the candidate the headline's `sharedllm` row, once every cell of its grid holds the rule (README.md, "The
rest of the grid"). Run it once, then point `sharedllm/default_adapter` at the candidate and run `sharedllm report`.

1. The default's headline cells (`results/heldout/heldout_*_sharedllm.json`, `results/retrieval/*_sharedllm_*.json`,
   read with `adapters/smollm2-135m-joint-exercises`) are renamed `joint-exercises`: the previous adapter's row.
2. The candidate's cells of the same windows or prompts (this folder, label `more`) are copied in as `sharedllm`.

Each file gets a `relabelled` note and nothing else changes, except that the copies name the packaged adapter
(`adapters/smollm2-135m-joint-more`) where they name `runs/lora-continuation/more`, the gitignored folder most were
read from: the path a rerun in a fresh clone has. That folder is gone with the machine that trained it; the package
was made from it, and it scores the 16 windows of books 4K exactly as the folder did (`packaged-check/`, the same
NLL to the last bit in every window), which this script checks. It refuses, changing nothing, while a default cell
has no candidate cell of the same windows (heldout) or prompts (passkey, RULER).

    python results/experiments/lora-continuation/promote.py [--dry-run]
"""

import argparse
import json
from pathlib import Path

from sharedllm.evaluation.compare import cell_key

REPO = Path(__file__).resolve().parents[3]
HERE = Path(__file__).resolve().parent
READ_FROM, PACKAGED = "runs/lora-continuation/more", "adapters/smollm2-135m-joint-more"
OLD_LABEL, DATE = "joint-exercises", "2026-12-07"


def load(paths) -> dict[tuple, tuple[Path, dict]]:
    cells = {}
    for path in paths:
        result = json.loads(path.read_text())
        if (key := cell_key(result)) in cells:
            raise SystemExit(f"{cells[key][0]} and {path} are one cell: which to promote is not this script's choice")
        cells[key] = (path, result)
    return cells


def same_scores(read_from: Path, packaged: Path) -> bool:
    """The two heldout cells score the same windows to the same NLL, bit for bit (module doc)."""
    cells = [json.loads(path.read_text()) for path in (read_from, packaged)]
    if [cell["adapter"] for cell in cells] != [READ_FROM, PACKAGED] or len({c["plan"]["windows_id"] for c in cells}) > 1:
        return False
    windows = [[(w["doc"], w["start"], w["mean_nll"]) for w in cell["windows"]] for cell in cells]
    return windows[0] == windows[1] and len(windows[0]) == cells[0]["plan"]["budget"]


def headline_cells(label: str) -> dict[tuple, tuple[Path, dict]]:
    """The headline's cells of one row (`sharedllm`: the default adapter), by `cell_key`."""
    return load(sorted((REPO / "results/heldout").glob(f"heldout_*_{label}.json"))
                + sorted((REPO / "results/retrieval").glob(f"*_{label}_*.json")))


def default_cells() -> dict[tuple, tuple[Path, dict]]:
    return headline_cells("sharedllm")


def judged_cells() -> dict[tuple, tuple[Path, dict]]:
    """The cells the candidate was judged against: the default's, renamed `joint-exercises` once promoted."""
    return headline_cells(OLD_LABEL) or default_cells()


def candidate_cells() -> dict[tuple, tuple[Path, dict]]:
    """The candidate's cells in this folder (label `more`), by `cell_key`."""
    cells = sorted(HERE.glob("*/heldout_*_more.json")) + sorted(HERE.glob("*/passkey_more_*.json"))
    return load([path for path in cells + sorted(HERE.glob("*/ruler_more_*.json"))
                 if path.parent.name != "packaged-check"])  # a check of the package, not a headline cell


def plan() -> list[tuple[Path, Path, dict]]:
    """[(file to remove, file to write, its content)]: the default's cells renamed, the candidate's copied in."""
    default, candidate = default_cells(), candidate_cells()
    if promoted := [str(path.relative_to(REPO)) for path, result in default.values() if result["adapter"] == PACKAGED]:
        raise SystemExit(f"already promoted: {promoted[0]} reads {PACKAGED}")
    if missing := [str(path.relative_to(REPO)) for key, (path, _) in default.items() if key not in candidate]:
        raise SystemExit("no candidate cell of the same windows or prompts for:\n  " + "\n  ".join(missing))
    steps = []
    for key, (path, result) in default.items():
        note = (f"measured as method 'sharedllm' when adapters/smollm2-135m-joint-exercises was the default; renamed "
                f"{OLD_LABEL} on {DATE} when the default changed (nothing else in this file changed)")
        if earlier := result.get("relabelled"):  # how it came to be called sharedllm stays said
            note += f". Before that: {earlier}"
        renamed = {**result, "method": OLD_LABEL, "relabelled": note}
        steps.append((path, path.with_name(path.name.replace("_sharedllm", f"_{OLD_LABEL}", 1)), renamed))
        source, found = candidate[key]
        copy = json.loads(json.dumps(found).replace(f'"{READ_FROM}"', f'"{PACKAGED}"'))
        copy["command"] = found["command"]  # as it ran
        copy.update(method="sharedllm", relabelled=(
            f"measured as label 'more' from {found['adapter']} (results/experiments/lora-continuation/"
            f"{source.relative_to(HERE)}); renamed sharedllm on {DATE} when {PACKAGED} became the default"
            + (f" (the adapter's path is the package's, made from {READ_FROM} and scoring as it does: "
               "lora-continuation/packaged-check/; nothing else in this file changed)"
               if found["adapter"] == READ_FROM else " (nothing else in this file changed)")))
        steps.append((None, path.with_name(source.name.replace("_more", "_sharedllm", 1)), copy))
    return steps


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dry-run", action="store_true", help="list the files it would write, write nothing")
    args = parser.parse_args()
    if not same_scores(HERE / "heldout-4k-test/heldout_books_4096_more.json",
                       HERE / "packaged-check/heldout_books_4096_more.json"):
        raise SystemExit(f"{PACKAGED} does not score as {READ_FROM} did: the candidate's cells are not the package's")
    steps = plan()
    for old, new, content in steps:
        print(f"{'rename' if old else 'write '} {new.relative_to(REPO)}  ({content['method']})")
        if not args.dry_run:
            if old is not None:
                old.unlink()
            new.write_text(json.dumps(content, indent=1) + "\n")


if __name__ == "__main__":
    main()
