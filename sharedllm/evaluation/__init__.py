"""Evaluation protocols of the field (README, "Evaluate and compare"): perplexity (CEPE and sliding-window), passkey,
needle in a haystack and RULER-style tasks, LongBench-format data, their metrics, and the report.

Every protocol talks to a method only through `token_nll(input_ids, score_start)` and
`generate(input_ids, max_new_tokens)` (see sharedllm.methods), so any object with those two calls can be
evaluated, including the fakes in the tests.

No torch at import: the names below come from their submodule on first use, and ppl, heldout, passkey and needle
import torch only where they run a method (`ppl.perplexity`, `heldout`'s scoring, `passkey.generate_text`), so that
eval's parser, `report` and `compare` load no model library (tests/test_imports.py).
"""

from sharedllm.lazy import lazy_exports

__all__ = [
    "RULER_TASKS", "build_passkey_prompt", "cepe_windows", "classification_score", "code_sim_score",
    "edit_similarity", "effective_length", "first_integer", "make_sample", "passkey_correct", "perplexity",
    "rouge_l", "run_passkey", "sliding_windows", "string_match_all", "token_f1",
]
# public name -> submodule defining it, imported on first access (PEP 562): importing one submodule (the report,
# compare) does not import every protocol
_EXPORTS = {
    **dict.fromkeys(("code_sim_score", "classification_score", "edit_similarity", "first_integer", "rouge_l",
                     "string_match_all", "token_f1"), ".metrics"),
    **dict.fromkeys(("RULER_TASKS", "effective_length", "make_sample"), ".needle"),
    **dict.fromkeys(("build_passkey_prompt", "passkey_correct", "run_passkey"), ".passkey"),
    **dict.fromkeys(("cepe_windows", "perplexity", "sliding_windows"), ".ppl"),
}
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS, globals())
