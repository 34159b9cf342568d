"""NIAH / RULER generators, LongBench loading and scoring, the report, and `sharedllm eval` end to end
with fake methods (no model weights)."""

import argparse
import contextlib
import json
import math
import re

import pytest
import torch
from fakes import PROSE, FakeBase, FakeMethod, char_tokenizer, fake_stack  # noqa: F401 (fixture)

from sharedllm import provenance
from sharedllm.cli import InputError, main
from sharedllm.evaluation import longbench, report
from sharedllm.evaluation.needle import (RULER_TASKS, effective_length, insert_at_depths, make_sample,
                                         niah_sample, prose_sentences, score_sample)


class WhitespaceTokenizer:
    def encode(self, text):
        return text.split()


# ------------------------------------------------------------------------------------------------ RULER


@pytest.mark.parametrize("task", list(RULER_TASKS))
@pytest.mark.parametrize("haystack", [None, PROSE])
def test_ruler_golds_are_in_the_prompt_and_length_fits(task, haystack):
    tokenizer = WhitespaceTokenizer()
    length = 3000
    sample = make_sample(task, tokenizer, length, seed=3, haystack_text=haystack)
    budget = length - sample.max_new_tokens
    assert budget - 12 <= len(tokenizer.encode(sample.prompt)) <= budget
    assert sample.golds and all(g.lower() in sample.prompt.lower() for g in sample.golds)
    assert make_sample(task, tokenizer, length, seed=3, haystack_text=haystack).prompt == sample.prompt
    assert make_sample(task, tokenizer, length, seed=4, haystack_text=haystack).prompt != sample.prompt
    assert score_sample(sample, " ".join(sample.golds).upper()) == 1.0
    assert score_sample(sample, "nothing useful") == 0.0


def test_ruler_task_shapes():
    tokenizer = WhitespaceTokenizer()
    assert len(make_sample("niah_multivalue", tokenizer, 2000, 0).golds) == 4
    multiquery = make_sample("niah_multiquery", tokenizer, 2000, 0)
    assert len(multiquery.golds) == 4 and all(k in multiquery.prompt.split("\n")[-1] for k in multiquery.info["keys"])
    assert len(make_sample("niah_multikey", tokenizer, 2000, 0).golds) == 1
    assert make_sample("niah_multikey", tokenizer, 2000, 0).prompt.count("One of the special magic numbers") == 4
    vt = make_sample("variable_tracking", tokenizer, 2000, 0)
    assert len(vt.golds) == 5 and f"VAR {vt.golds[0]} = {vt.info['value']}." in vt.prompt
    chain = [vt.prompt.index(f"VAR {b} = VAR {a}.") for a, b in zip(vt.golds, vt.golds[1:])]
    assert chain == sorted(chain)  # every assignment comes after its source
    cwe = make_sample("common_words", tokenizer, 5000, 0)
    counts = {w: len(re.findall(rf"\d+\. {w}\n", cwe.prompt + "\n")) for w in cwe.golds}
    assert len(cwe.golds) == 10 and set(counts.values()) == {30}
    words = re.findall(r"^\d+\. (\w+)$", cwe.prompt, flags=re.M)
    assert max(n for w, n in __import__("collections").Counter(words).items() if w not in cwe.golds) == 3


def test_ruler_needle_values_stay_those_of_the_recorded_results():
    # results/retrieval/ruler_joint-exercises_ruler_20261204-230316.json, trials 0 and 1: `compare` pairs runs made months
    # apart on these prompts, so a change in how a value is drawn must fail here, not pair other prompts silently
    tokenizer = WhitespaceTokenizer()
    golds = [make_sample("niah_multikey", tokenizer, 32768, f"0/{trial}", fill=False).golds for trial in (0, 1)]
    assert golds == [["1454294"], ["2631896"]]


def test_niah_needle_sits_at_a_sentence_boundary_at_its_depth():
    tokenizer = WhitespaceTokenizer()
    for depth in (0.0, 0.3, 1.0):
        sample = niah_sample(tokenizer, 2000, "s", haystack_text=PROSE, depth=depth)
        context = sample.prompt.split("\n")[1]
        needle = re.search(r"One of the special magic numbers for [\w-]+ is: \d{7}\.", context)
        before = context[: needle.start()]
        assert before == "" or before.endswith((". ", "? ", "! "))
        assert abs(len(before) / len(context) - depth) < 0.05


def test_insert_at_depths_and_prose_sentences():
    assert prose_sentences("One.  Two?\nThree!") == ["One.", "Two?", "Three!"]
    assert insert_at_depths(["A.", "B.", "C.", "D."], [(0.5, "X."), (1.0, "Y."), (0.0, "W.")]) == "W. A. B. X. C. D. Y."


def test_effective_length():
    scores = {4096: 90.0, 8192: 85.0, 16384: 70.0, 32768: 88.0}
    assert effective_length(scores, 80.0) == 8192  # 32K recovers, but the curve already fell below at 16K
    assert effective_length(scores, 95.0) is None
    assert effective_length(scores, 60.0) == 32768


# ------------------------------------------------------------------------------------------------ LongBench


def _write_jsonl(path, records):
    path.write_text("\n".join(json.dumps(r) for r in records) + "\n")


FIXTURE = [
    {"input": "Who wrote it?", "context": "A long story. " * 50, "answers": ["Jane Austen"], "length": 150,
     "dataset": "narrativeqa", "all_classes": None},
    {"input": "What is the capital?", "context": "Text.", "answers": ["Location"], "length": 2,
     "dataset": "trec", "all_classes": ["Location", "Description"]},
    {"input": "q", "context": "c", "answers": ["x = 1"], "length": 2, "dataset": "my_custom_set", "all_classes": None},
]


class ScriptedMethod:
    """generate() returns a scripted answer per call (encoded with the tokenizer) and records input sizes."""

    def __init__(self, tokenizer, answers):
        self.tokenizer, self.answers, self.sizes = tokenizer, list(answers), []

    def generate(self, input_ids, max_new_tokens):
        self.sizes.append(len(input_ids))
        return torch.tensor(self.tokenizer.encode(self.answers.pop(0), add_special_tokens=False))


def test_longbench_load_prompt_truncate_and_score(tmp_path):
    path = tmp_path / "mixed.jsonl"
    _write_jsonl(path, FIXTURE)
    records = longbench.load_records([path])
    assert [r["dataset"] for r in records] == ["narrativeqa", "trec", "my_custom_set"]
    prompt = longbench.build_prompt(records[0])
    assert prompt.startswith("You are given a story") and prompt.endswith("Question: Who wrote it?\n\nAnswer:")
    assert longbench.build_prompt(records[2]).startswith("c\n\n")  # generic fallback
    assert longbench.truncate_middle(list(range(100)), 10) == [0, 1, 2, 3, 4, 95, 96, 97, 98, 99]
    assert longbench.truncate_middle(list(range(100)), 11) == [0, 1, 2, 3, 4] + list(range(94, 100))
    assert longbench.truncate_middle([1, 2], 10) == [1, 2]

    tokenizer = char_tokenizer()
    method = ScriptedMethod(tokenizer, ["Jane Austen wrote it", "Location\nDescription", "x = 1"])
    result = longbench.run_longbench(method, tokenizer, records, max_input_tokens=300, progress=False)
    # narrativeqa F1: pred {jane, austen, wrote, it} vs gold {jane, austen}: P = 1/2, R = 1 -> 2/3
    assert result["scores"]["narrativeqa"] == pytest.approx(100 * 2 / 3)
    assert result["scores"]["trec"] == 100.0  # only the first line counts for few-shot sets
    assert result["scores"]["my_custom_set"] == 100.0
    assert method.sizes[0] == 300 and result["records"][0]["prompt_tokens"] > 300


# ------------------------------------------------------------------------------------------------ CLI + report


def _parse(argv):
    from sharedllm.evaluation import cli

    parser = argparse.ArgumentParser()
    cli.add_arguments(parser)
    return cli, parser.parse_args(argv)


def test_eval_demo_end_to_end_writes_results_and_report(fake_stack, capsys):
    tmp = fake_stack
    cli, args = _parse(["demo", "--base", "fake", "--adapter", "none", "--lengths", "1K", "--data",
                        str(tmp / "book.txt"), "--output", str(tmp / "results"), "--docs", str(tmp / "docs")])
    cli.run(args)
    files = sorted((tmp / "results").glob("*.json"))
    assert len(files) == 8  # (ppl, passkey) x (full, window, streaming, sharedllm)
    required = {"task", "protocol", "method", "model", "adapter", "data", "lengths", "counts", "scores",
                "wall_time_s", "hardware", "command", "tokenizer"}
    for f in files:
        result = json.loads(f.read_text())
        assert required <= result.keys() and {"cpu", "threads", "dtype", "torch", "transformers"} <= result["hardware"].keys()
        if result["task"] == "ppl":
            assert result["protocol"] == "cepe" and result["counts"]["1024"]["windows"] == 1  # demo cap
            assert result["counts"]["1024"]["scored_tokens"] == 256
            expected = 2.718281828 if result["method"] == "full" else 7.389056
            assert result["scores"]["1024"] == pytest.approx(expected, rel=1e-6)
        else:
            assert result["scores"]["1024"] == (0.0 if result["method"] == "window" else 1.0)
            assert result["counts"]["trials_per_cell"] == 1  # demo: one trial per method
    out = capsys.readouterr().out
    assert "DEMO SETTINGS" in out and "PPL@1K" in out and "passkey@1K" in out
    # two ppl runs of one data pair window by window (`sharedllm compare`): full reads NLL 1, window NLL 2
    ppl = {json.loads(f.read_text())["method"]: str(f) for f in files if f.name.startswith("ppl_")}
    with pytest.raises(SystemExit) as exit_:
        main(["compare", ppl["full"], ppl["window"]])
    assert exit_.value.code == 0 and f"PPL A / PPL B = {math.exp(-1):.3f}" in capsys.readouterr().out
    markdown = (tmp / "docs" / "results.md").read_text()
    assert "| full | 2.72 (1 win) |" in markdown and "| window | 0% (n=1x1) |" in markdown
    assert len(list((tmp / "docs" / "figures").glob("*.png"))) == 5  # one PPL plot + 4 heatmaps


TRIAL_TASKS = {  # 6 trials each: 2 depths x 3 trials, 2 tasks x 3 trials; niah and ruler on book.txt
    "passkey": ["--depths", "0", "1", "--lengths", "512"],
    "niah": ["--depths", "0", "1", "--lengths", "512", "--data", "book.txt"],
    "ruler": ["--tasks", "niah_single", "niah_multikey", "--lengths", "1K", "--data", "book.txt"],  # multikey: > 512 chars
}


@pytest.mark.parametrize("task", list(TRIAL_TASKS))
def test_stopped_trial_run_continues_from_its_journal(task, fake_stack, monkeypatch, capsys):
    """A run stopped after 2 of 6 trials (Ctrl-C, a session's end) runs only the other 4 when started again (its
    progress bar starting at 2), and writes what an uninterrupted run writes; other settings (a seed) never read
    that journal."""
    tmp, calls = fake_stack, []
    generate = FakeMethod.generate

    def counted(self, input_ids, max_new_tokens):
        calls.append(len(input_ids))
        if stop_after is not None and len(calls) > stop_after:
            raise KeyboardInterrupt
        if task != "passkey":  # the fake reads only the passkey format
            return torch.tensor(self.tokenizer.encode(f" {len(calls)}.")[:max_new_tokens])
        return generate(self, input_ids, max_new_tokens)

    def run(out, *extra):
        argv = [str(tmp / a) if a == "book.txt" else a for a in TRIAL_TASKS[task]]
        cli, args = _parse([task, "--methods", "full", "--base", "fake", "--trials", "3", "--output", str(tmp / out),
                            *argv, *extra])
        cli.run(args)

    monkeypatch.setattr(FakeMethod, "generate", counted)
    stop_after = 2
    with pytest.raises(KeyboardInterrupt):
        run("results")
    journals = list((tmp / "results").glob(f".{task}_full_*.partial.jsonl"))
    assert len(journals) == 1 and len(journals[0].read_text().splitlines()) == 2
    stopped = [json.loads(line) for line in journals[0].read_text().splitlines()]
    assert {r["ran_on"] for r in stopped} == {provenance.cpu_name()}  # each trial journaled names its machine
    # as if a lent GPU had run them: the result finished here must say so
    journals[0].write_text("".join(json.dumps({**r, "ran_on": "NVIDIA H200"}) + "\n" for r in stopped))
    assert not list((tmp / "results").glob("*.json"))

    stop_after, calls[:] = None, []
    run("results", "--seed", "1")  # other trials: starts afresh, beside the seed-0 journal
    assert len(calls) == 6
    # the seed-1 run said it left the seed-0 journal alone (never silently)
    assert f"not continuing {journals[0]}: a stopped run with other settings" in capsys.readouterr().out
    calls[:] = [0] * 2  # the answers of a clean run count from 3 here, as in the stopped one
    run("results")
    assert len(calls) == 2 + 4  # the 2 journaled trials are not run again
    bar = capsys.readouterr().err
    assert "2/6" in bar and "0/6" not in bar and "6/6" in bar
    assert not list((tmp / "results").glob(f".{task}_*"))  # journals removed once their result is written
    calls[:] = []
    run("clean")
    resumed = next(r for r in map(json.loads, map(lambda f: f.read_text(), (tmp / "results").glob("*.json")))
                   if r["seed"] == 0)
    clean = json.loads(next((tmp / "clean").glob("*.json")).read_text())
    assert resumed["scores"] == clean["scores"] and resumed["counts"]["trials_from_a_stopped_run"] == 2
    assert clean["counts"]["trials_from_a_stopped_run"] == 0
    assert resumed["counts"]["trials_by_machine"] == {"NVIDIA H200": 2, provenance.cpu_name(): 4}
    assert clean["counts"]["trials_by_machine"] == {provenance.cpu_name(): 6}
    resumed["_file"] = "r.json"
    assert f"trials by machine: NVIDIA H200 2, {provenance.cpu_name()} 4" in report._cost(resumed)
    if task == "passkey":  # its records do not depend on the fake's call count
        untagged = lambda records: [{k: v for k, v in r.items() if k != "ran_on"} for r in records]  # noqa: E731
        assert untagged(resumed["details"]["records"]) == untagged(clean["details"]["records"])


@pytest.mark.parametrize("task", list(TRIAL_TASKS))
def test_trials_run_inside_the_methods_encoding_reuse(task, fake_stack, monkeypatch):
    """Every passkey, niah and ruler trial is generated inside `Method.reusing_encodings` (consecutive trials share
    the filler or the haystack before their needles, and SharedLLM then encodes those chunks once)."""
    tmp, open_contexts, generated = fake_stack, [], []

    @contextlib.contextmanager
    def reusing(self):
        open_contexts.append(self)
        try:
            yield
        finally:
            open_contexts.remove(self)

    def generate(self, input_ids, max_new_tokens):
        generated.append(self in open_contexts)
        return torch.tensor(self.tokenizer.encode(" 1.")[:max_new_tokens])

    monkeypatch.setattr(FakeMethod, "reusing_encodings", reusing)
    monkeypatch.setattr(FakeMethod, "generate", generate)
    argv = [str(tmp / a) if a == "book.txt" else a for a in TRIAL_TASKS[task]]
    cli, args = _parse([task, "--methods", "full", "--base", "fake", "--trials", "2", "--output", str(tmp / "out"),
                        *argv])
    cli.run(args)
    assert generated and all(generated) and not open_contexts


def test_stopped_ppl_run_continues_from_its_journal(fake_stack, monkeypatch, capsys):
    """A perplexity run stopped after 2 of its 6 windows (3 per length) scores only the other 4 when started again
    and writes the windows an uninterrupted run writes; the same command on an edited --data file starts afresh."""
    tmp, calls = fake_stack, []

    def counted(self, input_ids, score_start):  # an NLL of the window's own tokens: a window reused for another shows
        calls.append(len(input_ids))
        if stop_after is not None and len(calls) > stop_after:
            raise KeyboardInterrupt
        return input_ids[score_start:].double() % 7

    def run(out):
        cli, args = _parse(["ppl", "--methods", "full", "--base", "fake", "--lengths", "512", "1K", "--max-windows",
                            "3", "--data", str(tmp / "book.txt"), "--output", str(tmp / out)])
        cli.run(args)

    monkeypatch.setattr(FakeMethod, "token_nll", counted)
    stop_after = 2
    with pytest.raises(KeyboardInterrupt):
        run("results")
    (journal,) = (tmp / "results").glob(".ppl_full_*.partial.jsonl")
    assert len(journal.read_text().splitlines()) == 2
    stop_after, calls[:] = None, []
    run("results")
    shown = capsys.readouterr()
    assert len(calls) == 4 and "2/3" in shown.err  # the 512 bar starts at its 2 journaled windows
    assert "full: 2 ppl windows already done in" in shown.out
    assert not list((tmp / "results").glob(".ppl_*"))  # removed once the result is written
    run("clean")
    resumed, clean = (json.loads(next((tmp / out).glob("ppl_*.json")).read_text()) for out in ("results", "clean"))
    untagged = lambda windows: [{k: v for k, v in w.items() if k != "ran_on"} for w in windows]  # noqa: E731
    for length in ("512", "1024"):
        assert untagged(resumed["details"][length]["windows"]) == untagged(clean["details"][length]["windows"])
    assert resumed["scores"] == clean["scores"] and len({w["mean_nll"] for w in clean["details"]["512"]["windows"]}) > 1
    assert [resumed["counts"][n]["trials_from_a_stopped_run"] for n in ("512", "1024")] == [2, 0]

    stop_after, calls[:] = 1, []
    with pytest.raises(KeyboardInterrupt):
        run("edited")
    (tmp / "book.txt").write_text(PROSE.upper())
    stop_after, calls[:] = None, []
    run("edited")
    assert len(calls) == 6 and "not continuing" in capsys.readouterr().out  # its old windows read other text


@pytest.mark.parametrize("task", ["ppl", "demo"])
def test_a_ppl_journal_of_other_adapter_weights_is_refused_before_loading(task, fake_stack, monkeypatch):
    """As the trial tasks' are: the checks name the journal as `ppl_results` does (its protocol and documents)."""
    import sharedllm.loading

    from sharedllm.assets import DEFAULT_ADAPTER
    from sharedllm.evaluation import session
    from sharedllm.evaluation.journal import TrialJournal

    monkeypatch.setattr(sharedllm.loading, "load_causal_lm", lambda *a, **k: pytest.fail("the model was loaded"))
    cli, args = _parse([task, "--methods", "sharedllm", "--base", "fake", "--adapter", str(DEFAULT_ADAPTER),
                        "--lengths", "1K", "--data", str(fake_stack / "book.txt"), "--output",
                        str(fake_stack / "results")])
    shared = session.shared_settings(args, str(DEFAULT_ADAPTER), session.read_adapter_config(str(DEFAULT_ADAPTER)))
    defaulted = argparse.Namespace(**{**vars(args), "seed": 0})  # as `run` fills it in (every task's default)
    keys = session.journal_keys(defaulted, session.method_config_before_loading("sharedllm", args, shared), "fake",
                                **session.ppl_journal_settings("cepe", session.raw_documents(args)[0]))
    stale = TrialJournal(args.output, "ppl", "sharedllm", keys, weights="0123456789abcdef")
    stale.append({"doc": "book", "start": 0, "end": 1024, "score_start": 768, "mean_nll": 2.0, "scored_tokens": 256})
    with pytest.raises(InputError, match=f"{stale.path} holds 1 trials of other adapter weights"):
        cli.run(args)


def test_eval_help_names_the_tasks_that_continue_a_stopped_run():
    from sharedllm.cli import build_parser
    from sharedllm.evaluation.checks import JOURNAL_TASKS
    from sharedllm.evaluation.cli import TASKS

    help_text = " ".join(build_parser("eval")._subparsers._group_actions[0].choices["eval"].format_help().split())
    assert "every task but longbench journals each window or trial" in help_text
    assert set(TASKS) - set(JOURNAL_TASKS) == {"longbench"}


def test_eval_ppl_sliding_and_report_picks_latest(fake_stack):
    tmp = fake_stack
    cli, args = _parse(["ppl", "--methods", "full", "--base", "fake", "--protocol", "sliding", "--lengths", "512",
                        "1K", "--max-windows", "1000", "--data", str(tmp / "book.txt"), "--output", str(tmp / "results")])
    cli.run(args)
    (result_file,) = (tmp / "results").glob("*.json")
    result = json.loads(result_file.read_text())
    n_tokens = len(PROSE)  # one token per character; this tokenizer adds no BOS, so none is prepended
    assert result["counts"]["512"]["scored_tokens"] == n_tokens - 1 == result["counts"]["1024"]["scored_tokens"]
    older = dict(result, created="2000-01-01T00:00:00", scores={"512": 99.0, "1024": 99.0})
    (tmp / "results" / "old.json").write_text(json.dumps(older))
    markdown = report.regenerate(tmp / "results", tmp / "docs").read_text()
    assert "sliding-window protocol" in markdown and "99.00" not in markdown and "2.72" in markdown


def test_trial_journal_is_keyed_by_the_adapter_inside_the_repository_not_its_absolute_path(tmp_path):
    """A run stopped in one clone of the repository continues in another: the journal's key names the adapter as
    results do (adapters/...), not by this clone's absolute path; another adapter keys another journal."""
    from types import SimpleNamespace

    from sharedllm.evaluation.session import REPO, Session

    class Described:
        name = "sharedllm"
        reads_adapter = False

        def __init__(self, adapter):
            self.adapter = adapter

        def describe(self):
            return {"method": self.name, "adapter": self.adapter, "tree_depth": 3}

    session = SimpleNamespace(args=SimpleNamespace(output=str(tmp_path), base="base", dtype="fp32", seed=0), model_name="base",
                              base=SimpleNamespace(device="cpu"))
    journal = lambda adapter: Session.journal(session, "ruler", "sharedllm", Described(adapter))[0].path  # noqa: E731
    relative = "adapters/smollm2-135m-joint-exercises"
    assert journal(str(REPO / relative)) == journal(relative)
    assert journal(str(REPO / relative)) != journal("adapters/smollm2-135m")


def test_a_finished_run_keeps_the_trials_of_another_run_sharing_its_journal(tmp_path):
    """Runs of the same settings at other lengths share one journal (its name leaves the lengths out); one finishing
    at 16K while another is at 32K removes its own trials only, and the file goes with the last of them."""
    from sharedllm.evaluation.journal import TrialJournal

    journal = TrialJournal(tmp_path, "passkey", "sharedllm", {"method": {"method": "sharedllm"}})
    short = [{"length": 16384, "trial": t, "correct": True} for t in range(3)]
    long = [{"length": 32768, "trial": t, "correct": t == 0} for t in range(2)]
    for record in (short[0], long[0], short[1], short[2], long[1]):  # the two runs append in turn
        journal.append(record)
    journal.remove(short)
    assert journal.load() == long
    journal.remove(long)
    assert not journal.path.exists()


def test_a_finished_runs_records_are_found_by_value_nan_included(tmp_path):
    """`remove` finds a finished run's records by their JSON, not by comparing dicts: a window whose NLL overflowed
    to NaN (NaN != NaN) and a record holding a tuple (a list once read back) still leave the journal with their run."""
    from sharedllm.evaluation.journal import TrialJournal, provenance_counts

    journal = TrialJournal(tmp_path, "ppl", "sharedllm", {"method": {"method": "sharedllm"}})
    records = [{"doc": "a", "start": 0, "nll": float("nan")}, {"doc": "b", "span": (0, 8), "nll": 1.5}]
    for record in records:
        journal.append(record)
    assert provenance_counts(records, journal.load())["trials_from_a_stopped_run"] == 2
    journal.remove(records)
    assert not journal.path.exists()


def test_a_journal_of_other_adapter_weights_is_refused_not_reused(tmp_path):
    """An adapter retrained into the same folder keeps its path, so its journal's name: the trials of the stopped run
    carry the weights they were scored with, and another adapter's are refused."""
    from sharedllm.cli import InputError
    from sharedllm.evaluation.journal import TrialJournal

    settings = {"method": {"method": "sharedllm", "adapter": "adapters/mine"}}
    TrialJournal(tmp_path, "passkey", "sharedllm", settings, weights="aaaa").append({"trial": 0, "correct": True})
    assert TrialJournal(tmp_path, "passkey", "sharedllm", settings, weights="aaaa").load()[0]["weights"] == "aaaa"
    with pytest.raises(InputError, match="holds 1 trials of other adapter weights .* delete the journal"):
        TrialJournal(tmp_path, "passkey", "sharedllm", settings, weights="bbbb").load()
    untagged = TrialJournal(tmp_path, "passkey", "other", settings, weights="bbbb")  # a journal from before the tags
    untagged.path.write_text('{"trial": 0, "correct": true}\n')
    assert untagged.load() == [{"trial": 0, "correct": True}]


def test_a_session_tags_the_trials_of_an_adapter_reading_method_with_its_weights(tmp_path):
    from types import SimpleNamespace

    from sharedllm.evaluation.session import Session

    session = SimpleNamespace(args=SimpleNamespace(output=str(tmp_path), dtype="fp32", seed=0), model_name="base",
                              base=SimpleNamespace(device="cpu"), adapter_config={"adapter_sha256": "0123456789abcdef99"})
    reader = SimpleNamespace(name="sharedllm", reads_adapter=True, describe=lambda: {"method": "sharedllm"})
    other = SimpleNamespace(name="window", reads_adapter=False, describe=lambda: {"method": "window"})
    assert Session.journal(session, "passkey", "sharedllm", reader)[0].weights == "0123456789abcdef"
    assert Session.journal(session, "passkey", "window", other)[0].weights is None


def test_the_weights_tag_tells_apart_adapters_that_differ_only_in_their_lora():
    """Joint adapters all save the same empty module file: their LoRA's digest is what tells two of them apart."""
    from sharedllm.evaluation.session import weights_tag

    module = {"adapter_sha256": "0123456789abcdef99"}
    assert weights_tag(module) == "0123456789abcdef" and weights_tag({}) is None  # as before LoRA digests
    tags = {weights_tag({**module, "lora_sha256": lora}) for lora in ("aa", "bb")}
    assert len(tags) == 2 and "0123456789abcdef" not in tags and all(len(tag) == 16 for tag in tags)


def test_method_configs_known_before_loading_are_those_of_the_built_methods(tmp_path, monkeypatch):
    """The checks made before loading (heldout's cell files, the journals' names) read each method's config without
    its weights (`method_config_before_loading`): it must be what the built method describes, for every method."""
    from conftest import tiny_model

    from sharedllm import SharedLLMForCausalLM
    from sharedllm.cli import chosen_adapter
    from sharedllm.evaluation import session
    from sharedllm.methods import METHODS, load_method

    monkeypatch.setenv("SHAREDLLM_HOME", str(tmp_path / "home"))
    base = tiny_model("llama", max_position_embeddings=4096)  # infllm attends up to ~2K tokens
    base.save_pretrained(tmp_path / "base")
    SharedLLMForCausalLM.from_base(base, n_injected_layers=2, chunk_size=16, decoder_window=48, tree_depth=2,
                                   tokens_per_node=2).save_pretrained(tmp_path / "adapter")
    adapter = str(tmp_path / "adapter")
    for flags in [["--adapter", adapter], ["--adapter", adapter, "--decoder-window", "64", "--tree-depth", "1"],
                  ["--adapter", "none", "--chunk-size", "256", "--infllm", "topk=2"]]:
        _, args = _parse(["ppl", "--base", str(tmp_path / "base"), *flags])
        chosen = chosen_adapter(args.adapter)
        shared = session.shared_settings(args, chosen, session.read_adapter_config(chosen))
        for name in METHODS:
            built = load_method(name, base, None, shared=shared, **session.own_options(args, name))
            assert session.method_config_before_loading(name, args, shared) == session.method_config(built), name


@pytest.mark.parametrize("task", [*RULER_TASKS, "niah"])
def test_the_shortest_length_of_a_needle_prompt_is_where_its_prompt_search_starts_to_fail(task):
    """The length check made before any method runs (`checks._check_needle_lengths`) counts a sample built without
    haystack: its prompt search succeeds at exactly the lengths that count says it fits in."""
    from sharedllm.evaluation.needle import NIAH_ANSWER_TOKENS, niah_sample, shortest_length

    tokenizer = char_tokenizer()

    def sample(length, seed, **kwargs):  # as run_ruler and run_needle_grid build their trials
        if task == "niah":
            return niah_sample(tokenizer, length, seed, depth=0.5, max_new_tokens=NIAH_ANSWER_TOKENS, **kwargs)
        return make_sample(task, tokenizer, length, seed, **kwargs)

    for seed in ("0/3", "1/0"):
        around = shortest_length(tokenizer, sample(1000, seed, fill=False))
        fits, built = [], []
        for length in range(around - 12, around + 12):  # the needles' names and values change with the length
            fits.append(shortest_length(tokenizer, sample(length, seed, fill=False)) <= length)
            try:
                built.append(bool(sample(length, seed, haystack_text=PROSE).prompt))
            except ValueError as error:
                assert "even the empty prompt is longer" in str(error)
                built.append(False)
        assert built == fits and True in fits and False in fits
