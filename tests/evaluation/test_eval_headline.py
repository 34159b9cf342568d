"""`sharedllm eval heldout` end to end with fake methods (no weights) and the headline section of the report:
the same windows for every method, resumable cells, "not run" cells, intervals and token counts."""

import argparse
import json
import time

import pytest
from fakes import PROSE
from test_eval_tasks import _parse, fake_stack  # noqa: F401  (fake_stack is a fixture)

from sharedllm.cli import InputError
from sharedllm.evaluation import report

DOCS = {"the_adventures_of_sherlock_holmes": PROSE[:3000], "plrabn12": PROSE[:2000]}  # the books test split


@pytest.fixture
def corpus(fake_stack, monkeypatch):  # noqa: F811
    import sharedllm.loading
    from fakes import char_tokenizer

    monkeypatch.setenv("SHAREDLLM_HOME", str(fake_stack / "home"))
    # the base's tokenizer, which the checks read alone for the windows of the cells (and journals) already there
    monkeypatch.setattr(sharedllm.loading, "load_tokenizer", lambda base, required=True: char_tokenizer())
    books = fake_stack / "home" / "corpora" / "books"
    books.mkdir(parents=True)
    for doc_id, text in DOCS.items():  # one token per character
        (books / f"{doc_id}.txt").write_text(text)
    return fake_stack


def _heldout(cli, tmp, *argv):
    _, args = _parse(["heldout", "--base", "fake", "--adapter", "none", "--domains", "books", "--lengths", "512", "1K",
                      "--max-windows", "4", "--output", str(tmp / "results" / "heldout"), *argv])
    cli.run(args)


def test_heldout_grid_same_windows_resumable_and_not_run(corpus, capsys):
    from sharedllm.evaluation import cli

    tmp = corpus
    _heldout(cli, tmp, "--methods", "full", "window")
    _heldout(cli, tmp, "--methods", "streaming", "--max-length", "512")
    cells = {p.name: json.loads(p.read_text()) for p in (tmp / "results" / "heldout").glob("*.json")}
    assert len(cells) == 6  # 3 methods x 2 lengths
    for length in (512, 1024):
        column = [c for c in cells.values() if c["length"] == length]
        windows = {c["method"]: [(w["doc"], w["start"]) for w in c["windows"]] for c in column}
        assert len(windows["full"]) == 4 and windows["full"] == windows["window"] == windows["streaming"]
        assert len({c["plan"]["windows_id"] for c in column}) == 1
    full = cells["heldout_books_1024_full.json"]["summary"]
    assert full["complete"] and full["scored_tokens"] == 4 * 256
    assert full["ppl"] == pytest.approx(2.718281828) and full["ci_low"] == pytest.approx(full["ci_high"])
    streaming = cells["heldout_books_1024_streaming.json"]
    assert not streaming["summary"]["complete"] and streaming["summary"]["ppl"] is None
    assert all(w["not_run"] == "past --max-length 512" for w in streaming["windows"])
    assert cells["heldout_books_512_streaming.json"]["summary"]["complete"]

    before = {p: p.stat().st_mtime_ns for p in (tmp / "results" / "heldout").glob("*.json")}
    _heldout(cli, tmp, "--methods", "full", "window", "streaming")
    assert "exists, skipped" in capsys.readouterr().out
    assert before == {p: p.stat().st_mtime_ns for p in (tmp / "results" / "heldout").glob("*.json")}

    (tmp / "results" / "NOTES.md").write_text("## Targets\n\nhand-written reading\n")
    (tmp / "results" / "heldout" / "NOTES.md").write_text("# Reading the headline\n\nwhat the tables say\n")
    # the CLI's run: a results folder that holds only held-out cells is reported (no results/*.json needed)
    report.run(argparse.Namespace(results=str(tmp / "results"), docs=str(tmp / "docs")))
    page = (tmp / "docs" / "results.md").read_text()
    # the section opens with the numbers: every domain's table before the hand-written reading
    assert page.index("## Headline") < page.index("| method | 512 (4 win)") < page.index("### Reading the headline")
    assert page.index("### Reading the headline") < page.index("## Previous results")
    assert page.index("## Previous results") < page.index("### Targets")
    assert "| method | 512 (4 win) | 1K (4 win) |" in page
    assert "| full | 2.72 [2.72, 2.72] (1,024 tok) | 2.72 [2.72, 2.72] (1,024 tok) |" in page
    assert "| streaming | 7.39 [7.39, 7.39] (1,024 tok) | not run: past --max-length 512 |" in page
    assert "PPL relative to sharedllm" not in page  # no sharedllm cells: no paired table
    assert (tmp / "docs" / "figures" / "headline-ppl-books.png").stat().st_size > 0


def test_targets_of_scores_every_length_on_the_longest_plans_tokens(corpus, capsys):
    from sharedllm.cli import main
    from sharedllm.evaluation import cli

    tmp = corpus
    _heldout(cli, tmp, "--methods", "full", "--targets-of", "1K")
    out = tmp / "results" / "heldout"
    short, long = (json.loads((out / name).read_text()) for name in
                   ("heldout_books_512_full_targets1024.json", "heldout_books_1024_full.json"))
    ends = [[(w["doc"], w["start"] + c["length"]) for w in c["windows"]] for c in (short, long)]
    assert ends[0] == ends[1] and len(ends[0]) == 4
    assert short["plan"]["targets_of"] == 1024 and "targets_of" not in long["plan"]  # the 1K cell is the headline's
    assert {(c["length"], c["method"]) for c in report.load_heldout(tmp / "results")} == {(1024, "full")}
    with pytest.raises(SystemExit):
        main(["compare", str(out / "heldout_books_512_full_targets1024.json"), str(out / "heldout_books_1024_full.json")])
    assert "A 512 / B 1K of context on the targets of the 1K plan: 4 windows" in capsys.readouterr().out
    with pytest.raises(InputError, match="every T must be at most 512"):  # before any model loads
        _heldout(cli, tmp, "--methods", "full", "--targets-of", "512")


def test_a_cell_file_of_other_settings_is_refused_not_skipped(corpus, monkeypatch, capsys):
    """A rerun skips a cell only when its file was made with the same settings; one of another adapter, knobs, seed or
    budget is refused (before loading where the command line decides it), one of another split even with --overwrite."""
    import sharedllm.loading
    from fakes import FakeMethod

    from sharedllm.evaluation import cli

    tmp, out = corpus, corpus / "results" / "heldout"
    _heldout(cli, tmp, "--methods", "window", "--lengths", "512")
    cell = out / "heldout_books_512_window.json"
    written = cell.read_bytes()
    load = sharedllm.loading.load_causal_lm
    monkeypatch.setattr(sharedllm.loading, "load_causal_lm", lambda *a, **k: pytest.fail("the model was loaded"))
    with pytest.raises(InputError, match=r"heldout_books_512_window.json was made with other settings \(seed 0 there, 1 "
                                         r"now; windows_id '\w+' there, '\w+' now\): pass --label NAME or another "
                                         r"--output to keep both, or --overwrite"):
        _heldout(cli, tmp, "--methods", "window", "--lengths", "512", "--seed", "1")
    with pytest.raises(InputError, match="max_windows 4 there, 2 now"):
        _heldout(cli, tmp, "--methods", "window", "--lengths", "512", "--max-windows", "2")
    for overwrite in ([], ["--overwrite"]):
        with pytest.raises(InputError, match="holds the test split's cell, not the validation split's: pass another"):
            _heldout(cli, tmp, "--methods", "window", "--lengths", "512", "--split", "validation", *overwrite)
    # the method's config (a knob here) and the model's name are known before loading too: refused before full ran
    with pytest.raises(InputError, match="decoder_window 1024 there, 512 now"):
        _heldout(cli, tmp, "--methods", "full", "window", "--lengths", "512", "--decoder-window", "512")
    with pytest.raises(InputError, match=r"model 'fake' there, 'other' now"):
        _heldout(cli, tmp, "--methods", "full", "window", "--lengths", "512", "--base", "other")
    # and the windows, with the tokenizer alone: the same seed and budget on other documents (another corpus version)
    books = tmp / "home" / "corpora" / "books" / "plrabn12.txt"
    books.write_text(PROSE[:2500])
    with pytest.raises(InputError, match=r"\(windows_id '\w+' there, '\w+' now\)"):
        _heldout(cli, tmp, "--methods", "full", "window", "--lengths", "512")
    books.write_text(DOCS["plrabn12"])
    monkeypatch.setattr(sharedllm.loading, "load_causal_lm", load)
    token_nll = FakeMethod.token_nll
    monkeypatch.setattr(FakeMethod, "token_nll", lambda *a: pytest.fail("a window was scored"))
    assert cell.read_bytes() == written
    capsys.readouterr()
    _heldout(cli, tmp, "--methods", "window", "--lengths", "512")  # the same settings: kept
    assert f"exists, skipped: {cell}" in capsys.readouterr().out and cell.read_bytes() == written
    monkeypatch.setattr(FakeMethod, "token_nll", token_nll)
    _heldout(cli, tmp, "--methods", "window", "--lengths", "512", "--max-windows", "2", "--overwrite")
    assert json.loads(cell.read_text())["plan"]["budget"] == 2


def test_stopped_or_out_of_budget_cell_continues_from_its_journal(corpus, monkeypatch):
    from fakes import FakeMethod

    from sharedllm.evaluation import cli

    tmp, calls, token_nll = corpus, [], FakeMethod.token_nll

    def counted(self, input_ids, score_start):
        calls.append(len(input_ids))
        if stop_after is not None and len(calls) > stop_after:
            raise KeyboardInterrupt
        time.sleep(0.05)  # so that a budget of 0.03 s is used up by the first window
        return token_nll(self, input_ids, score_start)

    monkeypatch.setattr(FakeMethod, "token_nll", counted)
    heldout_dir = tmp / "results" / "heldout"
    stop_after = 3  # of the 4 windows at 512
    with pytest.raises(KeyboardInterrupt):
        _heldout(cli, tmp, "--methods", "full", "--lengths", "512")
    assert len(next(heldout_dir.glob(".heldout_full_books_512_*.partial.jsonl")).read_text().splitlines()) == 3
    stop_after, calls[:] = None, []
    _heldout(cli, tmp, "--methods", "full", "--lengths", "512")
    assert len(calls) == 1 and not list(heldout_dir.glob(".heldout_*"))  # one window left; journal gone
    cell = json.loads((heldout_dir / "heldout_books_512_full.json").read_text())
    assert cell["summary"]["complete"] and cell["summary"]["n_windows"] == 4

    calls[:] = []  # out of its time budget after one window: written incomplete, its journal kept
    _heldout(cli, tmp, "--methods", "window", "--lengths", "512", "--max-seconds", "0.03")
    assert len(calls) == 1 and not json.loads((heldout_dir / "heldout_books_512_window.json").read_text())["summary"]["complete"]
    calls[:] = []
    _heldout(cli, tmp, "--methods", "window", "--lengths", "512", "--overwrite")
    cell = json.loads((heldout_dir / "heldout_books_512_window.json").read_text())
    assert len(calls) == 3 and cell["summary"]["complete"] and not list(heldout_dir.glob(".heldout_*"))


def test_a_cells_journal_of_other_adapter_weights_is_refused_before_loading(corpus, monkeypatch):
    """It was refused when sharedllm's cells came, after every method before it had scored its cells."""
    import sharedllm.loading
    from fakes import char_tokenizer

    from sharedllm.assets import DEFAULT_ADAPTER
    from sharedllm.evaluation import cli, heldout, session
    from sharedllm.evaluation.journal import TrialJournal

    out = corpus / "results" / "heldout"
    monkeypatch.setattr(sharedllm.loading, "load_causal_lm", lambda *a, **k: pytest.fail("the model was loaded"))
    argv = ["--methods", "full", "sharedllm", "--adapter", str(DEFAULT_ADAPTER), "--lengths", "512"]
    _, args = _parse(["heldout", "--base", "fake", "--domains", "books", "--max-windows", "4", "--seed", "0",
                      "--output", str(out), *argv])
    shared = session.shared_settings(args, str(DEFAULT_ADAPTER), session.read_adapter_config(str(DEFAULT_ADAPTER)))
    doc_lengths = {doc: len(ids) for doc, ids in heldout.heldout_documents("books", char_tokenizer(), "test").items()}
    windows = heldout.windows_id(heldout.cell_plan(doc_lengths, 512, 512, 4, 0), 512)
    keys = session.journal_keys(args, session.method_config_before_loading("sharedllm", args, shared), "fake",
                                windows=windows)
    stale = TrialJournal(out, "heldout", "sharedllm_books_512", keys, weights="0123456789abcdef")
    stale.append({"doc": "plrabn12", "start": 0, "mean_nll": 2.0, "scored_tokens": 256})
    with pytest.raises(InputError, match=f"{stale.path} holds 1 trials of other adapter weights .*delete the journal"):
        _heldout(cli, corpus, *argv)
    # a cell file there is kept (or refused) without its journal being read; --overwrite reads the journal again
    (out / "heldout_books_512_sharedllm.json").write_text(json.dumps({"data": {"split": "test"}}))
    with pytest.raises(InputError, match="heldout_books_512_sharedllm.json was made with other settings"):
        _heldout(cli, corpus, *argv)
    with pytest.raises(InputError, match="holds 1 trials of other adapter weights"):
        _heldout(cli, corpus, *argv, "--overwrite")


def _cell(method, length, ppl=None, windows_id="p1", not_run=None, n=16):
    summary = {"complete": ppl is not None, "ppl": ppl, "ci_low": ppl and ppl * 0.9, "ci_high": ppl and ppl * 1.1,
               "scored_tokens": 256 * n if ppl else 0, "n_windows": n if ppl else 0, "n_planned": n, "not_run": not_run}
    return {"task": "heldout", "method": method, "domain": "math", "length": length, "summary": summary,
            "plan": {"windows_id": windows_id}, "data": {"docs": {"a": 200000}}, "model": "m", "_file": "x.json"}


def test_headline_table_flags_other_windows_and_partial_cells():
    cells = [_cell("window", 4096, 10.0), _cell("sharedllm", 4096, 9.0), _cell("full", 4096, 8.0, windows_id="p2"),
             _cell("yarn", 4096, not_run="time budget of 60 s used up after 3 windows"),
             _cell("sharedllm", 131072, 7.0), _cell("infllm", 131072, not_run="RuntimeError: out of memory")]
    lines = report.headline_table(cells)
    assert lines[0] == "| method | 4K (16 win) | 128K (16 win) |"
    rows = {line.split(" | ")[0].strip("| "): line for line in lines[2:]}
    assert list(rows) == ["sharedllm", "window", "infllm", "full", "yarn"]  # the headline order
    assert rows["sharedllm"] == "| sharedllm | 9.00 [8.10, 9.90] (4,096 tok) | 7.00 [6.30, 7.70] (4,096 tok) |"
    assert "other windows (p2): not comparable" in rows["full"]
    assert "not run: time budget of 60 s used up after 3 windows" in rows["yarn"]
    assert rows["infllm"] == "| infllm | – | not run: RuntimeError: out of memory |"
    partial = dict(_cell("window", 4096, not_run="time budget"), summary={
        "complete": False, "ppl": 10.0, "n_windows": 3, "n_planned": 16, "not_run": "time budget"})
    assert report.heldout_cell_text(partial["summary"]) == "not run: time budget (3 of 16 windows ran)"


def test_paired_table_uses_the_shared_windows():
    def cell(method, nlls):
        windows = [{"doc": "a", "start": 256 * i, "mean_nll": v, "scored_tokens": 256} for i, v in enumerate(nlls)]
        from sharedllm.evaluation.heldout import summarise

        return {**_cell(method, 4096, 1.0), "windows": windows, "summary": summarise(windows)}

    cells = [cell("sharedllm", [1.0, 3.0, 2.0, 4.0]), cell("window", [1.2, 3.2, 2.2, 4.2]),
             {**_cell("full", 4096, not_run="past --max-length 2K")}]
    lines = report.paired_table(cells)
    assert lines[0] == "| method | 4K / sharedllm |"
    assert lines[2] == "| window | 1.221 [1.221, 1.221] |"  # exp(0.2) on every window
    assert lines[3] == "| full | – |"


def test_domain_with_no_complete_cell_gets_no_plot(tmp_path):
    heldout_dir = tmp_path / "results" / "heldout"
    heldout_dir.mkdir(parents=True)
    cell = {**_cell("sharedllm", 32768, not_run="no code test document has 32768 tokens", n=0), "domain": "code"}
    (heldout_dir / "heldout_code_32768_sharedllm.json").write_text(json.dumps(cell))
    page = report.regenerate(tmp_path / "results", tmp_path / "docs").read_text()
    assert "| sharedllm | not run: no code test document has 32768 tokens |" in page
    assert "headline-ppl-code" not in page and not (tmp_path / "docs" / "figures" / "headline-ppl-code.png").exists()
    # its command measured nothing: provenance leaves it out (it named another adapter's run once a default changed)
    assert "heldout_code_32768_sharedllm.json" not in page


def test_provenance_names_every_config_a_method_ran_with():
    old, new = {"selection_score": "logit"}, {"selection_score": "probability"}
    cells = [{**_cell("sharedllm", 4096, 9.0), "method_config": new, "_file": "a.json"},
             {**_cell("sharedllm", 8192, 9.0), "method_config": old, "_file": "b.json"},
             {**_cell("sharedllm", 16384, 9.0), "method_config": new, "_file": "c.json"}]
    lines = [line for line in report.method_provenance("sharedllm", cells) if line.startswith("- ")]
    assert len(lines) == 2
    assert lines[0].startswith("- **sharedllm** (4K, 16K)") and '"probability"' in lines[0] and "`c.json`" in lines[0]
    assert lines[1].startswith("- **sharedllm** (8K)") and '"logit"' in lines[1] and "`a.json`" not in lines[1]


def test_provenance_names_the_machine_of_each_file():
    """Cells of one config scored on two machines: each file is named with its own, not the last cell's."""
    gpu = {"gpu": "NVIDIA H200", "cpu": "AMD EPYC", "threads": 8, "dtype": "float32"}
    cpu = {"gpu": None, "cpu": "AMD EPYC", "threads": 1, "dtype": "float32"}
    cells = [{**_cell("window", 4096, 9.0), "hardware": cpu, "wall_time_s": 42.0, "_file": "a.json"},
             {**_cell("window", 8192, 9.0), "hardware": cpu, "wall_time_s": 34.0, "_file": "b.json"},
             {**_cell("window", 131072, 9.0), "hardware": gpu, "wall_time_s": 1.0, "_file": "c.json"}]
    [line] = [line for line in report.method_provenance("window", cells) if line.startswith("- ")]
    assert "files `a.json` (42 s), `b.json` (34 s) on AMD EPYC (1 threads, float32); " in line
    assert line.endswith("files `c.json` (1 s) on NVIDIA H200 (8 threads, float32)")


def test_provenance_gives_a_resumed_cell_the_seconds_of_all_its_windows():
    """A cell finished from a stopped run's journal: its last run's wall time (60 s) is not what it cost."""
    windows = [{"doc": "a", "start": 0, "mean_nll": 1.0, "seconds": 300.0},
               {"doc": "a", "start": 256, "mean_nll": 1.0, "seconds": 340.0}]
    resumed = {**_cell("infllm", 65536, 9.0), "windows": windows, "wall_time_s": 60.0, "_file": "r.json"}
    trials = {**_cell("sharedllm", 65536, 9.0), "wall_time_s": 42.0, "_file": "t.json"}  # no windows: its wall time
    assert "`r.json` (640 s)" in report.method_provenance("infllm", [resumed])[0]
    assert "`t.json` (42 s)" in report.method_provenance("sharedllm", [trials])[0]
    on_two = [{**windows[0], "ran_on": "NVIDIA H200"}, {**windows[1], "ran_on": "AMD EPYC"},
              {"doc": "a", "start": 512, "not_run": "time budget"}]  # a window not run ran nowhere
    mixed = {**resumed, "windows": on_two, "hardware": {"cpu": "AMD EPYC", "gpu": None}}
    assert report._cost(mixed) == "640 s; windows by machine: NVIDIA H200 1, AMD EPYC 1"
    assert report._cost({**mixed, "windows": [{**w, "ran_on": "AMD EPYC"} for w in windows]}) == "640 s"
    journaled = {**trials, "counts": {"trials_from_a_stopped_run": 9}}
    assert "`t.json` (42 s; 9 trials run before, journaled)" in report.method_provenance("sharedllm", [journaled])[0]


def test_a_broken_point_is_drawn_off_scale_and_the_rest_keep_the_plot(tmp_path):
    """Full attention past its trained positions (1003 against ~40) would squash every other line: it is set apart
    and labelled at the top edge; a method's own ordinary points stay lines."""
    s = lambda ppl: {"ppl": ppl, "ci_low": ppl * 0.9, "ci_high": ppl * 1.1}  # noqa: E731
    series = {"sharedllm": [(4096, s(33.0)), (16384, s(38.0))], "window": [(4096, s(34.0)), (16384, s(40.0))],
              "full": [(4096, s(33.1)), (16384, s(1003.5))]}
    kept, off = report.split_off_scale(series)
    assert off == {"sharedllm": [], "window": [], "full": [(16384, s(1003.5))]}
    assert kept["full"] == [(4096, s(33.1))] and kept["sharedllm"] == series["sharedllm"]
    cells = [{**_cell(m, n, v["ppl"]), "summary": {**_cell(m, n, v["ppl"])["summary"], **v}}
             for m, points in series.items() for n, v in points]
    assert report.plot_heldout(cells, tmp_path / "plot.png", "t") and (tmp_path / "plot.png").stat().st_size > 0


def test_a_cell_of_another_split_stays_out_of_the_headline(tmp_path):
    """An ablation on validation documents written into results/heldout is no test number (it was shown as one)."""
    folder = tmp_path / "heldout"
    folder.mkdir()
    cell = {"task": "heldout", "domain": "books", "length": 4096, "method": "sharedllm", "plan": {},
            "summary": {"complete": True}, "created": "2026-12-06"}
    (folder / "heldout_books_4096_sharedllm.json").write_text(json.dumps({**cell, "data": {"split": "test"}}))
    (folder / "heldout_books_4096_sharedllm-val.json").write_text(
        json.dumps({**cell, "data": {"split": "validation"}, "created": "2026-12-07"}))
    assert [c["data"]["split"] for c in report.load_heldout(tmp_path)] == ["test"]
