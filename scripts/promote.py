"""Make a candidate the headline's `sharedllm` row once its whole grid holds (`scripts/grid_summary.py`): the
default's headline cells are renamed OLD_LABEL (the previous default's row), and the candidate's cells of the same
windows or prompts are copied in as `sharedllm`, naming ADAPTER, the folder that becomes the default. Run it once,
then point `sharedllm/default_adapter` at ADAPTER and run `sharedllm report`.

    python scripts/promote.py results/experiments/context-gap/test exact-g512 \\
        --adapter adapters/smollm2-135m-joint-more-exact --read-with adapters/smollm2-135m-joint-more \\
        --old-label joint-more [--dry-run]
    python scripts/promote.py results/experiments/exact-lora/test joint-exact \\
        --adapter adapters/smollm2-135m-joint-exact --old-label joint-more

Each file gets a `relabelled` note and nothing else changes, but for the copies' adapter: the path the candidate was
read with (--read-with: another folder, or the same weights read with knob flags) becomes ADAPTER, so that the cell
names what a fresh clone runs; `command` stays as it ran. That both read alike is for the caller to show (a cell
of ADAPTER scoring exactly as the candidate's did: a packaged check). It refuses, changing nothing, while a cell
fails the rule, has not run, or the default already names ADAPTER.
"""

import argparse
import datetime
import json
from pathlib import Path

from grid_summary import REPO, candidate_cells, headline_cells, measured_as, summary_rows


def relabel_note(old: str, source: Path, args) -> str:
    return (f"{measured_as(args.label)} ({source.relative_to(REPO)}) with --adapter {old}; renamed "
            f"sharedllm on {args.date} when {args.adapter} became the default (the adapter's path is the default's; "
            f"nothing else in this file changed)")


def as_default(value: dict, args) -> dict:
    """VALUE (a result, or a part of one) with the path it was read with (--read-with) replaced by the default's
    (--adapter)."""
    return json.loads(json.dumps(value).replace(f'"{args.read_with}"', f'"{args.adapter}"'))


def plan(args) -> list[tuple[Path | None, Path, dict]]:
    """[(file to remove, file to write, its content)]: the default's cells renamed, the candidate's copied in."""
    default = headline_cells("sharedllm")
    candidate = candidate_cells(args.candidate_dir.resolve(), args.label, args.skip)
    if promoted := [path for path, result in default.values() if result["adapter"] == args.adapter]:
        raise SystemExit(f"already promoted: {promoted[0].relative_to(REPO)} reads {args.adapter}")
    rows = summary_rows(default, candidate)
    if open_cells := [f"{cell}: {verdict}" for cell, verdict, *_ in rows if verdict in ("fails", "not run yet")]:
        raise SystemExit("the grid does not hold yet:\n  " + "\n  ".join(open_cells))
    # the knobs the candidate's cells read with, under the default's adapter path (the same in every cell)
    new_config = as_default(next(iter(candidate.values()))[1]["method_config"], args)
    steps = []
    for key, (path, result) in default.items():
        note = (f"measured as method 'sharedllm' when {result['adapter']} was the default; renamed {args.old_label} "
                f"on {args.date} when the default changed (nothing else in this file changed)")
        if earlier := result.get("relabelled"):  # how it came to be called sharedllm stays said
            note += f". Before that: {earlier}"
        steps.append((path, path.with_name(path.name.replace("_sharedllm", f"_{args.old_label}", 1)),
                      {**result, "method": args.old_label, "relabelled": note}))
        if key not in candidate:  # nothing to score (no test document that long): the row keeps saying so
            steps.append((None, path, {**result, "adapter": args.adapter, "method_config": new_config, "relabelled": (
                f"a cell with nothing to score, copied from the previous default's on {args.date} when {args.adapter} "
                f"became the default, with the new default's knobs: {result['summary']['not_run']}")}))
            continue
        source, found = candidate[key]
        copy = as_default(found, args)
        copy.update(method="sharedllm", command=found["command"],
                    relabelled=relabel_note(found["adapter"], source, args))
        steps.append((None, path.with_name(source.name.replace(f"_{args.label}", "_sharedllm", 1)), copy))
    return steps


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("candidate_dir", type=Path, help="the folder of the candidate's result files")
    parser.add_argument("label", help="the candidate's --label")
    parser.add_argument("--adapter", required=True, help="the adapter folder that becomes the default")
    parser.add_argument("--read-with", help="the --adapter the candidate's cells were read with (default: ADAPTER)")
    parser.add_argument("--old-label", required=True, help="the row name the previous default's cells get")
    parser.add_argument("--skip", nargs="*", default=[], help="subfolders of CANDIDATE_DIR that are no grid cells")
    parser.add_argument("--date", default=datetime.date.today().isoformat(), help="the date the notes say")
    parser.add_argument("--dry-run", action="store_true", help="list the files it would write, write nothing")
    args = parser.parse_args()
    args.read_with = args.read_with or args.adapter
    steps = plan(args)
    for old, new, content in steps:  # the whole list before any change
        print(f"{'rename' if old else 'write '} {new.relative_to(REPO)}  ({content['method']})", flush=True)
    if args.dry_run:
        return
    for old, new, content in steps:
        if old is not None:
            old.unlink()
        new.write_text(json.dumps(content, indent=1) + "\n")
    print(f"{len(steps)} files written: now point sharedllm/default_adapter at {args.adapter}")


if __name__ == "__main__":
    main()
