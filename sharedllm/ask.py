"""`sharedllm ask`: read long text files once, then answer questions about them, streaming each answer.

The files are encoded once into a `ContextCache` (the lower model's pass over every whole chunk); each question
then costs its tree search, node gathering and decoder window only. The prompt is the tokenizer's chat template
around one user message, "<files>\n\nQuestion: <question>", split at the question so that the document's part is
the same for every question. Answers go to stdout; progress, token counts and timings go to stderr.
"""

import argparse
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import torch
from transformers import TextStreamer

from sharedllm.assets import DEFAULT_ADAPTER
from sharedllm.cli import InputError
from sharedllm.compat import cache_argument
from sharedllm.context_cache import ContextCache
from sharedllm.flags import (add_base_argument, add_device_argument, add_knob_arguments, add_threads_argument,
                             default_device, knobs_from_args, positive_int)
from sharedllm.rows import context_chunk_counts

DEFAULT_MAX_NEW_TOKENS = 256
QUESTION_SEPARATOR = "\n\nQuestion: "
PLAIN_TAIL = "\nAnswer:"  # for a tokenizer without a chat template
_DOCUMENT_MARK, _QUESTION_MARK = "\x00DOCUMENT\x00", "\x00QUESTION\x00"


class AskError(InputError):
    """A user error worth one line (missing file, empty file, no adapter): `sharedllm ask: error: ...`, as every
    command prints its input errors."""


# ----------------------------------------------------------------------------------------------------------------
# inputs: files and prompt
# ----------------------------------------------------------------------------------------------------------------


def read_files(paths: list[Path]) -> str:
    """The files' text in the given order (UTF-8, bad bytes replaced), each under its name when there are several."""
    from sharedllm.assets import decode_text

    texts = []
    for path in map(Path, paths):
        if not path.exists():
            raise AskError(f"no such file: {path}")
        if not path.is_file():
            raise AskError(f"not a file: {path}")
        text = decode_text(path.read_bytes(), str(path)).strip()
        if not text:
            raise AskError(f"{path} is empty")
        texts.append(f"{path.name}:\n{text}" if len(paths) > 1 else text)
    return "\n\n".join(texts)


def prompt_parts(tokenizer) -> tuple[str, str, str]:
    """(head, between, tail): the prompt for a question about a document is head + document + between + question +
    tail. With a chat template they are cut out of the template rendered around one user message."""
    if not getattr(tokenizer, "chat_template", None):
        return "", QUESTION_SEPARATOR, PLAIN_TAIL
    message = {"role": "user", "content": f"{_DOCUMENT_MARK}{QUESTION_SEPARATOR}{_QUESTION_MARK}"}
    text = tokenizer.apply_chat_template([message], tokenize=False, add_generation_prompt=True)
    head, rest = text.split(_DOCUMENT_MARK)
    between, tail = rest.split(_QUESTION_MARK)
    return head, between, tail


def _token_ids(tokenizer, text: str, special: bool) -> list[int]:
    return tokenizer(text, add_special_tokens=special, verbose=False)["input_ids"]


def read_questions(stream, prompt: str = "") -> Iterator[str]:
    """Questions from a stream, one per line, until end of file or an empty line (`prompt` shown on stderr)."""
    while True:
        print(prompt, end="", file=sys.stderr, flush=True)
        line = stream.readline()
        if not line.strip():
            return
        yield line.strip()


# ----------------------------------------------------------------------------------------------------------------
# the command's logic, on any loaded model (tests inject a tiny one)
# ----------------------------------------------------------------------------------------------------------------


class Asker:
    """One document encoded once; `answer(question)` streams an answer to stdout and returns it."""

    def __init__(self, model, tokenizer, document: str, progress: bool = True):
        self.model, self.tokenizer = model, tokenizer
        head, self.between, self.tail = prompt_parts(tokenizer)
        # without a chat template the tokenizer's own special tokens (e.g. BOS) open the document
        ids = _token_ids(tokenizer, head + document, special=not head)
        started = time.perf_counter()
        self.context = ContextCache.encode(model, torch.tensor(ids), progress=progress)
        self.encode_seconds = time.perf_counter() - started
        cfg = model.config
        _log(f"read {len(ids):,} tokens; encoded once in {self.encode_seconds:.1f} s ({self.context.n_chunks} chunks "
             f"of {cfg.chunk_size} tokens kept, {self.context.nbytes() / 2**20:,.0f} MiB)")

    def split(self, n_question: int) -> tuple[int, int]:
        """(tokens in context chunks, tokens the decoder reads) for a question of n_question tokens."""
        cfg = self.model.config
        total = len(self.context.document_ids) + n_question
        chunks = int(context_chunk_counts(torch.tensor([total]), cfg.chunk_size, cfg.decoder_window)[0])
        return chunks * cfg.chunk_size, total - chunks * cfg.chunk_size

    @torch.no_grad()
    def answer(self, question: str, max_new_tokens: int = DEFAULT_MAX_NEW_TOKENS) -> str:
        tokenizer = self.tokenizer
        ids = _token_ids(tokenizer, self.between + question + self.tail, special=False)
        question_ids = torch.tensor([ids], device=self.model.device)
        eos = tokenizer.eos_token_id
        started = time.perf_counter()
        out = self.model.generate(
            question_ids, **cache_argument(self.context), max_new_tokens=max_new_tokens, do_sample=False,
            eos_token_id=eos, pad_token_id=tokenizer.pad_token_id if tokenizer.pad_token_id is not None else eos,
            streamer=TextStreamer(tokenizer, skip_prompt=True, skip_special_tokens=True),
        )
        seconds = time.perf_counter() - started
        new = out[0, question_ids.shape[1] :]
        in_context, in_window = self.split(len(ids))
        _log(f"[{in_context:,} tokens in context, {in_window:,} read by the decoder (question: {len(ids)}); "
             f"{len(new)} tokens answered in {seconds:.1f} s]")
        return tokenizer.decode(new, skip_special_tokens=True)


def load_model(adapter: str | Path | None = None, device: str | None = None, base: str | None = None, **knobs):
    """The adapter (default: the shipped one) on `base` (default: the one it records), with that base's tokenizer;
    `knobs` (config.KNOBS) override the adapter's saved values."""
    from sharedllm.config import SharedLLMConfig
    from sharedllm.loading import load_causal_lm
    from sharedllm.modeling import SharedLLMForCausalLM

    adapter = Path(adapter) if adapter else DEFAULT_ADAPTER
    if not (adapter / "config.json").is_file():
        raise AskError(
            f"no adapter in {adapter}; pass --adapter DIR (a folder written by "
            "`sharedllm train` or save_pretrained)"
        )
    config = SharedLLMConfig.from_pretrained(adapter)
    base_model, tokenizer = load_causal_lm(base or config.base_model)
    try:  # a knob the adapter cannot take, or a base it was not trained on
        model = SharedLLMForCausalLM.from_pretrained(adapter, base=base_model, config=config, **knobs)
    except ValueError as err:
        raise AskError(str(err)) from err
    return model.to(device or default_device()), tokenizer


# ----------------------------------------------------------------------------------------------------------------
# CLI
# ----------------------------------------------------------------------------------------------------------------


def _log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("files", nargs="+", type=Path, metavar="FILE",
                        help="text files, read as one document in this order (UTF-8; bad bytes replaced)")
    parser.add_argument("--question", "-q", action="append", default=[],
                        help="a question about the files (repeat for more); without any, questions come from stdin")
    parser.add_argument("--interactive", "-i", action="store_true",
                        help="after the --question ones, answer questions from stdin, one per line, until end of "
                             "input or an empty line; the files are encoded once")
    parser.add_argument("--adapter", type=Path, default=None,
                        help=f"adapter folder (default: the shipped adapter {DEFAULT_ADAPTER.name} on its base, "
                             "SmolLM2-135M)")
    add_base_argument(parser, default="the base the adapter records")
    add_threads_argument(parser)
    parser.add_argument("--max-new-tokens", type=positive_int, default=DEFAULT_MAX_NEW_TOKENS, help="longest answer, in tokens")
    add_device_argument(parser)
    add_knob_arguments(parser, "SharedLLM knobs (default: the adapter's saved value)")


def check_knobs(knobs: dict) -> None:
    """The knobs ask cannot honour, refused before anything loads."""
    if knobs.get("full_logits"):
        raise AskError("--full-logits does not apply to ask: an answer is generated from the last position's logits")
    if knobs.get("node_encoding") == "node":
        raise AskError("--node-encoding node does not apply to ask: the files are encoded once into a context cache, "
                       "which needs node_encoding chunk")


def run(args) -> int:
    knobs = knobs_from_args(args)
    check_knobs(knobs)
    document = read_files(args.files)  # before loading the model: a typo fails at once
    model, tokenizer = load_model(args.adapter, args.device, args.base, **knobs)
    asker = Asker(model, tokenizer, document)
    for question in args.question:
        _log(f"question: {question}")
        asker.answer(question, args.max_new_tokens)
    if args.interactive or not args.question:
        prompt = ""
        if sys.stdin.isatty():
            _log("type a question and press enter; an empty line or end of input (Ctrl-D) quits")
            prompt = "question> "
        for question in read_questions(sys.stdin, prompt):
            asker.answer(question, args.max_new_tokens)
    return 0
