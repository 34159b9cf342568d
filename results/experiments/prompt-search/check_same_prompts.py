"""Old (doubling + bisection from 0) vs new longest_fitting on the prompts the evaluations build: same n, and calls."""
import sys, time
from sharedllm.loading import DEFAULT_BASE, load_tokenizer, resolve_base_path
from sharedllm.evaluation import passkey, needle

def old_longest_fitting(build, tokenizer, target_tokens):
    """The search before: the same doubling-then-bisection path, every point of it tokenized."""
    fits = lambda n: len(passkey.encode(tokenizer, build(n))) <= target_tokens
    if not fits(0):
        raise ValueError
    return passkey._doubling_bisection(fits)

tok = load_tokenizer(resolve_base_path(DEFAULT_BASE))
new = passkey.longest_fitting
calls = {"n": 0}
orig_encode = passkey.encode
def counting(t, text):
    calls["n"] += 1
    return orig_encode(t, text)
passkey.encode = counting

def both(make, label):
    # make(search) -> prompt built with that search
    out = {}
    for name, fn in (("old", old_longest_fitting), ("new", new)):
        passkey.longest_fitting = fn; needle.longest_fitting = fn
        calls["n"] = 0; t = time.perf_counter()
        prompt = make()
        out[name] = (prompt, calls["n"], time.perf_counter() - t)
    same = out["old"][0] == out["new"][0]
    print(f"{label}: same={same} calls {out['old'][1]} -> {out['new'][1]}, s {out['old'][2]:.2f} -> {out['new'][2]:.2f}", flush=True)
    return same

task = sys.argv[1]
bad = 0
if task == "passkey":
    for length, trials in ((8192, 10), (16384, 10), (32768, 10), (65536, 3), (131072, 2)):
        for depth in passkey.DEFAULT_DEPTHS:
            for trial in range(trials):
                key = passkey.passkey_key(0, length, depth, trial)
                bad += not both(lambda: passkey.build_passkey_prompt(tok, length, depth, key), f"passkey {length} {depth} {trial}")
else:
    hay = needle.load_haystack("test", ["books"])
    for length, trials in ((16384, 10), (32768, 10), (131072, 2)):
        for t in ("niah_single", "niah_multikey"):
            for trial in range(trials):
                bad += not both(lambda: needle.make_sample(t, tok, length, f"0/{trial}", hay).prompt, f"{t} {length} {trial}")
print("DIFFERENT:", bad)
