"""Report merging and eval CLI knob parsing."""

import json

from sharedllm.evaluation.report import latest_by_method, model_folder, regenerate, same_setting, setting_differences


def ppl_result(method, created, scores, windows):
    return {
        "task": "ppl", "protocol": "cepe", "method": method, "model": "m", "data": {"split": "test", "domains": ["books"]},
        "scores": {str(k): v for k, v in scores.items()}, "counts": {str(k): {"windows": windows} for k in scores},
        "created": created, "_file": f"{method}-{created}.json", "command": f"run {created}",
    }


def test_ppl_rows_merge_per_length_newest_wins():
    old = ppl_result("sharedllm", "2026-01-01", {2048: 10.0, 8192: 9.0}, 8)
    new = ppl_result("sharedllm", "2026-01-02", {8192: 8.5, 32768: 8.0}, 4)
    merged = latest_by_method([new, old])["sharedllm"]
    assert merged["scores"] == {"2048": 10.0, "8192": 8.5, "32768": 8.0}
    assert merged["counts"]["8192"] == {"windows": 4} and merged["counts"]["2048"] == {"windows": 8}
    assert [s["_file"] for s in merged["_sources"]] == [old["_file"], new["_file"]]


def test_regenerated_page_lists_every_source(tmp_path):
    results = tmp_path / "results"
    results.mkdir()
    for r in (ppl_result("window", "2026-01-01", {2048: 12.0}, 8), ppl_result("window", "2026-01-02", {8192: 11.0}, 8)):
        (results / r["_file"]).write_text(json.dumps(r))
    page = regenerate(results, tmp_path / "docs").read_text()
    assert "| window | 12.00 (8 win) | 11.00 (8 win) |" in page
    assert "run 2026-01-01" in page and "run 2026-01-02" in page
    assert "## Targets" not in page
    (results / "NOTES.md").write_text("## Targets and gaps\n\nhand-written reading\n")
    page = regenerate(results, tmp_path / "docs").read_text()
    assert page.index("hand-written reading") < page.index("| window |")  # the notes come first, verbatim


def test_runs_of_one_method_with_two_adapters_are_two_rows_not_merged():
    a = ppl_result("sharedllm", "2026-01-01", {2048: 10.0, 8192: 9.0}, 8) | {"adapter": "adapters/a"}
    b = ppl_result("sharedllm", "2026-01-02", {8192: 7.0}, 8) | {"adapter": "adapters/b"}
    rows = latest_by_method([a, b])
    assert rows['sharedllm (adapter="adapters/a")']["scores"] == {"2048": 10.0, "8192": 9.0}
    assert rows['sharedllm (adapter="adapters/b")']["scores"] == {"8192": 7.0}


def test_a_knob_value_change_is_a_row_of_its_own_a_knob_added_later_is_not():
    old = ppl_result("sharedllm", "2026-01-01", {2048: 10.0}, 8) | {"method_config": {"tree_depth": 3}}
    # a knob the old file predates, at its default (`recorded_knobs`)
    newer_code = ppl_result("sharedllm", "2026-01-02", {8192: 9.0}, 8) | {
        "method_config": {"tree_depth": 3, "leaf_lookback": 0}}
    other_knob = ppl_result("sharedllm", "2026-01-03", {8192: 5.0}, 8) | {"method_config": {"tree_depth": 0}}
    rows = latest_by_method([old, newer_code, other_knob])
    assert rows["sharedllm (tree_depth=3)"]["scores"] == {"2048": 10.0, "8192": 9.0}
    assert rows["sharedllm (tree_depth=0)"]["scores"] == {"8192": 5.0}
    # a name outside the knob table has no default to read the old file at: not known to be the same setting
    unknown = ppl_result("sharedllm", "2026-01-04", {8192: 6.0}, 8) | {
        "method_config": {"tree_depth": 3, "lookback": 1}}
    assert set(latest_by_method([old, unknown])) == {"sharedllm", "sharedllm (lookback=1)"}


def test_one_rule_of_same_setting_model_by_folder_one_sided_name_unset():
    name = "SmolLM2-135M-Instruct"
    home, machine = f"$SHAREDLLM_HOME/models/{name}", f"/root/.cache/sharedllm/models/{name}"
    assert model_folder(home) == model_folder(machine) == model_folder(name) == name
    assert model_folder(None) == model_folder("") == ""
    a = {"model": machine, "adapter": "adapters/a", "tree_depth": 3}
    assert same_setting(a, a | {"model": home}) and not same_setting(a, a | {"model": "/models/SmolLM2-360M-Instruct"})
    # a name only one side holds reads as None there: unset matches, a value (a knob removed since) does not
    assert same_setting(a, a | {"selection_head": None})
    assert setting_differences(a | {"selection_head": 6}, a) == {"selection_head": (6, None)}
    assert setting_differences(a, a | {"model": "other/base", "tree_depth": 2}) == {
        "model": (machine, "other/base"), "tree_depth": (3, 2)}


def test_the_newest_file_wins_ties_by_file_name():
    from sharedllm.evaluation.report import oldest_to_newest

    files = [{"created": "2026-01-02", "_file": "a"}, {"created": "2026-01-01", "_file": "z"},
             {"created": "2026-01-02", "_file": "b"}]
    assert [f["_file"] for f in oldest_to_newest(files)] == ["z", "a", "b"]
