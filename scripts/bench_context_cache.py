"""Encode a long document once, then answer questions: cost against re-encoding the document for every question.

    OMP_NUM_THREADS=2 python scripts/bench_context_cache.py [--tokens 65536] [--repeats 3] [--output FILE]

The document is the first `--tokens` tokens of a held-out test book (splits.json), inside the chat prompt that
`sharedllm ask` builds; the three questions are fixed and each is timed once per way (from scratch, one call costs
as much as an encoding):

    encode        ContextCache.encode of the document (the lower model over its whole chunks), median of
                  `--repeats` runs
    cached        per question with the cache: first token (generate 1 token) and a whole answer (--new-tokens),
                  median over the questions
    scratch       per question from scratch, document + question through generate(): the same two times

It also checks that the cached and from-scratch answers are the same tokens, and reports the cache's size.
"""

import argparse
import json
import statistics
import time
from pathlib import Path

import torch

from sharedllm import provenance
from sharedllm.ask import DEFAULT_ADAPTER, load_model, prompt_parts
from sharedllm.assets import load_documents, load_splits
from sharedllm.compat import cache_argument
from sharedllm.context_cache import ContextCache

QUESTIONS = (
    "Who is the narrator of these stories?",
    "What does Sherlock Holmes play to relax?",
    "Name one of the cases in this book.",
)


def timed(fn, repeats: int, device: str):
    """(median seconds, last result) over `repeats` calls."""
    times, result = [], None
    for _ in range(repeats):
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        started = time.perf_counter()
        result = fn()
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        times.append(time.perf_counter() - started)
    return statistics.median(times), result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tokens", type=int, default=65536, help="document length in tokens")
    parser.add_argument("--repeats", type=int, default=3, help="encodings timed")
    parser.add_argument("--new-tokens", type=int, default=16, help="tokens per timed answer (greedy, no early stop)")
    parser.add_argument("--adapter", type=Path, default=DEFAULT_ADAPTER)
    parser.add_argument("--device", default=None)
    parser.add_argument("--output", type=Path, default=None, help="JSON file (default: print only)")
    args = parser.parse_args()
    provenance.pin_commit()  # the JSON names the code this run starts with, whatever is committed meanwhile

    model, tokenizer = load_model(args.adapter, args.device)
    device = str(model.device)
    book = load_splits()["books"]["test"][0]
    text = next(doc.text for doc in load_documents("test", ["books"]) if doc.doc_id == book)
    head, between, tail = prompt_parts(tokenizer)
    document = torch.tensor(tokenizer(head + text, add_special_tokens=False, verbose=False)["input_ids"][: args.tokens])
    if len(document) < args.tokens:
        raise SystemExit(f"{book} has only {len(document)} tokens, fewer than --tokens {args.tokens}")
    questions = [torch.tensor([tokenizer(between + q + tail, add_special_tokens=False)["input_ids"]]) for q in QUESTIONS]
    document, questions = document.to(device), [q.to(device) for q in questions]
    eos = tokenizer.eos_token_id

    def generate(ids, n_new, **kwargs):
        return model.generate(ids, max_new_tokens=n_new, min_new_tokens=n_new, do_sample=False,
                              eos_token_id=eos, pad_token_id=eos, **kwargs)

    with torch.no_grad():
        warm = ContextCache.encode(model, document[:2048])  # first calls pay one-time setup: not timed
        generate(questions[0], 2, **cache_argument(warm))
        encode_s, context = timed(lambda: ContextCache.encode(model, document), args.repeats, device)
        rows = []
        for text_q, question in zip(QUESTIONS, questions):
            full = torch.cat([document, question[0]])[None]
            row = {"question": text_q, "question_tokens": question.shape[1]}
            row["cached_first_token_s"], _ = timed(lambda: generate(question, 1, **cache_argument(context)), 1, device)
            row["cached_answer_s"], cached = timed(
                lambda: generate(question, args.new_tokens, **cache_argument(context)), 1, device)
            row["scratch_first_token_s"], _ = timed(lambda: generate(full, 1), 1, device)
            row["scratch_answer_s"], scratch = timed(lambda: generate(full, args.new_tokens), 1, device)
            row["same_tokens"] = torch.equal(cached[0, question.shape[1] :], scratch[0, full.shape[1] :])
            row["answer"] = tokenizer.decode(cached[0, question.shape[1] :], skip_special_tokens=True)
            rows.append(row)
            print(json.dumps(row), flush=True)

    median = lambda key: statistics.median(r[key] for r in rows)  # noqa: E731
    cached_answer, scratch_answer = median("cached_answer_s"), median("scratch_answer_s")
    results = {
        "what": "encode a document once, then answer questions with ContextCache, against from scratch per question",
        "book": book,
        "document_tokens": len(document),
        "new_tokens_per_answer": args.new_tokens,
        "repeats": args.repeats,
        "encode_s": encode_s,
        "cache_bytes": context.nbytes(),
        "cache_bytes_per_token": context.nbytes() / len(document),
        "questions": rows,
        "cached_first_token_s": median("cached_first_token_s"),
        "cached_answer_s": cached_answer,
        "scratch_first_token_s": median("scratch_first_token_s"),
        "scratch_answer_s": scratch_answer,
        # the first question pays the encoding, every further one only its answer
        "first_question_s": encode_s + cached_answer,
        "further_question_over_first": cached_answer / (encode_s + cached_answer),
        "cached_over_scratch_answer": cached_answer / scratch_answer,
        "cached_over_scratch_first_token": median("cached_first_token_s") / median("scratch_first_token_s"),
        "all_same_tokens": all(r["same_tokens"] for r in rows),
        "adapter": str(args.adapter),
        **provenance.record(device, str(model.base.dtype).removeprefix("torch.")),
    }
    print(json.dumps({k: v for k, v in results.items() if k != "questions"}, indent=1))
    if args.output:
        provenance.write_json(args.output, results)


if __name__ == "__main__":
    main()
