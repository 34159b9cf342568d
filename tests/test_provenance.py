"""One provenance block for every result JSON, written atomically."""

import json

from sharedllm import provenance

KEYS = {"hardware", "command", "git_commit", "git_dirty", "created"}


def test_record_has_the_keys_the_report_reads(tmp_path):
    record = provenance.record("cpu", "float32", command="sharedllm eval ppl", attention="sdpa")
    assert set(record) == KEYS and record["command"] == "sharedllm eval ppl"
    hardware = record["hardware"]
    # what evaluation/report.py prints: gpu or cpu, threads, dtype, torch, transformers
    assert hardware["gpu"] is None and hardware["cpu"] and hardware["threads"] >= 1
    assert (hardware["dtype"], hardware["attention"], hardware["device"]) == ("float32", "sdpa", "cpu")
    assert hardware["torch"] and hardware["transformers"]


def test_git_commit_of_a_checkout_and_of_no_checkout(tmp_path):
    commit, dirty = provenance.git_commit()
    assert commit is None or (len(commit) == 40 and dirty in (True, False))  # None when installed from a wheel
    assert provenance.git_commit(tmp_path) == (None, None)


def test_write_json_is_atomic_and_creates_the_folder(tmp_path):
    path = provenance.write_json(tmp_path / "a" / "b.json", {"x": 1})
    assert json.loads(path.read_text()) == {"x": 1}
    assert [p.name for p in path.parent.iterdir()] == ["b.json"]  # no temporary file left behind
