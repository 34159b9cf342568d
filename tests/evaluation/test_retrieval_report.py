"""The retrieval headline of the report: Wilson intervals on known values, cells merged per (method, length) and
RULER task with the newest file winning, the table, heatmap and provenance of results/retrieval/."""

import json

import pytest

from sharedllm.evaluation import report
from sharedllm.evaluation.retrieval_report import cell_text, load_retrieval, retrieval_section, wilson_interval


@pytest.mark.parametrize("hits, n, low, high", [(0, 10, 0.0, 0.2775), (5, 10, 0.2366, 0.7634), (50, 50, 0.9287, 1.0),
                                                 (49, 50, 0.8950, 0.9965)])
def test_wilson_interval_known_values(hits, n, low, high):
    assert wilson_interval(hits, n) == pytest.approx((low, high), abs=1e-4)


def test_wilson_interval_needs_a_trial():
    with pytest.raises(ValueError):
        wilson_interval(0, 0)


def _passkey(method, created, hits_by_length, depths=(0.0, 1.0), trials=2):
    """`hits` of a length's trials are correct: the first ones, depth by depth."""
    records = [{"length": n, "depth": d, "trial": t, "correct": i * trials + t < hits}
               for n, hits in hits_by_length.items() for i, d in enumerate(depths) for t in range(trials)]
    return {"task": "passkey", "method": method, "created": created, "scores": {}, "lengths": list(hits_by_length),
            "method_config": {"method": method}, "adapter": "adapters/x", "command": f"passkey {created}",
            "details": {"records": records}}


def _ruler(method, created, scores_by_task, length=16384):
    records = [{"length": length, "task": task, "trial": t, "score": s} for task, scores in scores_by_task.items()
               for t, s in enumerate(scores)]
    return {"task": "ruler", "method": method, "created": created, "scores": {}, "method_config": {"method": method},
            "data": {"split": "test", "domains": ["books"]},
            "adapter": None, "command": f"ruler {created}", "details": {"records": records}}


def _write(folder, name, result):
    folder.mkdir(parents=True, exist_ok=True)
    (folder / name).write_text(json.dumps(result))


def test_cells_merge_per_length_and_task_newest_file_wins(tmp_path):
    folder = tmp_path / "retrieval"
    _write(folder, "a.json", _passkey("sharedllm", "2026-12-01", {8192: 1, 16384: 4}))
    _write(folder, "b.json", _passkey("sharedllm", "2026-12-02", {8192: 4}))  # newer: replaces 8K only
    _write(folder, "c.json", _ruler("sharedllm", "2026-12-01", {"niah_single": [1, 0], "niah_multikey": [0, 0]}))
    _write(folder, "d.json", _ruler("sharedllm", "2026-12-02", {"niah_single": [1, 1, 1]}))  # replaces one task
    _write(folder, "e.json", {"task": "ppl", "scores": {}})  # not a retrieval result: ignored
    cells = load_retrieval(tmp_path)
    passkey, ruler = cells["passkey"], cells["ruler"]
    assert {k: cell_text("passkey", v["records"]) for k, v in passkey.items()} == {
        ("sharedllm", 8192): "4/4 (100%, 51-100)", ("sharedllm", 16384): "4/4 (100%, 51-100)"}
    assert passkey[("sharedllm", 8192)]["file"]["_file"] == "retrieval/b.json"
    assert passkey[("sharedllm", 16384)]["file"]["_file"] == "retrieval/a.json"
    assert cell_text("ruler", ruler[("sharedllm", "niah_single", 16384)]["records"]) == "3/3 (100%, 44-100)"
    assert cell_text("ruler", ruler[("sharedllm", "niah_multikey", 16384)]["records"]) == "0/2 (0%, 0-66)"


def test_section_table_heatmap_and_provenance(tmp_path):
    _write(tmp_path / "retrieval", "p.json", _passkey("sharedllm", "2026-12-01", {8192: 3, 32768: 4}) | {"relabelled": "was x"})
    _write(tmp_path / "retrieval", "w.json", _passkey("window", "2026-12-01", {8192: 0}))
    _write(tmp_path / "retrieval", "r.json", _ruler("full", "2026-12-01", {"niah_single": [1, 1]}, length=4096))
    figures = tmp_path / "figures"
    figures.mkdir()
    lines = retrieval_section(tmp_path, figures)
    assert "### Passkey retrieval (Landmark)" in lines  # the test files name no model
    assert "| method | 8K | 32K |" in lines
    assert "| sharedllm | 3/4 (75%, 30-95) | 4/4 (100%, 51-100) |" in lines
    assert "| window | 0/4 (0%, 0-49) | – |" in lines
    assert "| full | niah_single | 2/2 (100%, 34-100) |" in lines
    assert (figures / "headline-passkey-sharedllm.png").is_file() and (figures / "headline-passkey-window.png").is_file()
    provenance = [line for line in lines if line.startswith("- **sharedllm**")]
    assert provenance == ["- **sharedllm** (8K, 32K): adapter `adapters/x`, config `{\"method\": \"sharedllm\"}`; "
                          "files `retrieval/p.json` (0 s) on None (None threads, None)"]  # one file, named once
    assert "  (relabelled: was x; a rerun passes `--label sharedllm`)" in lines  # a renamed file says so


def test_a_run_with_another_base_or_adapter_is_a_row_of_its_own_not_a_replaced_cell(tmp_path):
    folder = tmp_path / "retrieval"
    home = {"model": "$SHAREDLLM_HOME/models/SmolLM2-135M-Instruct"}
    _write(folder, "a.json", _passkey("sharedllm", "2026-12-01", {8192: 4, 16384: 4}) | home)
    # the same base under another path, and a knob the newer code names at its old default: the same row
    _write(folder, "b.json", _passkey("sharedllm", "2026-12-02", {16384: 1}) | {"model": "/root/.cache/sharedllm/models/"
           "SmolLM2-135M-Instruct", "method_config": {"method": "sharedllm", "leaf_lookback": 0}})
    _write(folder, "c.json", _passkey("sharedllm", "2026-12-03", {8192: 0}) | {"model": "/m/SmolLM2-360M"})
    _write(folder, "d.json", _passkey("sharedllm", "2026-12-04", {8192: 2}) | home | {"adapter": "adapters/y"})
    passkey = load_retrieval(tmp_path)["passkey"]
    texts = {key: cell_text("passkey", cell["records"]) for key, cell in passkey.items()}
    assert texts == {
        ('sharedllm (adapter="adapters/x", model="SmolLM2-135M-Instruct")', 8192): "4/4 (100%, 51-100)",
        ('sharedllm (adapter="adapters/x", model="SmolLM2-135M-Instruct")', 16384): "1/4 (25%, 5-70)",
        ('sharedllm (adapter="adapters/x", model="SmolLM2-360M")', 8192): "0/4 (0%, 0-49)",
        ('sharedllm (adapter="adapters/y", model="SmolLM2-135M-Instruct")', 8192): "2/4 (50%, 15-85)"}
    lines = retrieval_section(tmp_path, tmp_path)
    assert "### Passkey retrieval (Landmark) — model `SmolLM2-135M-Instruct, SmolLM2-360M`" in lines


def test_a_ruler_run_off_the_test_split_is_refused(tmp_path):
    from sharedllm.cli import InputError

    _write(tmp_path / "retrieval", "v.json", _ruler("sharedllm", "2026-12-01", {"niah_single": [1]}) | {"data": {"split": "validation"}})
    with pytest.raises(InputError, match="v.json: a RULER run on the 'validation' split"):
        load_retrieval(tmp_path)


def test_report_without_retrieval_results_has_no_section(tmp_path):
    assert retrieval_section(tmp_path, tmp_path) == []
    _write(tmp_path / "retrieval", "p.json", _passkey("sharedllm", "2026-12-01", {8192: 4}))
    page = report.regenerate(tmp_path, tmp_path / "docs").read_text()
    assert "## Headline: retrieval" in page and "| sharedllm | 4/4 (100%, 51-100) |" in page
    (tmp_path / "retrieval" / "NOTES.md").write_text("# Reading\n\nAll read.")
    lines = retrieval_section(tmp_path, tmp_path)
    assert "### Reading\n\nAll read." in lines  # verbatim, one heading level below the section's
    assert lines.index("### Reading\n\nAll read.") > lines.index("### Passkey retrieval (Landmark)")  # after the tables
