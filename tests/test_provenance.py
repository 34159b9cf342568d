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


def test_a_failed_atomic_write_leaves_the_old_file_and_no_temporary_one(tmp_path, monkeypatch):
    """A full disk (or Ctrl-C) while writing: the previous file stays whole and no `.NAME.PID.tmp` is left."""
    import os

    import pytest

    from sharedllm.atomic import write_atomic

    path = write_atomic(tmp_path / "doc.txt", "the old text")

    def full_disk(*args):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "replace", full_disk)
    with pytest.raises(OSError, match="No space left"):
        write_atomic(path, "the new text")
    assert [p.name for p in tmp_path.iterdir()] == ["doc.txt"] and path.read_text() == "the old text"


def test_rewritten_results_do_not_make_a_checkout_dirty(tmp_path):
    """A grid overwrites committed result files as it goes; only changes outside results/ (code) are dirty."""
    import subprocess

    def git(*args):
        subprocess.run(["git", "-C", str(tmp_path), *args], check=True, capture_output=True)

    git("init", "-q")
    (tmp_path / "results").mkdir()
    (tmp_path / "results" / "cell.json").write_text("{}")
    (tmp_path / "code.py").write_text("x = 1\n")
    git("add", ".")
    git("-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "init")
    (tmp_path / "results" / "cell.json").write_text('{"ppl": 1}')
    assert provenance.git_commit(tmp_path)[1] is False
    (tmp_path / "code.py").write_text("x = 2\n")
    assert provenance.git_commit(tmp_path)[1] is True


def test_a_pinned_commit_is_what_later_records_name(monkeypatch):
    """A long run names the code it started with, not a commit made while it ran."""
    monkeypatch.setattr(provenance, "_started_at", None)
    monkeypatch.setattr(provenance, "git_commit", lambda repo=None: ("a" * 40, False))
    provenance.pin_commit()
    monkeypatch.setattr(provenance, "git_commit", lambda repo=None: ("b" * 40, True))  # a commit made meanwhile
    record = provenance.record("cpu")
    assert (record["git_commit"], record["git_dirty"]) == ("a" * 40, False)
