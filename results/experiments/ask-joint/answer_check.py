"""Why does the joint preset answer `sharedllm ask` questions with newlines? Greedy answers to one question about
the first N tokens of a held-out test book, in ask's chat prompt, for: the base with full attention (N <= 8K),
the default joint preset, and the preset with a global top-k of chunks (context_chunks).

    python results/experiments/ask-joint/answer_check.py --tokens 4096 16384
"""

import argparse
import json

import torch

from sharedllm import SharedLLMForCausalLM
from sharedllm.ask import prompt_parts
from sharedllm.assets import DEFAULT_ADAPTER, load_documents

QUESTION = "Who is the narrator of these stories?"


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--tokens", type=int, nargs="+", default=[4096, 16384])
    parser.add_argument("--new-tokens", type=int, default=24)
    parser.add_argument("--variants", nargs="+", default=["full", "default", "context_chunks=4", "context_chunks=1"])
    args = parser.parse_args()
    torch.set_grad_enabled(False)
    model = SharedLLMForCausalLM.from_pretrained(DEFAULT_ADAPTER).eval()
    tokenizer = model.tokenizer
    head, between, tail = prompt_parts(tokenizer)
    book = [d for d in load_documents("test", ["books"]) if "sherlock" in d.doc_id][0]
    book_ids = tokenizer(book.text, add_special_tokens=False)["input_ids"]
    for n in args.tokens:
        document = tokenizer.decode(book_ids[:n])
        ids = torch.tensor([tokenizer(head + document + between + QUESTION + tail, add_special_tokens=False)["input_ids"]])
        for variant in args.variants:
            if variant == "full":
                if ids.shape[1] > 8192:
                    continue
                out = model.base.generate(ids, max_new_tokens=args.new_tokens, do_sample=False)
            else:
                knobs = {} if variant == "default" else {variant.split("=")[0]: int(variant.split("=")[1])}
                variant_model = SharedLLMForCausalLM.from_pretrained(DEFAULT_ADAPTER, base=model.base, **knobs).eval()
                out = variant_model.generate(ids, max_new_tokens=args.new_tokens, do_sample=False)
            answer = tokenizer.decode(out[0, ids.shape[1]:])
            print(json.dumps(dict(tokens=ids.shape[1], variant=variant, answer=answer)), flush=True)


if __name__ == "__main__":
    main()
