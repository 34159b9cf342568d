"""The headline protocol: one fixed window plan per (domain, length) for every method, per-window results, the
bootstrap interval over windows, and "not run" windows that are recorded, never replaced."""

import math

import numpy as np
import pytest

from conftest import tiny_model
from sharedllm.evaluation import heldout
from sharedllm.methods import load_method

DOCS = {"a": 3000, "b": 900, "c": 5000}  # token counts


def test_plan_is_fixed_sorted_and_on_the_grid():
    plan = heldout.plan_windows(DOCS, 1024, n_windows=8, seed=0)
    assert plan == heldout.plan_windows(dict(DOCS), 1024, n_windows=8, seed=0)  # the same every call
    assert plan != heldout.plan_windows(DOCS, 1024, n_windows=8, seed=1)
    assert len(plan) == 8 and len({(w["doc"], w["start"]) for w in plan}) == 8
    assert all(w["doc"] != "b" for w in plan)  # 900 < 1024 tokens: no window
    assert all(w["start"] % 256 == 0 and w["start"] + 1024 <= DOCS[w["doc"]] for w in plan)
    order = {"a": 0, "c": 2}
    assert plan == sorted(plan, key=lambda w: (order[w["doc"]], w["start"]))


def test_plan_takes_every_window_when_the_budget_exceeds_them_and_grows_by_extension():
    available = heldout.count_windows(DOCS, 2048)
    assert available == len(range(0, 3000 - 2048 + 1, 256)) + len(range(0, 5000 - 2048 + 1, 256))
    assert len(heldout.plan_windows(DOCS, 2048, n_windows=100)) == available
    small, large = heldout.plan_windows(DOCS, 1024, 4), heldout.plan_windows(DOCS, 1024, 12)
    assert all(w in large for w in small)  # a bigger budget keeps the smaller plan's windows


def test_targets_of_a_longer_plan_keep_the_scored_tokens_and_cut_the_context():
    plan = heldout.plan_windows(DOCS, 2048, n_windows=6)
    cut = heldout.targets_of(plan, 2048, 512)
    # the same last 256 tokens of each window, 1536 fewer before them
    assert [(w["doc"], w["start"] + 512) for w in cut] == [(w["doc"], w["start"] + 2048) for w in plan]
    assert heldout.targets_of(plan, 2048, 2048) == plan
    assert heldout.cell_filename("sharedllm", "books", 512, 2048) == "heldout_books_512_sharedllm_targets2048.json"
    assert heldout.cell_filename("sharedllm", "books", 2048, 2048) == "heldout_books_2048_sharedllm.json"
    with pytest.raises(ValueError, match="cannot be cut"):
        heldout.targets_of(plan, 2048, 4096)


def test_cell_settings_compare_what_the_numbers_depend_on():
    """A cell file written before models were named portably, or before a knob existed (read at its default),
    still matches the same settings; another knob value, seed or split does not."""
    old = {"model": "/root/.cache/sharedllm/models/SmolLM2-135M-Instruct", "adapter": "adapters/a",
           "method_config": {"method": "sharedllm", "adapter": "adapters/a", "tree_depth": 3},
           "data": {"split": "test"}, "hardware": {"dtype": "float32"},
           "plan": {"seed": 0, "budget": 16, "windows_id": "86a615626a52"}}
    now = {"split": "test", "model": "$SHAREDLLM_HOME/models/SmolLM2-135M-Instruct", "adapter": "adapters/a",
           "method_config": {"method": "sharedllm", "adapter": "adapters/a", "tree_depth": 3, "leaf_lookback": 0},
           "dtype": "float32", "seed": 0, "max_windows": 16, "targets_of": None, "windows_id": "86a615626a52"}
    recorded = heldout.cell_settings(old)
    assert heldout.settings_differences(recorded, now) == {}
    other = {**now, "method_config": {**now["method_config"], "tree_depth": 2}, "seed": 1, "model": "other/base"}
    assert heldout.settings_differences(recorded, other) == {
        "tree_depth": (3, 2), "seed": (0, 1), "model": ("/root/.cache/sharedllm/models/SmolLM2-135M-Instruct", "other/base")}
    assert heldout.settings_differences(recorded, {"split": "validation"}) == {"split": ("test", "validation")}
    # a knob the old file predates, set now to another value than its default: another setting (the union's 128K
    # cells, recorded before query_layer, were kept as the default's, whose query_layer is 17)
    later = {**now, "method_config": {**now["method_config"], "query_layer": 17}}
    assert heldout.settings_differences(recorded, later) == {"query_layer": (None, 17)}
    # a knob removed since, set in the file: not what the current code runs (`report.setting_differences`)
    removed = heldout.cell_settings({**old, "method_config": {**old["method_config"], "selection_head": 6}})
    assert heldout.settings_differences(removed, now) == {"selection_head": (6, None)}


def test_every_method_is_scored_on_the_same_windows():
    base = tiny_model("llama")
    rng = np.random.default_rng(0)
    docs = {"a": rng.integers(3, 128, 700), "b": rng.integers(3, 128, 500)}
    plan = heldout.plan_windows({k: len(v) for k, v in docs.items()}, 384, n_windows=5)
    methods = [load_method("full", base), load_method("window", base, decoder_window=300),
               load_method("streaming", base, window=300, block_size=64),
               load_method("infllm", base, local_window=64, n_sink=8, block_size=32, n_rep=4, topk=2, chunk_size=64)]
    records = {m.name: heldout.score_windows(m, docs, plan, 384, progress=False) for m in methods}
    windows = {name: [(r["doc"], r["start"]) for r in rs] for name, rs in records.items()}
    assert all(w == [(p["doc"], p["start"]) for p in plan] for w in windows.values())
    assert all(r["scored_tokens"] == 256 for rs in records.values() for r in rs)
    # the per-window numbers are the method's own: full attention's window NLL equals its token_nll mean
    first = plan[0]
    ids = __import__("torch").from_numpy(docs[first["doc"]][first["start"] : first["start"] + 384].astype(np.int64))
    assert records["full"][0]["mean_nll"] == pytest.approx(methods[0].token_nll(ids, 128).double().mean().item(), abs=1e-6)
    assert records["full"][0]["mean_nll"] != pytest.approx(records["window"][0]["mean_nll"], abs=1e-4)


def test_windows_not_run_are_recorded_with_their_reason():
    class Failing:
        name = "failing"

        def token_nll(self, ids, score_start):
            raise RuntimeError("out of memory\nmore detail")

    docs = {"a": np.arange(3, 1503) % 100}
    plan = heldout.plan_windows({"a": 1500}, 512, 3)
    records = heldout.score_windows(Failing(), docs, plan, 512, progress=False)
    assert [r["not_run"] for r in records] == ["RuntimeError: out of memory"] * 3
    limited = heldout.score_windows(Failing(), docs, plan, 512, not_run="past --max-length 256", progress=False)
    assert [(r["doc"], r["start"]) for r in limited] == [(w["doc"], w["start"]) for w in plan]
    summary = heldout.summarise(limited)
    assert summary["ppl"] is None and not summary["complete"] and summary["not_run"] == "past --max-length 256"
    partial = heldout.summarise([{"doc": "a", "start": 0, "mean_nll": 1.0, "scored_tokens": 256},
                                 {"doc": "a", "start": 256, "not_run": "time budget"}])
    assert not partial["complete"] and partial["n_windows"] == 1 and partial["n_planned"] == 2


def test_a_resumed_cell_reuses_its_scored_windows_and_its_bar_starts_there(capsys):
    class Counting:
        name = "counting"
        calls = 0

        def token_nll(self, ids, score_start):
            Counting.calls += 1
            return np.zeros(len(ids) - score_start)

    docs = {"a": np.arange(3, 1503) % 100}
    plan = heldout.plan_windows({"a": 1500}, 512, 3)
    done = [{**plan[0], "mean_nll": 7.0, "scored_tokens": 256}, {**plan[1], "mean_nll": 8.0, "scored_tokens": 256}]
    scored = []
    records = heldout.score_windows(Counting(), docs, plan, 512, done=done, on_record=scored.append)
    assert Counting.calls == 1 and scored == records[2:]  # only the window left is scored and journaled
    assert [r["mean_nll"] for r in records] == [7.0, 8.0, 0.0]
    bar = capsys.readouterr().err
    assert "2/3" in bar and "0/3" not in bar and "3/3" in bar


def test_bootstrap_of_constant_windows_has_zero_width():
    low, high = heldout.bootstrap_interval([2.0] * 16)
    assert low == pytest.approx(math.exp(2.0)) and high == pytest.approx(math.exp(2.0))


def test_bootstrap_of_two_values_spans_both():
    # resampled means of {0, 1} are 0, 0.5 or 1 with probability 1/4, 1/2, 1/4: the 2.5% / 97.5% quantiles are 0 and 1
    low, high = heldout.bootstrap_interval([0.0, 1.0])
    assert (low, high) == (pytest.approx(1.0), pytest.approx(math.e))


def test_bootstrap_matches_the_normal_interval_for_many_windows():
    values = np.array([1.0, 3.0] * 50)  # mean 2, sd 1: 95% of the mean within 1.96 / sqrt(100)
    low, high = heldout.bootstrap_interval(values, seed=3)
    assert math.log(low) == pytest.approx(2 - 0.196, abs=0.03) and math.log(high) == pytest.approx(2 + 0.196, abs=0.03)
    assert heldout.bootstrap_interval(values, seed=3) == (low, high)  # fixed seed: reproducible


def test_summary_counts_tokens_and_takes_ppl_over_window_means():
    records = [{"doc": "a", "start": 256 * i, "mean_nll": v, "scored_tokens": 256} for i, v in enumerate([1.0, 2.0, 3.0])]
    summary = heldout.summarise(records)
    assert summary["complete"] and summary["scored_tokens"] == 768 and summary["n_windows"] == 3
    assert summary["ppl"] == pytest.approx(math.exp(2.0))
    assert summary["ci_low"] <= summary["ppl"] <= summary["ci_high"]


def test_paired_ratio_cancels_window_difficulty():
    hard_and_easy = np.array([1.0, 5.0] * 8)  # very different windows
    ratio, low, high = heldout.paired_ratio(hard_and_easy + 0.1, hard_and_easy)  # always 0.1 nats worse
    assert ratio == pytest.approx(math.exp(0.1)) and low == pytest.approx(math.exp(0.1)) and high == pytest.approx(math.exp(0.1))
    unpaired = heldout.bootstrap_interval(hard_and_easy)
    assert unpaired[1] / unpaired[0] > 2  # each method's own interval is wide


def test_windows_are_scored_in_the_given_order_and_recorded_in_the_plans():
    class Recording:
        name = "recording"
        seen = []

        def token_nll(self, ids, score_start):
            Recording.seen.append(int(ids[0]))
            return np.full(len(ids) - score_start, float(ids[0]))

    docs = {"a": np.arange(3, 1503) % 1000}
    plan = heldout.plan_windows({"a": 1500}, 512, 3)
    records = heldout.score_windows(Recording(), docs, plan, 512, progress=False, order=[2, 0, 1])
    firsts = [int(docs["a"][w["start"]]) for w in plan]
    assert Recording.seen == [firsts[2], firsts[0], firsts[1]]
    assert [(r["doc"], r["start"], r["mean_nll"]) for r in records] == [("a", w["start"], f) for w, f in zip(plan, firsts)]
