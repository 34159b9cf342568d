"""`scripts/grid_summary.py`'s promotion rule, cell by cell (A = the default's headline cell, B = the candidate's): a
perplexity cell fails only when A reads separated lower, a passkey cell when B misses more than one prompt, a RULER
cell when B reads more than one trial fewer than A. `scripts/promote.py` refuses to promote on any failing cell."""

import importlib
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def grid_summary():
    sys.path.insert(0, str(REPO / "scripts"))
    try:
        yield importlib.import_module("grid_summary")
    finally:
        sys.path.remove(str(REPO / "scripts"))


def heldout(nlls):
    windows = [{"doc": "d", "start": 256 * i, "mean_nll": nll, "scored_tokens": 256} for i, nll in enumerate(nlls)]
    return {"task": "heldout", "domain": "books", "length": 8192, "plan": {}, "windows": windows}


def trials(task, scores):
    records = [{"length": 16384, "task": "niah_multikey", "depth": 0.5, "trial": i, "key": 100 + i,
                "golds": [str(1000 + i)], "score": score, "correct": bool(score)} for i, score in enumerate(scores)]
    return {"task": task, "details": {"records": records}}


@pytest.mark.parametrize("shift, rule", [(+0.1, "fails"), (-0.1, "holds"), (0.0, "holds")])
def test_a_perplexity_cell_fails_only_where_the_default_reads_separated_lower(grid_summary, shift, rule):
    default = [2.0, 3.0, 4.0, 5.0]
    line, verdict = grid_summary.verdict(("heldout",), heldout(default), heldout([x + shift for x in default]))
    assert verdict == rule and line.startswith("PPL A / PPL B")


@pytest.mark.parametrize("misses, rule", [(0, "holds"), (1, "holds"), (2, "fails")])
def test_a_passkey_cell_fails_past_one_missed_prompt(grid_summary, misses, rule):
    candidate = [0.0] * misses + [1.0] * (10 - misses)
    assert grid_summary.verdict(("passkey",), trials("passkey", [1.0] * 10), trials("passkey", candidate))[1] == rule


@pytest.mark.parametrize("candidate_right, rule", [(9, "holds"), (7, "holds"), (6, "fails")])
def test_a_ruler_cell_fails_past_one_trial_below_the_default(grid_summary, candidate_right, rule):
    default = [1.0] * 8 + [0.0] * 2
    candidate = [1.0] * candidate_right + [0.0] * (10 - candidate_right)
    line, verdict = grid_summary.verdict(("ruler",), trials("ruler", default), trials("ruler", candidate))
    assert verdict == rule and f"A 8/10, B {candidate_right}/10" in line


def test_a_promoted_candidate_is_not_judged_against_its_own_cells(grid_summary):
    """After `promote.py` the default's row is the candidate's cells: beside themselves every cell would hold."""
    note = "measured as label 'exact-g512' (results/experiments/context-gap/test/heldout/x.json) with --adapter a"
    headline = {("heldout",): (Path("a.json"), {**heldout([2.0]), "relabelled": note}),
                ("passkey",): (Path("b.json"), trials("passkey", [1.0]))}
    assert grid_summary.promoted_cells(headline, "exact-g512") == [Path("a.json")]
    assert grid_summary.promoted_cells(headline, "exact-g51") == []
