"""`sharedllm compare`: paired ratios of held-out cells and of `eval ppl` runs on the windows both scored, per-trial
wins of retrieval runs on the same prompts, and refusals (another length or protocol, no shared window or trial,
another prompt at one position, another base model or other data, a run without per-window NLLs)."""

import json
import math

import pytest

import torch

from sharedllm.cli import main
from sharedllm.evaluation.compare import cell_key, paired_heldout, paired_trials, sign_test
from sharedllm.evaluation.ppl import perplexity


def _heldout(tmp_path, name, nlls, length=4096, domain="books", targets_of=None, docs=None):
    shift = (targets_of or length) - length  # a cell cut from a longer plan: the same ends, later starts
    windows = [{"doc": (docs or "d" * len(nlls))[i], "start": 256 * i + shift, "mean_nll": nll, "scored_tokens": 256}
               for i, nll in enumerate(nlls)]
    plan = {"targets_of": targets_of} if targets_of else {}
    result = {"task": "heldout", "method": name, "adapter": None, "domain": domain, "length": length,
              "plan": plan, "windows": windows}
    path = tmp_path / f"{name}.json"
    path.write_text(json.dumps(result))
    return str(path)


def _passkey(tmp_path, name, correct, keys=None):
    records = [{"length": 8192, "depth": 0.5, "trial": i, "key": (keys or range(100, 200))[i], "correct": c}
               for i, c in enumerate(correct)]
    path = tmp_path / f"{name}.json"
    path.write_text(json.dumps({"task": "passkey", "method": name, "adapter": None, "details": {"records": records}}))
    return str(path)


HOME_MODEL = "$SHAREDLLM_HOME/models/SmolLM2-135M-Instruct"


def _ruler(tmp_path, name, scores, model=HOME_MODEL, tokenizer=None, **data):
    """A RULER file: its needle values depend on task, seed, length and trial only, whatever the haystack."""
    records = [{"length": 16384, "task": "niah_single", "trial": i, "golds": [str(1000 + i)], "score": score}
               for i, score in enumerate(scores)]
    result = {"task": "ruler", "method": name, "adapter": None, "model": model,
              "data": {"split": "test", "domains": ["books"]} | data, "details": {"records": records}}
    if tokenizer:
        result["tokenizer"] = tokenizer
    path = tmp_path / f"{name}.json"
    path.write_text(json.dumps(result))
    return str(path)


def _compare(capsys, a, b):
    with pytest.raises(SystemExit) as exit_:
        main(["compare", a, b])
    out = capsys.readouterr()
    return exit_.value.code, out.out + out.err


def test_heldout_ratio_is_over_the_windows_both_scored(tmp_path, capsys):
    a = _heldout(tmp_path, "a", [2.0, 3.0, 4.0, 9.0])
    b_path = _heldout(tmp_path, "b", [2.5, 3.5, 4.5])  # window 3 scored by A only: left out
    code, text = _compare(capsys, a, b_path)
    assert code == 0
    assert f"= {math.exp(-0.5):.3f} [{math.exp(-0.5):.3f}, {math.exp(-0.5):.3f}]" in text  # every pair differs by 0.5
    assert "3 windows scored by both (768 tokens)" in text and "A 1, B 0" in text
    assert "A is better (separated from 1)" in text and "not separated" not in text


def test_heldout_ratio_per_document_when_the_windows_span_several(tmp_path, capsys):
    a = _heldout(tmp_path, "a", [2.0, 3.0, 4.0, 5.0, 6.0], docs="xxyyy")
    b = _heldout(tmp_path, "b", [2.1, 3.1, 4.0, 5.0, 6.0], docs="xxyyy")  # A better by 0.1 nats on x, level on y
    code, text = _compare(capsys, a, b)
    assert code == 0
    assert f"  x: {math.exp(-0.1):.3f} [{math.exp(-0.1):.3f}, {math.exp(-0.1):.3f}] (2 windows)" in text
    assert "  y: 1.000 [1.000, 1.000] (3 windows)" in text
    code, text = _compare(capsys, _heldout(tmp_path, "c", [2.0, 3.0]), _heldout(tmp_path, "d", [2.1, 3.0]))
    assert "per document" not in text  # one document: the overall line says it all


@pytest.mark.parametrize("other, message", [(dict(length=8192), "another length"),
                                            (dict(nlls=[]), "share no scored window")])
def test_heldout_refuses_cells_that_do_not_pair(tmp_path, capsys, other, message):
    a = _heldout(tmp_path, "a", [2.0, 3.0])
    b = _heldout(tmp_path, "b", other.pop("nlls", [2.0, 3.0]), **other)
    code, text = _compare(capsys, a, b)
    assert code == 2 and message in text


def test_heldout_pairs_two_context_lengths_on_one_plans_targets(tmp_path, capsys):
    short = _heldout(tmp_path, "short", [3.0, 4.0], length=1024, targets_of=4096)
    long = _heldout(tmp_path, "long", [2.0, 3.0])  # the 4096 plan itself
    code, text = _compare(capsys, short, long)
    assert code == 0 and "A 1K / B 4K of context on the targets of the 4K plan: 2 windows" in text
    assert f"= {math.e:.3f}" in text and "B is better (separated from 1)" in text
    # a difference below the printed precision is level, not "separated"
    code, text = _compare(capsys, _heldout(tmp_path, "near", [2.0 + 1e-6, 3.0 + 1e-6]), long)
    assert "= 1.000 [1.000, 1.000]" in text and "level (not separated from 1)" in text
    # a 1K cell of its own plan scores other tokens: refused, not paired by chance
    code, text = _compare(capsys, _heldout(tmp_path, "own", [3.0, 4.0], length=1024), long)
    assert code == 2 and "another length" in text and "--targets-of" in text


class PerDocumentNLL:
    """token_nll: one constant per document, told apart by the token ids (document i holds ids 10_000 * i + ...)."""

    def __init__(self, *nlls):
        self.nlls = nlls

    def token_nll(self, input_ids, score_start):
        return torch.full((len(input_ids) - score_start,), self.nlls[int(input_ids[0]) // 10_000])


def _ppl(tmp_path, name, method, protocol="sliding", length=1024, drop_windows=False):
    """An `eval ppl` result file as the session writes it, from `perplexity` itself (two user documents)."""
    docs = [[10_000 * i + t for t in range(n)] for i, n in enumerate((3000, 1300))]
    detail = perplexity(method, docs, protocol, length, doc_ids=["x.txt", "y.txt"], progress=False)
    if drop_windows:  # a run from before windows were recorded
        del detail["windows"]
    result = {"task": "ppl", "protocol": protocol, "method": name, "adapter": None, "model": HOME_MODEL,
              "data": {"source": "x.txt,y.txt", "split": "user", "domains": ["all"]}, "details": {str(length): detail}}
    path = tmp_path / f"{name}.json"
    path.write_text(json.dumps(result))
    return str(path), detail


def test_ppl_runs_pair_window_by_window_token_weighted_under_the_sliding_protocol(tmp_path, capsys):
    a, detail = _ppl(tmp_path, "a", PerDocumentNLL(1.0, 2.0))
    b, _ = _ppl(tmp_path, "b", PerDocumentNLL(1.5, 1.5))
    code, text = _compare(capsys, a, b)
    assert code == 0
    tokens = {doc: sum(w["scored_tokens"] for w in detail["windows"] if w["doc"] == doc) for doc in ("x.txt", "y.txt")}
    weighted = (tokens["x.txt"] * -0.5 + tokens["y.txt"] * 0.5) / sum(tokens.values())  # = log PPL(A) - log PPL(B)
    per_window = [(-0.5 if w["doc"] == "x.txt" else 0.5) for w in detail["windows"]]
    assert abs(weighted - sum(per_window) / len(per_window)) > 0.01  # the first window scores 1023 tokens, not 256
    assert f"PPL A / PPL B = {math.exp(weighted):.3f}" in text
    n_windows, n_tokens = len(detail["windows"]), sum(tokens.values())
    assert f"1K (sliding protocol): {n_windows} windows scored by both ({n_tokens} tokens)" in text
    assert f"  x.txt: {math.exp(-0.5):.3f} [{math.exp(-0.5):.3f}, {math.exp(-0.5):.3f}]" in text
    a, _ = _ppl(tmp_path, "a", PerDocumentNLL(1.0, 2.0), protocol="cepe", length=1024)
    b, _ = _ppl(tmp_path, "b", PerDocumentNLL(1.5, 1.5), protocol="cepe", length=1024)
    code, text = _compare(capsys, a, b)  # the CEPE protocol's PPL is over windows: 8 of x, 2 of y
    assert code == 0 and f"PPL A / PPL B = {math.exp((8 * -0.5 + 2 * 0.5) / 10):.3f}" in text


def test_ppl_runs_are_refused_across_protocols_and_without_window_records(tmp_path, capsys):
    a, _ = _ppl(tmp_path, "a", PerDocumentNLL(1.0, 2.0))
    code, text = _compare(capsys, a, _ppl(tmp_path, "b", PerDocumentNLL(1.0, 2.0), protocol="cepe")[0])
    assert code == 2 and "another protocol: sliding vs cepe" in text
    code, text = _compare(capsys, a, _ppl(tmp_path, "old", PerDocumentNLL(1.0, 2.0), drop_windows=True)[0])
    assert code == 2 and "records no per-window NLL" in text
    code, text = _compare(capsys, a, _ppl(tmp_path, "c", PerDocumentNLL(1.0, 2.0), length=2048)[0])
    assert code == 2 and "share no length" in text


def test_retrieval_counts_wins_and_losses_on_the_same_prompts(tmp_path, capsys):
    a = _passkey(tmp_path, "a", [True, True, True, False, True])
    b = _passkey(tmp_path, "b", [False, True, False, False, False])
    code, text = _compare(capsys, a, b)
    assert code == 0
    assert "8K: A 4/5, B 1/5; A won 3, lost 0; p = 0.25" in text


def test_paired_cells_hand_back_the_numbers_their_lines_print(tmp_path):
    """What a script judges (scripts/grid_summary.py) is the numbers, not the printed text."""
    read = lambda path: json.loads(open(path).read())  # noqa: E731
    paired = paired_heldout(read(_heldout(tmp_path, "a", [2.0, 3.0])), read(_heldout(tmp_path, "b", [1.5, 2.5])))
    assert paired.ratio == pytest.approx(math.exp(0.5)) and paired.ppl_b == pytest.approx(math.exp(2.0))
    assert paired.better() == "B" and paired.ratio_line() in paired.lines()
    level = paired_heldout(read(_heldout(tmp_path, "c", [2.0, 3.0])), read(_heldout(tmp_path, "d", [2.1, 2.9])))
    assert level.better() is None  # the windows disagree: the interval spans 1
    (trials,) = paired_trials(read(_passkey(tmp_path, "e", [True, True, False])),
                              read(_passkey(tmp_path, "f", [False, True, True])))
    assert (trials.score_a, trials.score_b, trials.trials, trials.wins, trials.losses) == (2, 2, 3, 1, 1)


def test_retrieval_refuses_other_prompts_and_other_tasks(tmp_path, capsys):
    a = _passkey(tmp_path, "a", [True, False])
    b = _passkey(tmp_path, "b", [True, False], keys=[100, 555])  # another seed: trial 1 hides another key
    code, text = _compare(capsys, a, b)
    assert code == 2 and "not the same prompts" in text
    code, text = _compare(capsys, a, _heldout(tmp_path, "h", [2.0]))
    assert code == 2 and "is a passkey result" in text


@pytest.mark.parametrize("other, message", [
    (dict(split="validation"), "runs on other data: data split 'test' vs 'validation'"),
    (dict(domains=["math"]), "runs on other data: data domains ['books'] vs ['math']"),
    (dict(split="user", source="mine.txt"), "runs on other data: data source None vs 'mine.txt'"),
    (dict(model="/models/SmolLM2-360M-Instruct"),
     f"runs of another base model: {HOME_MODEL} vs /models/SmolLM2-360M-Instruct"),
])
def test_retrieval_refuses_runs_on_other_data_or_models_though_the_needles_match(tmp_path, capsys, other, message):
    a = _ruler(tmp_path, "a", [1.0, 0.0])
    code, text = _compare(capsys, a, _ruler(tmp_path, "b", [1.0, 1.0], **other))
    assert code == 2 and message in text


def test_two_bases_of_one_tokenizer_pair_and_other_tokenizers_do_not(tmp_path, capsys):
    a = _ruler(tmp_path, "a", [1.0, 0.0], tokenizer="5f1c0ffee0d15ea5")
    merged = _ruler(tmp_path, "b", [1.0, 1.0], model="runs/merged-lora", tokenizer="5f1c0ffee0d15ea5")
    code, text = _compare(capsys, a, merged)
    assert code == 0 and "bases: A SmolLM2-135M-Instruct, B merged-lora (one tokenizer)" in text
    code, text = _compare(capsys, a, _ruler(tmp_path, "c", [1.0, 1.0], tokenizer="0123456789abcdef"))
    assert code == 2 and "runs of another tokenizer (5f1c0ffee0d15ea5 vs 0123456789abcdef" in text
    code, text = _compare(capsys, a, _ruler(tmp_path, "d", [1.0, 1.0], model="runs/merged-lora"))
    assert code == 2 and "runs of another base model" in text  # a result from before tokenizers were recorded


def test_retrieval_pairs_one_model_named_from_two_homes(tmp_path, capsys):
    a = _ruler(tmp_path, "a", [1.0, 0.0], model="/root/.cache/sharedllm/models/SmolLM2-135M-Instruct")
    code, text = _compare(capsys, a, _ruler(tmp_path, "b", [1.0, 1.0]))
    assert code == 0 and "niah_single 16K: A 1/2, B 2/2; A won 0, lost 1" in text


def test_sign_test_matches_the_binomial_tails():
    assert sign_test(0, 0) == 1.0 and sign_test(5, 5) == 1.0
    assert sign_test(3, 0) == sign_test(0, 3) == 0.25
    assert sign_test(8, 2) == pytest.approx(2 * (1 + 10 + 45) / 1024)


def _cell(task="heldout", **changes):
    """A result as `sharedllm eval` writes it, reduced to what cell_key reads and what differs between readings."""
    if task == "heldout":
        result = {"task": "heldout", "method": "sharedllm", "adapter": "a", "domain": "books", "length": 8192,
                  "data": {"split": "test"}, "plan": {"windows_id": "w1"}, "windows": [{"mean_nll": 3.0}]}
    else:
        result = {"task": task, "method": "sharedllm", "adapter": "a", "lengths": [16384], "seed": 0,
                  "data": {"split": "test", "domains": ["books"]}, "counts": {"trials": 10},
                  "details": {"tasks": ["niah_single"], "records": [{"score": 1.0}]}}
    for field, value in changes.items():
        result[field] = value
    return result


def test_cell_key_pairs_two_readings_of_the_same_windows_or_prompts_and_nothing_else():
    other_reading = dict(method="exact-g512", adapter="b", windows=[{"mean_nll": 2.0}])
    assert cell_key(_cell(**other_reading)) == cell_key(_cell())
    for other_windows in (dict(domain="math"), dict(length=16384), dict(data={"split": "validation"}),
                          dict(plan={"windows_id": "w2"})):
        assert cell_key(_cell(**other_windows)) != cell_key(_cell())
    ruler = _cell("ruler")
    continued = _cell("ruler", counts={"trials": 10, "trials_from_a_stopped_run": 4}, method="other")
    assert cell_key(continued) == cell_key(ruler)
    for other_prompts in (dict(seed=1), dict(lengths=[32768]), dict(counts={"trials": 5}),
                          dict(details={"tasks": ["niah_multikey"], "records": []})):
        assert cell_key(_cell("ruler", **other_prompts)) != cell_key(ruler)
    assert cell_key(_cell("passkey")) != cell_key(ruler)
