"""Bad input through the real entry point `sharedllm.cli.main`: one line naming what to change, a non-zero exit, and
nothing loaded (the model loaders fail the test if they are reached)."""

import json
from pathlib import Path
from types import SimpleNamespace

import pytest
from fakes import PROSE, FakeBase, char_tokenizer

import sharedllm.loading
from sharedllm import training
from sharedllm.cli import main
from sharedllm.evaluation import report


@pytest.fixture
def no_model(monkeypatch, tmp_path):
    """Loading a model or building a method fails the test: every error below must come before."""
    def refuse(*args, **kwargs):
        pytest.fail("a model was loaded before the input was checked")

    monkeypatch.setattr(sharedllm.loading, "load_causal_lm", refuse)
    monkeypatch.setattr(training, "build_model", refuse)
    # the base's tokenizer alone may load (eval's checks read it): a real one-token-per-character one stands in
    monkeypatch.setattr(sharedllm.loading, "load_tokenizer", lambda base, required=True: char_tokenizer())
    monkeypatch.setenv("SHAREDLLM_HOME", str(tmp_path / "home"))
    monkeypatch.chdir(tmp_path)
    (tmp_path / "book.txt").write_text(PROSE)
    (tmp_path / "short.txt").write_text("A short note.\n")
    (tmp_path / "empty.txt").write_text("")
    (tmp_path / "latin1.txt").write_bytes("caf\xe9 au lait ".encode("latin-1") * 100)
    return tmp_path


def error_line(capsys, argv, code=2) -> str:
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    assert exit_info.value.code == code
    err = capsys.readouterr().err.strip()
    assert "Traceback" not in err
    return err.splitlines()[-1]


CROSS_ADAPTER = str(Path(__file__).resolve().parents[1] / "adapters" / "smollm2-135m")  # the trained cross adapter
EVAL_CASES = [
    (["--methods", "foo"], "sharedllm eval: error: unknown method 'foo'; valid methods: full, window"),
    (["--data", "latin1.txt"], "latin1.txt is not UTF-8 text (byte 0xe9 at offset 3); convert it first"),
    (["--data", "empty.txt"], "--data: no usable document in empty.txt (skipped 1 x empty file)"),
    (["--data", "missing.txt"], "--data: no such file or directory: missing.txt"),
    (["--data", "short.txt", "--lengths", "4K"],
     "no document is long enough for a window of 4K tokens (the longest has 14 bytes): pass shorter --lengths"),
    (["--knob", "tree_depth"], "argument --knob: wants NAME=VALUE with NAME a SharedLLM knob (n_injected_layers"),
    (["--methods", "full", "--knob", "tree_depth=1"], "--tree-depth is a knob of sharedllm, not of full"),  # as its flag
    (["--methods", "full", "--infllm", "topk=8"], "--infllm sets infllm's options: add infllm to --methods"),
    (["--methods", "infllm", "--infllm", "n_rep=200"], "--infllm: infllm needs 1 <= n_rep <= block_size, got n_rep=200"),
    (["--methods", "infllm", "--infllm", "block_size=0"], "--infllm: infllm needs local_window, block_size, chunk_size"),
    (["--methods", "infllm", "--infllm", "top_k=8"], "argument --infllm: wants KNOB=N with KNOB one of n_sink, "
     "block_size, n_rep, topk, chunk_size, local_window and N a whole number, got 'top_k=8'"),
    (["--methods", "full", "--tree-depth", "1"], "--tree-depth is a knob of sharedllm, not of full"),
    (["--methods", "sharedllm", "--adapter", CROSS_ADAPTER, "--injection", "joint"],
     "its weights do not fit injection='joint'"),
    (["--methods", "full", "yarn", "--decoder-window", "512"],
     "--decoder-window is a knob of window / streaming / infllm / sharedllm / cepe, not of full, yarn"),
    (["--full-logits"], "--full-logits does not apply to sharedllm eval"),
    (["--tasks", "niah_single"], "--tasks applies to ruler, not ppl"),
    (["--methods", "full", "window", "--label", "x"], "--label names one method's results"),
    (["--adapter", "no/such/adapter"], "no adapter in no/such/adapter (no config.json)"),
    (["--knob", "decoder_windw=128"], "got 'decoder_windw=128'; InfLLM's options are --infllm KNOB=VALUE"),
    (["--knob", "topk=8"], "got 'topk=8'; InfLLM's options are --infllm KNOB=VALUE"),  # its old InfLLM use
    (["--adapter", CROSS_ADAPTER, "--tree-depth", "5"],
     "SharedLLM knobs: a leaf of the context tree has chunk_size / 2**tree_depth = 8 tokens"),
    (["--tree-depth", "5"], "leaf_tokens_per_node must be at most the leaf length"),  # the default preset's 64
    # read as the knob's flag reads it (was: as JSON, then refused by the config's checks, or not: abc was a string)
    (["--adapter", "none", "--knob", "tree_selection=best"], "argument --knob: tree_selection: invalid choice: 'best'"),
    (["--knob", "tree_depth=abc"], "argument --knob: tree_depth: invalid int value: 'abc'"),
    (["--knob", "tree_depth=1", "--knob", "tree_depth=2"],  # the first won, without a word
     "argument --knob: gives tree_depth more than once: pass each knob once"),
    (["--adapter", "none", "--tree-selection", "best"], "argument --tree-selection: invalid choice: 'best'"),
    (["--max-windows", "0"], "argument --max-windows: must be at least 1, got 0"),
    (["--max-windows", "2.5"], "argument --max-windows: not a whole number: '2.5'"),
    (["--methods", "full", "--data", "book.txt", "--domains", "books"], "--domains chooses corpus domains"),
    (["--methods", "full", "--split", "validation"], "--split chooses a corpus split; with --data your files are the data"),
    # the first sliding window scores from token 1: these methods predict only inside their decoder window
    (["--protocol", "sliding"], "--protocol sliding scores each document from its first tokens on, which sharedllm "
     "cannot predict (only inside the decoder window): use --protocol cepe, or sliding with full / streaming / infllm / yarn"),
    (["--methods", "full", "window", "cepe", "--protocol", "sliding"], "which window, cepe cannot predict"),
    # cepe alone read only the adapter's decoder window: the 2026-11-23 "cepe-40-steps" rows scored the preset
    (["--methods", "cepe", "--adapter", CROSS_ADAPTER], "--methods cepe scores the untrained CEPE-style preset, which "
     f"would read only the decoder window of --adapter {CROSS_ADAPTER}: score a trained CEPE-style adapter as --methods "
     f"sharedllm --adapter {CROSS_ADAPTER} --label cepe"),
    (["--methods", "full", "--lengths", "256"], "ppl scores the last 256 tokens of each window after at least one token "
     "of context: --lengths must be more than 256, got 256"),
    (["--methods", "full", "--protocol", "sliding", "--lengths", "100", "1K"], "--lengths must be more than 256, got 100"),
    (["--methods", "full", "--lengths", "1K", "1024"], "--lengths lists 1K more than once: pass each once"),
    (["--methods", "full", "window", "full"], "--methods lists full more than once"),
    # each file was scored twice, however it was spelled
    (["--data", "book.txt", "./book.txt"], "--data lists book.txt more than once: pass each once"),
    (["--output", "book.txt"], "--output book.txt: book.txt is a file, not a folder"),  # was an error after the run
    (["--output", "book.txt/results"], "--output book.txt/results: book.txt is a file, not a folder"),
]


@pytest.mark.parametrize("extra, expected", EVAL_CASES, ids=[" ".join(c[0]) for c in EVAL_CASES])
def test_eval_ppl_bad_input_is_one_line_before_loading(no_model, capsys, extra, expected):
    argv = ["eval", "ppl", "--base", "fake", "--data", "book.txt", "--lengths", "1K", *extra]
    assert expected in error_line(capsys, argv)


@pytest.mark.parametrize("task", ["ppl", "demo"])
def test_perplexity_data_of_two_documents_of_one_name_is_refused(no_model, capsys, task):
    """Their windows are recorded, journaled and paired by the document's name: they would take each other's."""
    for folder in ("docs/one", "docs/two"):
        (no_model / folder).mkdir(parents=True)
        (no_model / folder / "book.txt").write_text(PROSE)
    (no_model / "records.jsonl").write_text("".join(json.dumps({"id": "a", "text": PROSE}) + "\n" for _ in range(2)))
    run = lambda *argv: error_line(capsys, ["eval", task, "--base", "fake", *argv])  # noqa: E731
    assert "--data: two documents are named 'book.txt'" in run("--data", "docs/one/book.txt", "docs/two/book.txt")
    assert "--data: two documents are named 'a'" in run("--data", "records.jsonl")
    # a folder names its files by their paths inside it: past this check, to the next one
    assert "no document is long enough for a window of 64K" in run("--data", "docs", "--lengths", "64K")


@pytest.mark.parametrize("lengths, shown", [("4Q", "'4Q'"), ("0", "'0'"), ("-4096", "'-4096'"), ("4.5", "'4.5'"),
                                            ("K", "'K'")])
@pytest.mark.parametrize("option", ["--lengths", "--max-length", "--decoder-window"])
def test_bad_length_strings(no_model, capsys, lengths, shown, option):
    line = error_line(capsys, ["eval", "heldout", "--base", "fake", option, lengths])
    assert line.startswith(f"sharedllm eval: error: argument {option}: ") and shown in line
    assert "token length" in line


@pytest.mark.parametrize("extra, expected", [
    (["--domains", "poetry"], "unknown domain 'poetry'; valid domains: books, code, math"),
    (["--split", "dev"], "--split must be one of train, validation, test, got 'dev'"),
    (["--data", "book.txt"], "--data applies to demo / longbench / niah / ppl / ruler, not heldout"),
])
def test_eval_corpus_choice_is_checked_before_loading(no_model, capsys, extra, expected):
    assert expected in error_line(capsys, ["eval", "heldout", "--base", "fake", "--lengths", "1K", *extra])


@pytest.mark.parametrize("argv, expected", [
    (["bench", "--repeats", "0"], "argument --repeats: must be at least 1, got 0"),
    (["bench", "--decode-steps", "-1"], "argument --decode-steps: must be at least 0, got -1"),
    (["bench", "--n-sink", "-4"], "argument --n-sink: must be at least 0, got -4"),
    (["bench", "--n-sink", "4.5"], "argument --n-sink: not a whole number: '4.5'"),
    (["bench", "--max-seconds", "0"], "argument --max-seconds: must be more than 0 seconds, got 0"),
    (["bench", "--cell-seconds", "nan"], "argument --cell-seconds: must be more than 0 seconds, got nan"),
    (["eval", "heldout", "--max-seconds", "-5"], "argument --max-seconds: must be more than 0 seconds, got -5"),
    (["eval", "heldout", "--max-seconds", "1h"], "argument --max-seconds: not a number of seconds: '1h'"),
    (["bench", "--infllm", "topk=-1"], "argument --infllm: wants KNOB=N with KNOB one of n_sink, block_size"),
    (["bench", "--infllm", "n_sinks=8"], "got 'n_sinks=8'"),  # was a failed cell after loading the model
    (["bench", "--methods", "full", "--infllm", "topk=8"], "--infllm sets infllm's options: add infllm to --methods"),
    (["bench", "--adapter", CROSS_ADAPTER, "--injection", "joint"],  # was a failed cell after loading the model
     "its weights do not fit injection='joint': joint injection needs no adapter"),
    (["bench", "--max-length", "full=abc"], "argument --max-length: not a token length: 'abc'"),  # was a traceback
    (["bench", "--max-length", "fulll=8K"], "argument --max-length: wants METHOD=LENGTH with METHOD one of sharedllm"),
    # each was measured (or capped) twice, the ratios reading the first
    (["bench", "--lengths", "4K", "4096"], "--lengths lists 4K more than once: pass each once"),
    (["bench", "--methods", "full", "window", "full"], "--methods lists full more than once: pass each once"),
    (["bench", "--max-length", "full=8K", "full=16K"], "--max-length lists full more than once: pass each once"),
    (["bench", "--methods", "sharedllm", "--max-length", "full=8K"], "--max-length caps full, not in --methods (sharedllm)"),
], ids=lambda case: " ".join(case) if isinstance(case, list) else None)
def test_bench_and_eval_flags_are_checked_before_loading(no_model, capsys, argv, expected):
    assert expected in error_line(capsys, [*argv, "--base", "fake"])


def test_bench_refuses_to_replace_a_result_before_loading(no_model, capsys, monkeypatch):
    (no_model / "results").mkdir()
    (no_model / "results" / "bench-cpu.json").write_text("a 25-minute run")
    line = error_line(capsys, ["bench", "--base", "fake", "--adapter", "none", "--device", "cpu"])
    assert line.endswith("results/bench-cpu.json exists: pass --overwrite to replace it (and its figures) once this "
                         "grid is done, or another --output")
    assert (no_model / "results" / "bench-cpu.json").read_text() == "a 25-minute run"
    import sharedllm.assets  # without --base: refused before the default model is built (a minute on a new machine)

    monkeypatch.setattr(sharedllm.assets, "default_model_path", lambda: pytest.fail("built the default model first"))
    assert error_line(capsys, ["bench", "--adapter", "none", "--device", "cpu"]).endswith("or another --output")


def test_eval_reads_a_damaged_adapter_config_as_one_line(no_model, capsys):
    (no_model / "mine").mkdir()
    (no_model / "mine" / "config.json").write_text("{not json")
    assert "--adapter: " in error_line(capsys, ["eval", "ppl", "--data", "book.txt", "--adapter", "mine"])


BENCH_RESULT = json.dumps({"meta": {}, "cells": [], "targets": []})
REPLOT_CASES = [
    (["--replot", "missing.json"], "--replot missing.json: no such file"),  # were tracebacks
    (["--replot", "book.txt"], "book.txt is not a result file (not JSON"),
    (["--replot", "eval.json"], "--replot eval.json is not a `sharedllm bench` result (it has no meta and cells)"),
    # grid flags were ignored
    (["--replot", "bench.json", "--lengths", "4K", "--methods", "full"], "--replot redoes the table, targets and plots "
     "of bench.json as it was measured: --methods, --lengths would be ignored"),
    (["--replot", "bench.json", "--output", "elsewhere"], "--output would be ignored"),
]


@pytest.mark.parametrize("argv, expected", REPLOT_CASES, ids=[" ".join(c[0]) for c in REPLOT_CASES])
def test_bench_replot_bad_input_is_one_line(no_model, capsys, argv, expected):
    (no_model / "eval.json").write_text(json.dumps({"task": "ppl", "scores": {}}))
    (no_model / "bench.json").write_text(BENCH_RESULT)
    assert expected in error_line(capsys, ["bench", *argv, "--figures", "figures"])
    assert not (no_model / "figures").exists()


@pytest.mark.parametrize("argv, expected", [
    (["passkey", "--data", "book.txt"], "--data applies to demo / longbench / niah / ppl / ruler, not passkey"),
    (["passkey", "--domains", "books"], "--domains applies to demo / heldout / niah / ppl / ruler, not passkey"),
    (["passkey", "--split", "validation"], "--split applies to demo / heldout / niah / ppl / ruler, not passkey"),
    (["longbench", "--data", "x.jsonl", "--split", "test"], "--split applies to demo / heldout / niah / ppl / ruler"),
    (["ppl", "--max-length", "4K"], "--max-length applies to heldout, not ppl"),
    (["ppl", "--max-seconds", "60"], "--max-seconds applies to heldout, not ppl"),
    (["ppl", "--targets-of", "8K"], "--targets-of applies to heldout, not ppl"),
    (["niah", "--overwrite"], "--overwrite applies to heldout, not niah"),
    (["ppl", "--seed", "1"], "--seed applies to demo / heldout / niah / passkey / ruler, not ppl"),
    (["longbench", "--data", "x.jsonl", "--seed", "1"], "--seed applies to demo / heldout / niah / passkey / ruler"),
    (["passkey", "--depths", "0.5", "0.5"], "--depths lists 0.5 more than once"),
    (["heldout", "--lengths", "200"], "heldout scores the last 256 tokens of each window"),
    (["demo", "--docs", "book.txt"], "--docs book.txt: book.txt is a file, not a folder"),
], ids=lambda case: " ".join(case) if isinstance(case, list) else None)
def test_eval_flags_a_task_would_ignore_or_fail_on_are_refused_before_loading(no_model, capsys, argv, expected):
    line = error_line(capsys, ["eval", *argv, "--base", "fake", "--methods", "full"])
    assert line.startswith("sharedllm eval: error: ") and expected in line


def test_a_passkey_length_shorter_than_the_bare_prompt_is_refused_before_the_model_loads(no_model, capsys):
    """It failed in the prompt search of the first trial; then it was refused once the base model had loaded (a
    minute for a 7B base): now with its tokenizer alone (`no_model` fails the test if the model loads)."""
    line = error_line(capsys, ["eval", "passkey", "--base", "fake", "--methods", "full", "--lengths", "100", "4K"])
    assert "a passkey prompt without filler has 2" in line and "tokens: --lengths 100 is too short for one" in line


@pytest.mark.parametrize("argv, expected", [
    (["niah", "--lengths", "100", "4K"], "a niah prompt without haystack and its 32-token answer have 4"),
    (["ruler", "--lengths", "1K", "4K"], "a ruler common_words prompt without haystack and its 120-token answer have "
                                         "14"),
    (["ruler", "--tasks", "niah_single", "--lengths", "4K", "200"],
     "a ruler niah_single prompt without haystack and its 128-token answer have 4"),
], ids=lambda case: " ".join(case) if isinstance(case, list) else None)
def test_a_needle_length_shorter_than_the_bare_prompt_is_refused_before_the_model_loads(no_model, capsys, argv,
                                                                                      expected):
    """As passkey's: it failed in the prompt search of the first trial, after the methods before it had run."""
    line = error_line(capsys, ["eval", *argv, "--base", "fake", "--methods", "full", "--data", "book.txt"])
    too_short = {"100", "1K", "200"} & set(argv)
    assert expected in line and line.endswith(f"tokens: --lengths {too_short.pop()} is too short for one")


def _stale_journal(folder: Path, argv: list[str], task: str, **settings) -> Path:
    """The journal a stopped run of `argv` left of sharedllm's trials, tagged with other adapter weights than its
    adapter's (retrained into its folder since), named as `Session.journal` names it."""
    from sharedllm.cli import build_parser, chosen_adapter
    from sharedllm.evaluation import cli, session
    from sharedllm.evaluation.journal import TrialJournal

    args = build_parser("eval").parse_args(argv)
    for key, value in cli.DEFAULTS[args.task].items():  # as eval's run fills them
        if getattr(args, key, None) is None:
            setattr(args, key, value)
    adapter = chosen_adapter(args.adapter)
    shared = session.shared_settings(args, adapter, session.read_adapter_config(adapter))
    config = session.method_config_before_loading("sharedllm", args, shared)
    journal = TrialJournal(folder / args.output, task, "sharedllm",
                           session.journal_keys(args, config, session.model_name(args.base), **settings),
                           weights="0123456789abcdef")
    journal.append({"length": 4096, "depth": 0.5, "trial": 0, "correct": True})
    return journal.path


@pytest.mark.parametrize("task", ["passkey", "niah", "ruler", "demo"])
def test_a_journal_of_other_adapter_weights_is_refused_before_loading(no_model, capsys, task):
    """It was refused when sharedllm's turn came, after full had run; a journal of other settings is not refused."""
    from sharedllm.evaluation import session

    argv = ["eval", task, "--base", "fake", "--methods", "full", "sharedllm", "--lengths", "4K", "--output", "out",
            *([] if task == "passkey" else ["--data", "book.txt"])]
    settings = dict(zip(("haystack", "data"), session.haystack(SimpleNamespace(data=["book.txt"])))) if task in (
        "niah", "ruler") else {}
    other = _stale_journal(no_model, [*argv, "--seed", "1"], "passkey" if task == "demo" else task, **settings)
    with pytest.raises(pytest.fail.Exception, match="a model was loaded"):  # not this run's: it goes on
        main(argv)
    stale = _stale_journal(no_model, argv, "passkey" if task == "demo" else task, **settings)
    assert stale != other
    line = error_line(capsys, argv)
    assert line.startswith(f"sharedllm eval: error: {stale.relative_to(no_model)} holds 1 trials of other adapter "
                           "weights (sha256 0123456789abcdef..., now ")
    assert line.endswith("the adapter was changed since that run stopped; delete the journal to score it again")


def _adapter_on(base: str, folder: Path) -> str:
    """The shipped cross adapter's config, recorded as trained on `base`."""
    config = json.loads((Path(CROSS_ADAPTER) / "config.json").read_text())
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps({**config, "base_model": base}))
    return str(folder)


def test_the_length_checks_read_the_tokenizer_of_the_base_eval_loads(no_model, monkeypatch, capsys):
    """--base, else the base the adapter records, else the default model (as Session: `default_model_path`)."""
    import sharedllm.assets
    from sharedllm.cli import InputError

    def tokenizer_of(path, required=True):
        raise InputError(f"tokenizer of {path}")

    monkeypatch.setattr(sharedllm.loading, "load_tokenizer", tokenizer_of)
    monkeypatch.setattr(sharedllm.assets, "default_model_path", lambda fetch=True: no_model / "default")
    argv = ["eval", "niah", "--methods", "full", "--data", "book.txt", "--lengths", "1K"]
    assert error_line(capsys, argv).endswith(f"tokenizer of {no_model / 'default'}")
    assert error_line(capsys, [*argv, "--base", "given"]).endswith("tokenizer of given")
    assert error_line(capsys, [*argv, "--adapter", _adapter_on("owner/base", no_model / "mine")]).endswith(
        "tokenizer of owner/base")


def test_eval_loads_the_base_the_adapter_records_unless_told_otherwise(no_model, monkeypatch, capsys):
    """As `ask` does; the default model is named as before (results and journals key on its name)."""
    from sharedllm.cli import InputError
    from sharedllm.evaluation import checks

    def loaded(path, dtype=None):
        raise InputError(f"loaded {path}")

    monkeypatch.setattr(sharedllm.loading, "load_causal_lm", loaded)
    adapter = _adapter_on("/models/other-base", no_model / "mine")
    argv = ["eval", "ppl", "--methods", "full", "--data", "book.txt", "--lengths", "1K", "--adapter", adapter]
    assert error_line(capsys, argv).endswith("loaded /models/other-base")
    assert error_line(capsys, [*argv, "--base", "given"]).endswith("loaded given")
    assert checks.recorded_base(CROSS_ADAPTER) is None and checks.recorded_base("none") is None


def test_an_adapter_on_another_base_is_one_line_before_any_method_runs(no_model, monkeypatch, capsys):
    import sharedllm.methods

    monkeypatch.setattr(sharedllm.loading, "load_causal_lm", lambda path, dtype=None: (FakeBase(), char_tokenizer()))
    monkeypatch.setattr(sharedllm.loading, "base_fingerprint", lambda model: "0123456789abcdef")
    monkeypatch.setattr(sharedllm.methods, "load_method", lambda *a, **k: pytest.fail("a method was built"))
    line = error_line(capsys, ["eval", "ppl", "--methods", "full", "sharedllm", "--data", "book.txt", "--lengths", "1K",
                               "--adapter", CROSS_ADAPTER, "--base", "other"])
    assert line.startswith(f"sharedllm eval: error: --adapter {CROSS_ADAPTER} was trained on ")
    assert "not on --base other (fingerprint 0123456789abcdef): leave --base out to load the adapter's own base" in line


def test_eval_depths_out_of_range(no_model, capsys):
    line = error_line(capsys, ["eval", "passkey", "--base", "fake", "--methods", "full", "--depths", "1.5"])
    assert line == "sharedllm eval: error: --depths must lie in [0, 1], got [1.5]"


LONGBENCH_CASES = [
    ("", "empty.jsonl holds no record (one JSON object per line, LongBench format)"),
    ('{"input": "q", "context": "c", "answers": ["a"]}\n{"input": "q", "context\n',
     "bad.jsonl line 2: not JSON (Unterminated string"),
    ('["a list"]\n', "bad.jsonl line 1: a JSON list, not a record (object)"),
    ('\n\n{"input": "q", "answers": ["a"]}\n', "bad.jsonl line 3: record without ['context']"),
]


@pytest.mark.parametrize("content, expected", LONGBENCH_CASES)
def test_longbench_bad_files_name_file_and_line(no_model, capsys, content, expected):
    name = "empty.jsonl" if not content else "bad.jsonl"
    (no_model / name).write_text(content)
    line = error_line(capsys, ["eval", "longbench", "--base", "fake", "--methods", "full", "--data", name])
    assert expected in line and line.startswith("sharedllm eval: error: ")


def test_longbench_without_data_or_with_a_missing_file(no_model, capsys):
    assert "longbench needs --data" in error_line(capsys, ["eval", "longbench", "--base", "fake", "--methods", "full"])
    line = error_line(capsys, ["eval", "longbench", "--base", "fake", "--methods", "full", "--data", "nope.jsonl"])
    assert line == "sharedllm eval: error: nope.jsonl: no such file"


def test_default_adapter_is_found_from_any_folder(no_model):
    from sharedllm.cli import build_parser
    from sharedllm.evaluation import session

    assert Path.cwd() == no_model  # not the repository
    for command in (["eval", "ppl"], ["bench"]):
        adapter = build_parser(command[0]).parse_args(command).adapter
        assert (Path(adapter) / "config.json").is_file()
        assert session.portable_path(adapter) == "adapters/smollm2-135m-joint-more-exact"  # results name no machine path


@pytest.mark.parametrize("value", [None, "none", "None", "NONE"])
def test_adapter_none_in_any_case_is_no_adapter_checked_or_not(no_model, value):
    from sharedllm.cli import adapter_argument, chosen_adapter

    assert chosen_adapter(value) is None and adapter_argument(value) is None


def test_a_missing_adapter_is_refused_only_by_adapter_argument(no_model):
    from sharedllm.cli import InputError, adapter_argument, chosen_adapter

    assert chosen_adapter("no/such/adapter") == "no/such/adapter"  # for checks of methods that may not read it
    with pytest.raises(InputError, match=r"no adapter in no/such/adapter \(no config.json\)"):
        adapter_argument("no/such/adapter")


def test_a_wheel_carries_every_file_of_the_default_adapter():
    """pyproject's package-data globs (relative to the package, through the sharedllm/default_adapter link) match
    every file of the default adapter, its LoRA weights included: a wheel install reads the same adapter."""
    import tomllib

    import sharedllm
    from sharedllm.assets import DEFAULT_ADAPTER

    package = Path(sharedllm.__file__).parent
    repo = package.parent
    globs = tomllib.loads((repo / "pyproject.toml").read_text())["tool"]["setuptools"]["package-data"]["sharedllm"]
    packaged = {path.resolve() for pattern in globs for path in package.glob(pattern) if path.is_file()}
    files = {path for path in DEFAULT_ADAPTER.rglob("*") if path.is_file()}
    assert DEFAULT_ADAPTER / "upper_lora" / "adapter_model.safetensors" in files
    assert files <= packaged, sorted(map(str, files - packaged))


def test_the_default_model_is_named_by_its_place_in_the_assets_home(tmp_path, monkeypatch):
    """Two machines with different homes key a run's journal alike, so one continues what the other stopped."""
    from sharedllm.evaluation import session

    names = set()
    for home in (tmp_path / "a", tmp_path / "b"):
        monkeypatch.setenv("SHAREDLLM_HOME", str(home))
        names.add(session.portable_path(str(home / "models" / "SmolLM2-135M-Instruct")))
    assert names == {"$SHAREDLLM_HOME/models/SmolLM2-135M-Instruct"}
    assert session.portable_path(str(tmp_path / "elsewhere")) == str(tmp_path / "elsewhere")  # any other path as given


def test_no_window_in_tokens_is_caught_before_any_method_runs(no_model, monkeypatch, capsys):
    """More bytes than T but fewer tokens than T (a 2-byte character is one token): caught once tokenised."""
    import sharedllm.methods

    (no_model / "accents.txt").write_text("\u00e9" * 600)  # 1200 bytes, 600 tokens
    monkeypatch.setattr(sharedllm.loading, "load_causal_lm", lambda path, dtype=None: (FakeBase(), char_tokenizer()))
    monkeypatch.setattr(sharedllm.methods, "load_method", lambda *a, **k: pytest.fail("a method was built"))
    line = error_line(capsys, ["eval", "ppl", "--base", "fake", "--methods", "full", "--data", "accents.txt",
                               "--lengths", "1K", "--output", "results"])
    assert "window of 1K tokens (the longest has 600 tokens)" in line
    assert not (no_model / "results").exists()  # no result with a null score


@pytest.mark.parametrize("base, message", [
    ("./nowhere", "no model folder at nowhere"),
    ("runs/model", "'runs/model' is neither a local model folder nor a hub model that could be fetched"),  # hub-like
])
@pytest.mark.parametrize("command", [
    ["eval", "ppl", "--methods", "window", "--lengths", "1K", "--data", "book.txt"],
    ["eval", "passkey", "--methods", "window", "--lengths", "1K"],  # its length check loads the tokenizer
    ["bench", "--methods", "window", "--lengths", "1K", "--adapter", "none"],
    ["bench", "--methods", "window", "--lengths", "1K", "--adapter", "none", "--no-isolate"],
    ["ask", "book.txt", "-q", "Who?"],
], ids=["eval", "eval passkey", "bench", "bench in-process", "ask"])
def test_a_missing_base_model_is_one_line(tmp_path, monkeypatch, capsys, command, base, message):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("SHAREDLLM_HOME", str(tmp_path / "home"))
    (tmp_path / "book.txt").write_text(PROSE)
    line = error_line(capsys, [*command, "--base", base])
    assert line.startswith(f"sharedllm {command[0]}: error: ") and message in line


def test_report_marks_cells_without_a_window_instead_of_crashing(tmp_path):
    """Older runs wrote a null score for a length without any window; the report must not try to plot it."""
    results = tmp_path / "results"
    results.mkdir()
    result = {"task": "ppl", "protocol": "cepe", "method": "full", "model": "m", "data": {"source": "short.txt"},
              "scores": {"4096": None}, "counts": {"4096": {"windows": 0}}, "created": "2026-01-01"}
    (results / "ppl_full.json").write_text(json.dumps(result))
    page = report.regenerate(results, tmp_path / "docs").read_text()
    assert "| full | – (no window) |" in page and "![perplexity" not in page
    result.update(method="window", scores={"4096": 12.0}, counts={"4096": {"windows": 3}})
    (results / "ppl_window.json").write_text(json.dumps(result))
    page = report.regenerate(results, tmp_path / "docs").read_text()
    assert "| window | 12.00 (3 win) |" in page and "![perplexity" in page


DATA = ["--data", "book.txt"]
TRAIN_CASES = [
    ([*DATA, "--steps", "0"], "--steps must be at least 1, got 0"),
    ([*DATA, "--steps", "-3"], "--steps must be at least 1, got -3"),
    ([*DATA, "--grad-accum", "0"], "--grad-accum must be at least 1, got 0"),
    ([*DATA, "--chunk-size", "100", "--tree-depth", "3"], "chunk_size (100) must be divisible by 2**tree_depth (8)"),
    ([*DATA, "--tokens-per-node", "0"], "argument --tokens-per-node: must be at least 1, got 0"),
    ([*DATA, "--full-logits"], "--full-logits does not apply to training"),
    ([*DATA, "--injection", "joint"], "--injection joint adds no module, so without --lora-rank there is nothing"),
    ([*DATA, "--lr", "nan"], "--lr must be >= 0, got nan"),
    ([*DATA, "--stop-after", "9", "--steps", "5"], "--stop-after must be in [1, --steps = 5], got 9"),
    ([*DATA, "--warmup", "20", "--steps", "5"], "--warmup 20 is longer than --steps 5: the learning rate would never"),
    ([*DATA, "--retrieval-fraction", "1.5"], "--retrieval-fraction must be in [0, 1], got 1.5"),
    ([*DATA, "--resume", "--overwrite"], "--resume continues the run in --output, --overwrite replaces it: pass one"),
    ([*DATA, "--resume"], "--resume: there is no run to continue in run (the folder does not exist)"),  # was a new run
    (["--domains", "books:x"], "--domains books:x: the weight after ':' must be a number, e.g. books:2"),  # a traceback
    (["--domains", "books:0"], "--domains books:0: a domain's weight must be more than 0"),
    ([*DATA, "--validation-data", "book.txt"], "1 --validation-data document(s) are also in --data (the same text"),
    ([*DATA, "--init-adapter", "run"], "--init-adapter and --output are the same folder (run)"),  # --overwrite deleted it
    (["--validation-data", "book.txt"], "--validation-data goes with --data"),
    ([*DATA, "--domains", "books"], "--domains chooses asset corpora; with --data your files are the training data"),
    (["--data", "missing.txt"], "--data: no such file or directory: missing.txt"),
    (["--data", "empty.txt"], "--data: no usable document in empty.txt"),
    (["--data", "latin1.txt"], "--data: latin1.txt is not UTF-8 text"),
    ([], "training corpora: the books corpus is not in"),  # the assets were never fetched
]


@pytest.mark.parametrize("extra, expected", TRAIN_CASES, ids=[" ".join(c[0]) for c in TRAIN_CASES])
def test_train_bad_input_is_one_line_before_loading(no_model, capsys, extra, expected):
    assert expected in error_line(capsys, ["train", "--output", "run", *extra])
    assert not (no_model / "run").exists()  # nothing written


def test_train_into_a_folder_that_is_not_a_run(no_model, capsys):
    (no_model / "mine").mkdir()
    (no_model / "mine" / "notes.txt").write_text("keep")
    line = error_line(capsys, ["train", "--output", "mine", "--data", "book.txt"])
    assert line.startswith("sharedllm train: error: --output mine is not empty and holds no training run (notes.txt)")


def test_report_refuses_to_replace_the_page_with_nothing(no_model, capsys):
    (no_model / "docs").mkdir()
    (no_model / "docs" / "results.md").write_text("committed")
    line = error_line(capsys, ["report", "--results", "nowhere", "--docs", "docs"])
    assert line == "sharedllm report: error: no results folder nowhere"
    (no_model / "results").mkdir()
    line = error_line(capsys, ["report", "--results", "results", "--docs", "docs"])
    assert "no result JSON in results, results/heldout or results/retrieval: nothing to report (docs/results.md left as it is)" in line
    (no_model / "results" / "half.json").write_text('{"task": "ppl", "sco')  # e.g. a copy cut short
    assert "results/half.json is not a result file (not JSON" in error_line(capsys, ["report", "--docs", "docs"])
    assert (no_model / "docs" / "results.md").read_text() == "committed"
    (no_model / "results" / "half.json").unlink()
    for folder in ("heldout", "retrieval"):  # the headline folders are read the same way
        (no_model / "results" / folder).mkdir()
        (no_model / "results" / folder / "half.json").write_text('{"task": "heldout", "summ')
        line = error_line(capsys, ["report", "--docs", "docs"])
        assert f"results/{folder}/half.json is not a result file (not JSON" in line
        (no_model / "results" / folder / "half.json").unlink()
    assert (no_model / "docs" / "results.md").read_text() == "committed"


@pytest.mark.parametrize("argv", [["eval", "ppl"], ["bench"], ["ask", "f.txt", "-q", "Who?"]], ids=lambda a: a[0])
def test_every_inference_command_takes_one_device_flag(argv):
    """flags.add_device_argument: the flag stays a name while parsing, "auto" by default; `resolve_device` makes
    "auto" this machine's device and leaves a device given as given."""
    from sharedllm import cli
    from sharedllm.flags import default_device, resolve_device

    parser = cli.build_parser(argv[0])
    assert parser.parse_args(argv).device == "auto" == parser.parse_args([*argv, "--device", "auto"]).device
    assert resolve_device("auto") == default_device() == resolve_device(None)
    assert parser.parse_args([*argv, "--device", "cpu"]).device == resolve_device("cpu") == "cpu"
    help_text = " ".join(parser._subparsers._group_actions[0].choices[argv[0]].format_help().split())
    assert "(default: auto, cuda if available, else cpu)" in help_text


def test_bench_device_choices_take_auto(capsys):
    """bench's --device has choices (cpu, cuda): "auto" is one of them, a device outside them a one-line error."""
    from sharedllm import cli

    parser = cli.build_parser("bench")
    assert parser.parse_args(["bench", "--device", "auto"]).device == "auto"
    with pytest.raises(SystemExit):
        parser.parse_args(["bench", "--device", "tpu"])
    assert "invalid choice: 'tpu'" in capsys.readouterr().err


def test_every_model_command_takes_threads_and_main_applies_it(monkeypatch, capsys):
    import sys
    import types

    import torch

    from sharedllm import cli
    from sharedllm.flags import add_threads_argument

    subparsers = lambda name: cli.build_parser(name)._subparsers._group_actions[0].choices  # noqa: E731
    for name in ("train", "eval", "bench", "ask"):
        assert "--threads N" in subparsers(name)[name].format_help(), name
    seen = []
    probe = types.ModuleType("probe_command")
    probe.add_arguments = add_threads_argument
    probe.run = lambda args: seen.append(torch.get_num_threads())
    monkeypatch.setitem(sys.modules, "probe_command", probe)
    monkeypatch.setitem(cli.COMMANDS, "probe", ("probe_command", "a command that runs a model"))
    before = torch.get_num_threads()
    try:
        with pytest.raises(SystemExit) as done:
            cli.main(["probe", "--threads", "1"])
        assert done.value.code == 0 and seen == [1]
    finally:
        torch.set_num_threads(before)
    with pytest.raises(SystemExit) as refused:
        cli.main(["probe", "--threads", "0"])
    assert refused.value.code == 2 and "must be at least 1, got 0" in capsys.readouterr().err


def test_a_missing_corpus_is_one_line_before_loading(no_model, capsys):
    """The corpus is read after the base model loads: without it (no `sharedllm assets` yet, or a test document
    missing) eval was a FileNotFoundError traceback then."""
    for argv in (["eval", "heldout", "--domains", "books", "--lengths", "4K"], ["eval", "ruler", "--lengths", "4K"]):
        assert "corpus is not in" in error_line(capsys, argv) and "run `sharedllm assets` first" in error_line(capsys, argv)
