"""`sharedllm ask`: read long text files once, then answer questions about them, streaming each answer.

The files are encoded once into a `ContextCache` (the lower model's pass over every whole chunk); each question
then costs its tree search, node gathering and decoder window only. The prompt is the tokenizer's chat template
around one user message, "<files>\n\nQuestion: <question>", split at the question so that the document's part is
the same for every question. Answers go to stdout; progress, token counts and timings go to stderr.
At a terminal, Ctrl-C stops the answer being generated and asks for the next question; the encoded files stay.
"""

import argparse
import sys
import time
from collections.abc import Iterator
from pathlib import Path

from sharedllm.assets import DEFAULT_ADAPTER
from sharedllm.cli import InputError
from sharedllm.flags import (add_base_argument, add_device_argument, add_dtype_argument, add_knob_arguments,
                             add_threads_argument, knobs_from_args, positive_int, resolve_device)

DEFAULT_MAX_NEW_TOKENS = 256
QUESTION_SEPARATOR = "\n\nQuestion: "
PLAIN_TAIL = "\nAnswer:"  # for a tokenizer without a chat template
_DOCUMENT_MARK, _QUESTION_MARK = "\x00DOCUMENT\x00", "\x00QUESTION\x00"
# a stray byte or a few Latin-1 accents are replaced (with a warning); this share of bytes or more that are not
# UTF-8 means a binary or other-encoding file, whose replaced text would take minutes to encode and answer nothing
MAX_BAD_BYTE_SHARE = 0.01
MIN_BAD_BYTES_REFUSED = 10  # so that a short note with one stray byte still reads


class AskError(InputError):
    """A user error worth one line (missing file, empty file, no adapter): `sharedllm ask: error: ...`, as every
    command prints its input errors."""


# ----------------------------------------------------------------------------------------------------------------
# inputs: files and prompt
# ----------------------------------------------------------------------------------------------------------------


def read_files(paths: list[Path]) -> str:
    """The files' text in the given order (UTF-8, a few bad bytes replaced), each under its name when there are
    several."""
    texts = []
    for path in map(Path, paths):
        if not path.exists():
            raise AskError(f"no such file: {path}")
        if not path.is_file():
            raise AskError(f"not a file: {path}")
        text = decode_document(path.read_bytes(), path).strip()
        if not text:
            raise AskError(f"{path} is empty")
        texts.append(f"{path.name}:\n{text}" if len(paths) > 1 else text)
    return "\n\n".join(texts)


def decode_document(data: bytes, path: Path) -> str:
    """UTF-8 text; refuses binary files (a PDF, UTF-16) and files that are mostly not UTF-8."""
    from sharedllm.assets import decode_text

    if b"\x00" in data:
        raise AskError(f"{path} is not a text file (it holds NUL bytes: a PDF, a word processor file or UTF-16?); "
                       "convert it to UTF-8 text first, e.g. `pdftotext` for a PDF")
    # errors="ignore" drops exactly the bytes that are not UTF-8; the rest encodes back to the same bytes
    n_bad = len(data) - len(data.decode("utf-8", errors="ignore").encode("utf-8"))
    if n_bad >= max(MIN_BAD_BYTES_REFUSED, MAX_BAD_BYTE_SHARE * len(data)):
        raise AskError(f"{path} is not UTF-8 text ({n_bad:,} of its {len(data):,} bytes are not UTF-8); convert it "
                       f"first, e.g. `iconv -f latin1 -t utf-8 {path} > {path.stem}.utf8{path.suffix}`")
    return decode_text(data, str(path))


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


def read_questions(stream, prompt: str = "", at_terminal: bool = True) -> Iterator[str]:
    """Questions from a stream, one per line, until end of file (`prompt` shown on stderr). Typed at a terminal
    an empty line quits too; from a file, blank lines are skipped, as a list of questions may have
    them between groups."""
    while True:
        print(prompt, end="", file=sys.stderr, flush=True)
        line = stream.readline()
        if not line:  # end of input
            return
        if line.strip():
            yield line.strip()
        elif at_terminal:
            return


# ----------------------------------------------------------------------------------------------------------------
# the command's logic, on any loaded model (tests inject a tiny one)
# ----------------------------------------------------------------------------------------------------------------


class Asker:
    """One document encoded once; `answer(question)` streams an answer to stdout and returns it. Torch and
    transformers are imported in its methods, where a model runs: the parser and the file checks of this module need
    neither, so `sharedllm ask --help` and a missing file answer at once."""

    def __init__(self, model, tokenizer, document: str, progress: bool = True):
        import torch

        from sharedllm.context_cache import ContextCache

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
        import torch

        from sharedllm.rows import context_chunk_counts

        cfg = self.model.config
        total = len(self.context.document_ids) + n_question
        chunks = int(context_chunk_counts(torch.tensor([total]), cfg.chunk_size, cfg.decoder_window)[0])
        return chunks * cfg.chunk_size, total - chunks * cfg.chunk_size

    def answer(self, question: str, max_new_tokens: int = DEFAULT_MAX_NEW_TOKENS) -> str:
        import torch
        from transformers import TextStreamer

        from sharedllm.compat import cache_argument

        tokenizer = self.tokenizer
        ids = _token_ids(tokenizer, self.between + question + self.tail, special=False)
        question_ids = torch.tensor([ids], device=self.model.device)
        eos = tokenizer.eos_token_id
        started = time.perf_counter()
        with torch.no_grad():
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


def load_model(adapter: str | Path | None = None, device: str | None = None, base: str | None = None,
               dtype: str = "float32", **knobs):
    """The adapter (default: the shipped one) on `base` (default: the one it records) loaded in `dtype` (a torch
    dtype's name), with that base's tokenizer; `knobs` (config.KNOBS) override the adapter's saved values."""
    import torch

    from sharedllm.loading import load_adapter_config, load_causal_lm
    from sharedllm.modeling import SharedLLMForCausalLM

    adapter = Path(adapter) if adapter else DEFAULT_ADAPTER
    if not (adapter / "config.json").is_file():
        raise AskError(
            f"no adapter in {adapter}; pass --adapter DIR (a folder written by "
            "`sharedllm train` or save_pretrained)"
        )
    try:  # a plain base model's folder, or a damaged config.json
        config = load_adapter_config(adapter)
    except ValueError as err:
        raise AskError(str(err)) from err
    if not (base or config.base_model):
        raise AskError(f"the adapter in {adapter} records no base model; pass --base MODEL")
    # the base is loaded here rather than by from_pretrained for its tokenizer (required, and the base's own)
    base_model, tokenizer = load_causal_lm(base or config.base_model, dtype=getattr(torch, dtype))
    try:  # a knob the adapter cannot take, a base it was not trained on, missing or damaged adapter weights
        model = SharedLLMForCausalLM.from_pretrained(adapter, base=base_model, config=config, **knobs)
    except (ValueError, FileNotFoundError) as err:
        raise AskError(str(err)) from err
    return model.to(resolve_device(device)), tokenizer


# ----------------------------------------------------------------------------------------------------------------
# CLI
# ----------------------------------------------------------------------------------------------------------------


def _log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("files", nargs="+", type=Path, metavar="FILE",
                        help="text files, read as one document in this order (UTF-8; a few bad bytes are "
                             "replaced, binary files such as PDFs are refused: convert them to text first)")
    parser.add_argument("--question", "-q", action="append", default=[],
                        help="a question about the files (repeat for more); without any, questions come from stdin")
    parser.add_argument("--interactive", "-i", action="store_true",
                        help="after the --question ones, answer questions from stdin, one per line; the files are "
                             "encoded once. At a terminal an empty line or Ctrl-D quits and Ctrl-C stops the "
                             "current answer; piped in (ask doc.txt < questions.txt), blank lines are skipped and "
                             "the questions end at end of input")
    parser.add_argument("--adapter", type=Path, default=None,
                        help=f"adapter folder (default: the shipped adapter {DEFAULT_ADAPTER.name} on its base, "
                             "SmolLM2-135M)")
    add_base_argument(parser, default="the base the adapter records")
    add_threads_argument(parser)
    parser.add_argument("--max-new-tokens", type=positive_int, default=DEFAULT_MAX_NEW_TOKENS, help="longest answer, in tokens")
    add_device_argument(parser)
    # bfloat16 halves the context cache (every chunk's keys and values: 6 GB in float32 for a 137K-token book)
    add_dtype_argument(parser, choices=("float32", "bfloat16"))
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
    model, tokenizer = load_model(args.adapter, args.device, args.base, dtype=args.dtype, **knobs)
    asker = Asker(model, tokenizer, document)
    for question in args.question:
        _log(f"question: {question}")
        asker.answer(question, args.max_new_tokens)
    if args.interactive or not args.question:
        at_terminal = sys.stdin.isatty()
        prompt = ""
        if at_terminal:
            _log("type a question and press enter; an empty line or end of input (Ctrl-D) quits, Ctrl-C stops an "
                 "answer")
            prompt = "question> "
        for question in read_questions(sys.stdin, prompt, at_terminal):
            if at_terminal:
                answer_or_stop(asker, question, args.max_new_tokens)
            else:
                asker.answer(question, args.max_new_tokens)
    return 0


def answer_or_stop(asker: Asker, question: str, max_new_tokens: int) -> None:
    """Answer, or on Ctrl-C stop this answer only: the encoded files (minutes of work) stay for the next question.
    The cache is never modified by an answer, so a stopped one leaves nothing behind. Ctrl-C at the prompt quits."""
    try:
        asker.answer(question, max_new_tokens)
    except KeyboardInterrupt:
        print(flush=True)  # end the answer's partial line on stdout
        _log("[interrupted]")
