"""Evaluation protocols of the field (README, "Evaluate and compare"): perplexity (CEPE and sliding-window), passkey,
needle in a haystack and RULER-style tasks, LongBench-format data, their metrics, and the report.

Every protocol talks to a method only through `token_nll(input_ids, score_start)` and
`generate(input_ids, max_new_tokens)` (see sharedllm.methods), so any object with those two calls can be
evaluated, including the fakes in the tests.
"""

from .metrics import (code_sim_score, classification_score, edit_similarity, first_integer, rouge_l,
                      string_match_all, token_f1)
from .needle import RULER_TASKS, effective_length, make_sample
from .passkey import build_passkey_prompt, passkey_correct, run_passkey
from .ppl import cepe_windows, perplexity, sliding_windows

__all__ = [
    "RULER_TASKS", "build_passkey_prompt", "cepe_windows", "classification_score", "code_sim_score",
    "edit_similarity", "effective_length", "first_integer", "make_sample", "passkey_correct", "perplexity",
    "rouge_l", "run_passkey", "sliding_windows", "string_match_all", "token_f1",
]
