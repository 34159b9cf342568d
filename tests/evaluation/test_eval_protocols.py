"""Perplexity and passkey protocols on fake methods whose NLLs / answers are known (no model)."""

import math
import re
from collections import Counter

import pytest
import torch

from sharedllm.evaluation.passkey import (FILLER, INSTRUCTION, QUESTION, build_passkey_prompt, encode,
                                          longest_fitting, passkey_correct, passkey_key, passkey_prompt,
                                          plot_heatmap, run_passkey, teacher_forced_trials)
from sharedllm.evaluation.ppl import cepe_windows, perplexity, plan_windows, sliding_windows

DOC_B_OFFSET = 1_000_000  # token ids of the second fake document start here


class RecordingMethod:
    """token_nll = 1.0 for ids < DOC_B_OFFSET, 2.0 otherwise; records every call.

    Documents are built with token id == position (+ offset), so the scored ids are the scored positions.
    """

    def __init__(self):
        self.calls = []

    def token_nll(self, input_ids, score_start):
        self.calls.append((input_ids.clone(), score_start))
        return torch.where(input_ids[score_start:] < DOC_B_OFFSET, 1.0, 2.0)


class WhitespaceTokenizer:
    """One token per whitespace-separated word; ids are assigned on first sight."""

    def __init__(self):
        self.vocab, self.words = {}, []

    def encode(self, text):
        return [self._id(w) for w in text.split()]

    def _id(self, word):
        if word not in self.vocab:
            self.vocab[word] = len(self.words)
            self.words.append(word)
        return self.vocab[word]

    def decode(self, ids, skip_special_tokens=True):
        return " ".join(self.words[i] for i in ids)


# ------------------------------------------------------------------------------------------------ windows


@pytest.mark.parametrize("n_tokens", [1, 2, 300, 512, 513, 1000, 1300, 4113])
def test_sliding_windows_score_each_token_exactly_once_with_most_context(n_tokens):
    window, stride = 512, 256
    scored = Counter()
    for start, end, score_start in sliding_windows(n_tokens, window, stride):
        assert 0 <= start < score_start <= end <= n_tokens and end - start <= window
        for t in range(score_start, end):
            scored[t] += 1
            # context = t - start; a token past the first window always sees >= window - stride tokens
            assert t - start >= min(t, window - stride)
    assert sorted(scored) == list(range(1, n_tokens)) and set(scored.values()) <= {1}


def test_cepe_windows_score_exactly_the_last_256_of_full_length_windows():
    windows = cepe_windows(5000, context_len=3 * 512, decoder_len=1024)
    assert len(windows) == (5000 - 2560) // 256 + 1
    for i, (start, end, score_start) in enumerate(windows):
        assert start == 256 * i and end - start == 2560 and end - score_start == 256 and end <= 5000
    assert cepe_windows(2559, 1536, 1024) == []  # documents shorter than T are skipped
    capped = cepe_windows(5000, 1536, 1024, max_windows=3)
    assert len(capped) == 3 and capped[0][0] == 0 and all(s % 256 == 0 for s, _, _ in capped)


def test_window_cap_spreads_over_documents():
    plans = plan_windows([10_000, 10_000, 10_000, 100], "cepe", 2048, decoder_len=1024, max_windows=7)
    assert [len(p) for p in plans] == [3, 2, 2, 0]


# ------------------------------------------------------------------------------------------------ perplexity


def _docs():
    doc_a = list(range(3000))  # NLL 1.0 per token
    doc_b = [DOC_B_OFFSET + i for i in range(2600)]  # NLL 2.0 per token
    short = [5] * 100
    return [doc_a, doc_b, short], ["a", "b", "a"]


def test_cepe_perplexity_is_exp_of_mean_window_loss_and_scores_last_256():
    docs, domains = _docs()
    method = RecordingMethod()
    result = perplexity(method, docs, "cepe", 2048, domains=domains, decoder_len=1024, progress=False)
    n_a, n_b = (3000 - 2048) // 256 + 1, (2600 - 2048) // 256 + 1  # 4 and 3 windows
    assert result["n_windows"] == n_a + n_b and result["n_docs"] == 2 and result["n_docs_skipped"] == 1
    assert result["scored_tokens"] == 256 * (n_a + n_b)
    assert result["ppl"] == pytest.approx(math.exp((n_a * 1.0 + n_b * 2.0) / (n_a + n_b)))
    assert result["per_domain"]["a"]["ppl"] == pytest.approx(math.e)
    assert result["per_domain"]["b"]["ppl"] == pytest.approx(math.e ** 2)
    for input_ids, score_start in method.calls:
        assert len(input_ids) == 2048 and score_start == 2048 - 256


def test_cepe_mean_is_over_windows_not_tokens():
    # windows of different NLL must weigh equally: one window of doc A (1.0) and one of doc B (2.0)
    docs = [list(range(2048)), [DOC_B_OFFSET + i for i in range(2048)]]
    result = perplexity(RecordingMethod(), docs, "cepe", 2048, progress=False)
    assert result["ppl"] == pytest.approx(math.exp(1.5))


def test_sliding_perplexity_is_exp_of_total_nll_over_tokens():
    docs, domains = _docs()
    method = RecordingMethod()
    result = perplexity(method, docs, "sliding", 1024, domains=domains, progress=False)
    scored = Counter()
    for input_ids, score_start in method.calls:
        scored.update(input_ids[score_start:].tolist())
    assert all(count == 1 for token, count in scored.items() if token != 5)
    tokens_a, tokens_b, tokens_short = 2999, 2599, 99
    assert result["scored_tokens"] == tokens_a + tokens_b + tokens_short
    expected = (tokens_a + tokens_short) * 1.0 + tokens_b * 2.0
    assert result["ppl"] == pytest.approx(math.exp(expected / result["scored_tokens"]))


def test_perplexity_records_every_window_so_that_two_runs_pair():
    docs, domains = _docs()
    result = perplexity(RecordingMethod(), docs, "sliding", 1024, domains=domains, doc_ids=["a.txt", "b.txt", "s.txt"],
                        progress=False)
    windows = result["windows"]
    assert len(windows) == result["n_windows"] and sum(w["scored_tokens"] for w in windows) == result["scored_tokens"]
    assert {w["doc"] for w in windows} == {"a.txt", "b.txt", "s.txt"}
    for w in windows:
        assert w["scored_tokens"] == w["end"] - w["score_start"] and w["start"] <= w["score_start"] < w["end"]
        in_b = w["doc"] == "b.txt"
        assert w["mean_nll"] == (2.0 if in_b else 1.0) and w["domain"] == ("b" if in_b else "a")
    first = perplexity(RecordingMethod(), docs, "cepe", 2048, progress=False)["windows"][0]
    assert first == {"doc": "0", "domain": "all", "start": 0, "score_start": 1792, "end": 2048, "mean_nll": 1.0,
                     "scored_tokens": 256}


def test_perplexity_rejects_a_method_returning_the_wrong_number_of_nlls():
    class Wrong:
        def token_nll(self, input_ids, score_start):
            return torch.ones(3)

    with pytest.raises(ValueError, match="token_nll returned 3"):
        perplexity(Wrong(), [list(range(600))], "cepe", 512, progress=False)


# ------------------------------------------------------------------------------------------------ passkey


def test_passkey_scoring_parses_the_first_integer():
    assert passkey_correct("The pass key is 12345.", 12345)
    assert passkey_correct(" 12345. Remember it.", 12345)
    assert not passkey_correct("no number", 12345)
    assert not passkey_correct("1234 5", 12345)
    assert not passkey_correct("123456", 12345)


@pytest.mark.parametrize("length", [300, 1000, 4000])
@pytest.mark.parametrize("depth", [0.0, 0.5, 1.0])
def test_passkey_prompt_format_and_length(length, depth):
    tokenizer = WhitespaceTokenizer()
    prompt = build_passkey_prompt(tokenizer, length, depth, 4242)
    lines = prompt.split("\n")
    assert lines[0] == INSTRUCTION and lines[-1] == QUESTION and len(lines) == 5
    assert lines[2] == "The pass key is 4242. Remember it. 4242 is the pass key."
    assert length - 3 <= len(tokenizer.encode(prompt)) <= length
    prefix, suffix = len(lines[1]), len(lines[3])
    assert FILLER.startswith(lines[1][:50]) and FILLER.startswith(lines[3][:50])
    assert abs(prefix / (prefix + suffix) - depth) < 0.01


@pytest.mark.parametrize("target", [50, 300, 4000, 30000])
def test_longest_fitting_finds_the_largest_fitting_n_in_few_tokenizer_calls(target):
    """Against a plain bisection over [0, 2^22] (exact for a monotone count: words grow by 0 or 1 per character)."""
    tokenizer, calls = WhitespaceTokenizer(), []

    def build(n):
        calls.append(n)
        return passkey_prompt(n, 0.5, 4242)

    fits = lambda n: len(tokenizer.encode(passkey_prompt(n, 0.5, 4242))) <= target  # noqa: E731
    lo, hi = 0, 2**22
    while hi - lo > 1:
        lo, hi = ((lo + hi) // 2, hi) if fits((lo + hi) // 2) else (lo, (lo + hi) // 2)
    assert longest_fitting(build, tokenizer, target) == lo
    assert len(calls) <= 14  # doubling then bisecting from 0 counts every point: 2 * log2(n), 36 at 30000 words
    with pytest.raises(ValueError, match="even the empty prompt"):
        longest_fitting(build, tokenizer, 10)


def test_longest_fitting_never_returns_a_prompt_over_the_target_when_the_count_dips_deeper():
    """A count that falls by 50 tokens past n = 700 (deeper than COUNT_DIP_TOKENS assumes): the answer still fits
    and the next n does not."""
    words = lambda n: n - 50 * (n > 700)  # noqa: E731
    for target in (660, 680, 700, 720):
        n = longest_fitting(lambda n: "w " * words(n), WhitespaceTokenizer(), target)
        assert words(n) <= target and words(n + 1) > target


def test_teacher_forced_trials_end_with_their_key_tokens():
    tokenizer = WhitespaceTokenizer()
    trials = teacher_forced_trials(tokenizer, 300, [0.2, 0.8], trials=3)
    assert [depth for depth, _, _ in trials] == [0.2, 0.8, 0.2]  # depths cycle over the trials
    for trial, (depth, ids, n_key) in enumerate(trials):
        key = passkey_key(0, 300, depth, trial)
        prompt = build_passkey_prompt(tokenizer, 300, depth, key)
        assert ids[:-n_key] == encode(tokenizer, prompt) and tokenizer.decode(ids[-n_key:]).strip() == str(key)


def test_passkey_keys_are_seeded_and_in_range():
    keys = [passkey_key(0, 4096, 0.5, t) for t in range(50)]
    assert keys == [passkey_key(0, 4096, 0.5, t) for t in range(50)]
    assert all(1 <= k <= 50000 for k in keys) and len(set(keys)) > 40
    assert keys != [passkey_key(1, 4096, 0.5, t) for t in range(50)]


class OracleReader:
    """Answers with the pass key found in the prompt (or with nothing when `blind`)."""

    def __init__(self, tokenizer, blind=False):
        self.tokenizer, self.blind, self.prompts = tokenizer, blind, []

    def generate(self, input_ids, max_new_tokens):
        text = self.tokenizer.decode(input_ids.tolist())
        self.prompts.append(len(input_ids))
        key = re.search(r"The pass key is (\d+)\.", text).group(1)
        answer = "I forgot." if self.blind else f"{key}. The"
        return torch.tensor(self.tokenizer.encode(answer)[:max_new_tokens])


def test_run_passkey_grid_counts_and_accuracy(tmp_path):
    tokenizer = WhitespaceTokenizer()
    result = run_passkey(OracleReader(tokenizer), tokenizer, [200, 400], [0.0, 1.0], trials=3, progress=False)
    assert len(result["cells"]) == 4 and all(c["accuracy"] == 1.0 and c["trials"] == 3 for c in result["cells"])
    assert result["per_length"] == {200: 1.0, 400: 1.0} and len(result["records"]) == 12
    blind = run_passkey(OracleReader(tokenizer, blind=True), tokenizer, [200], [0.5], trials=2, progress=False)
    assert blind["per_length"] == {200: 0.0}
    plot_heatmap(result["cells"], tmp_path / "heat.png", "test")
    assert (tmp_path / "heat.png").stat().st_size > 1000


def test_result_files_name_adapters_inside_the_repository_by_their_relative_path(tmp_path):
    from sharedllm.evaluation import session

    class Described:
        def __init__(self, adapter):
            self.adapter = adapter

        def describe(self):
            return {"method": "sharedllm", "adapter": self.adapter, "tree_depth": 3}

    inside = str(session.REPO / "adapters" / "smollm2-135m-joint-exercises")
    assert session.method_config(Described(inside)) == {
        "method": "sharedllm", "adapter": "adapters/smollm2-135m-joint-exercises", "tree_depth": 3}
    assert session.method_config(Described(str(tmp_path)))["adapter"] == str(tmp_path)  # elsewhere: kept whole
    assert session.method_config(Described(None)) == {"method": "sharedllm", "adapter": None, "tree_depth": 3}


def test_a_labelled_ruler_result_still_names_its_adapter():
    """RULER writes its results after freeing the methods, through a stand-in; under --label the result's name is the
    label, so the stand-in must carry the method's own name for the adapter to be recorded."""
    from sharedllm.evaluation import cli as eval_cli

    assert eval_cli._Described({"method": "sharedllm", "adapter": "adapters/x"}).name == "sharedllm"
