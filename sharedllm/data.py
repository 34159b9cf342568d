"""Training data: tokenise-once cache, CEPE-style sample windows, a resumable mixing sampler, user files.

A training sample is `n_chunks * chunk_size` context tokens followed by `decoder_window` tokens, cut from
one long document (method.md, "Training"). Documents are tokenised once and the token ids are cached on
disk as uint32 `.npy` files, memory-mapped on later runs, so a 1M-token book costs nothing to reopen.
"""

from __future__ import annotations

import dataclasses
import hashlib
import io
import json
import logging
import os
import re
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from tqdm.auto import tqdm

from sharedllm.atomic import write_atomic

if TYPE_CHECKING:
    import torch

logger = logging.getLogger(__name__)

TEXT_SUFFIXES = (".txt", ".text", ".md")
JSON_SUFFIXES = (".jsonl", ".ndjson", ".json")  # JSON lines; a .json file may also hold one array of records
USER_FILE_SUFFIXES = TEXT_SUFFIXES + JSON_SUFFIXES  # matched case-insensitively


def default_cache_dir() -> Path:
    """Where token ids are cached: `tokens/` in the project's home (`$SHAREDLLM_HOME`, ~/.cache/sharedllm)."""
    from sharedllm.assets import sharedllm_home

    return sharedllm_home() / "tokens"


# --------------------------------------------------------------------------------------------------
# Tokenise once


@dataclass
class TokenizedDocument:
    doc_id: str
    domain: str
    ids: np.ndarray  # (T,) uint32, usually a read-only memory map of the cache file


def tokenizer_fingerprint(tokenizer) -> str:
    """A hash that changes whenever the text -> ids mapping can change (vocab, merges, normaliser)."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    spec = backend.to_str() if backend is not None else json.dumps(tokenizer.get_vocab(), sort_keys=True)
    return hashlib.sha256(f"{type(tokenizer).__name__}\n{spec}".encode()).hexdigest()[:16]


def _cache_path(cache_dir: Path, fingerprint: str, doc_id: str, text: str) -> Path:
    slug = re.sub(r"[^A-Za-z0-9._-]+", "_", doc_id)[-80:]
    text_hash = hashlib.sha256(text.encode("utf-8", errors="replace")).hexdigest()[:16]
    return cache_dir / fingerprint / f"{slug}-{text_hash}.npy"


def _encode(tokenizer, text: str) -> np.ndarray:
    # No BOS/EOS: samples are cut from the middle of documents, so a BOS would only mark one window in many.
    # verbose=False silences the "longer than the model's maximum length" warning meant for model inputs.
    ids = tokenizer.encode(text, add_special_tokens=False, verbose=False)
    return np.asarray(ids, dtype=np.uint32)


def tokenize_documents(documents, tokenizer, cache_dir: str | Path | None = None, min_tokens: int = 1,
                       progress: bool = True) -> list[TokenizedDocument]:
    """Token ids of each document (cached); documents shorter than `min_tokens` are skipped and counted."""
    cache_dir = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    fingerprint = tokenizer_fingerprint(tokenizer)
    paths = [_cache_path(cache_dir, fingerprint, doc.doc_id, doc.text) for doc in documents]
    missing = sum(not p.exists() for p in paths)
    bar = tqdm(total=missing, desc="tokenising (first pass, cached after)", unit="doc",
               disable=not progress or missing == 0)
    result, too_short = [], 0
    for doc, path in zip(documents, paths):
        if path.exists():
            ids = np.load(path, mmap_mode="r")
        else:
            ids = _encode(tokenizer, doc.text)
            buffer = io.BytesIO()
            np.save(buffer, ids)
            write_atomic(path, buffer.getvalue())  # several ranks (or runs) may tokenise one document at once
            bar.update(1)
        if len(ids) < min_tokens:
            too_short += 1
            logger.info("skipping document %s: %d tokens < %d (one chunk)", doc.doc_id, len(ids), min_tokens)
            continue
        result.append(TokenizedDocument(doc.doc_id, doc.domain, ids))
    bar.close()
    if too_short:
        logger.warning("skipped %d of %d documents shorter than one chunk (%d tokens)", too_short,
                       len(documents), min_tokens)
    return result


# --------------------------------------------------------------------------------------------------
# Sample windows


@dataclass
class DomainWindows:
    """All sample windows of one domain: `index[i] = (array number, start)` into `arrays`."""

    arrays: list[np.ndarray]
    index: np.ndarray  # (n, 2) int64
    sample_len: int

    def __len__(self) -> int:
        return len(self.index)

    def __getitem__(self, i: int) -> np.ndarray:
        array, start = self.index[i]
        return self.arrays[array][start:start + self.sample_len]


def _window_starts(length: int, sample_len: int, stride: int) -> np.ndarray:
    return np.arange(0, length - sample_len + 1, stride, dtype=np.int64)


def build_windows(docs: list[TokenizedDocument], sample_len: int, stride: int | None = None,
                  pack: bool = False, separator_id: int | None = None) -> dict[str, DomainWindows]:
    """Windows of `sample_len` tokens every `stride` tokens (default sample_len // 2, CEPE), per domain.

    By default a window never crosses a document boundary, so documents shorter than one sample are
    skipped (and counted). With `pack=True` the documents of a domain are concatenated, separated by
    `separator_id` (required: without a marker the model would read two texts as one), and cut as one.
    """
    stride = stride or sample_len // 2
    if pack and separator_id is None:
        raise ValueError("packing documents needs a separator token id (e.g. the tokenizer's EOS)")
    by_domain: dict[str, list[np.ndarray]] = {}
    for doc in docs:
        by_domain.setdefault(doc.domain, []).append(doc.ids)
    windows, skipped = {}, 0
    for domain, arrays in sorted(by_domain.items()):
        if pack:
            separator = np.asarray([separator_id], dtype=np.uint32)
            pieces = [piece for ids in arrays for piece in (ids, separator)][:-1]
            arrays = [np.concatenate(pieces)]
        index = [np.stack([np.full(len(s), a), s], axis=1)
                 for a, ids in enumerate(arrays) if len(s := _window_starts(len(ids), sample_len, stride))]
        skipped += sum(len(ids) < sample_len for ids in arrays)
        if index:
            windows[domain] = DomainWindows(arrays, np.concatenate(index), sample_len)
    if skipped:
        logger.warning("skipped %d documents shorter than one sample (%d tokens); pass pack=True "
                       "(--pack-documents) to concatenate documents instead", skipped, sample_len)
    if not windows:
        raise ValueError(f"no document has a full sample of {sample_len} tokens")
    return windows


def evaluation_windows(windows: dict[str, DomainWindows], count: int) -> torch.Tensor:
    """A fixed set of `count` windows spread evenly over all domains' windows (independent of any seed)."""
    import torch  # here and in next_batch, where ids become tensors: train's parser reads this module, torch-free

    flat = [(domain, i) for domain in sorted(windows) for i in range(len(windows[domain]))]
    picks = np.unique(np.linspace(0, len(flat) - 1, num=min(count, len(flat))).round().astype(np.int64))
    return torch.stack([torch.from_numpy(windows[flat[p][0]][flat[p][1]].astype(np.int64)) for p in picks])


# --------------------------------------------------------------------------------------------------
# Sampler


class WindowSampler:
    """Seeded, resumable sampler of training windows with per-domain mixing weights, sharded by rank.

    There is one global stream of samples, the same on every rank. Sample k picks its domain with an RNG
    seeded by (seed, k); the j-th draw from a domain is entry j mod n of that domain's permutation for
    epoch j // n (seeded by (seed, domain, epoch)), so every window is seen once per domain epoch. Rank r
    of w takes global samples r, r + w, ...: ranks see different windows and the state (the number of
    samples drawn plus the per-domain draw counts) is identical everywhere, so one copy resumes all ranks.
    """

    def __init__(self, windows: dict[str, DomainWindows], weights: dict[str, float] | None = None,
                 seed: int = 0, rank: int = 0, world_size: int = 1):
        self.windows = windows
        self.domains = sorted(windows)
        # Default: proportional to each domain's number of windows, i.e. uniform over all windows.
        weights = weights or {d: len(windows[d]) for d in self.domains}
        unknown = set(weights) - set(self.domains)
        if unknown:
            raise ValueError(f"mixing weights for domains without training windows: {sorted(unknown)}")
        p = np.asarray([float(weights.get(d, 0.0)) for d in self.domains])
        if (p < 0).any() or p.sum() <= 0:
            raise ValueError(f"mixing weights must be non-negative with a positive sum, got {weights}")
        self.cumulative = np.cumsum(p / p.sum())
        self.seed, self.rank, self.world_size = seed, rank, world_size
        self.samples_drawn = 0
        self.domain_draws = {d: 0 for d in self.domains}
        self._permutations: dict[tuple[str, int], np.ndarray] = {}

    def _next_global(self) -> tuple[str, int]:
        u = np.random.default_rng([self.seed, self.samples_drawn]).random()
        domain = self.domains[min(int(np.searchsorted(self.cumulative, u, side="right")), len(self.domains) - 1)]
        draw, n = self.domain_draws[domain], len(self.windows[domain])
        epoch = draw // n
        key = (domain, epoch)
        if key not in self._permutations:
            self._permutations = {k: v for k, v in self._permutations.items() if k[0] != domain}
            domain_seed = self.domains.index(domain)
            self._permutations[key] = np.random.default_rng([self.seed, domain_seed, epoch]).permutation(n)
        self.samples_drawn += 1
        self.domain_draws[domain] += 1
        return domain, int(self._permutations[key][draw % n])

    def next_window_ids(self, batch_size: int) -> list[tuple[str, int]]:
        """(domain, window index) of this rank's next `batch_size` samples; advances the global stream."""
        drawn = [self._next_global() for _ in range(batch_size * self.world_size)]
        return drawn[self.rank::self.world_size]

    def next_batch(self, batch_size: int) -> torch.Tensor:
        """This rank's next (batch_size, sample_len) int64 token ids."""
        import torch

        rows = [self.windows[d][i].astype(np.int64) for d, i in self.next_window_ids(batch_size)]
        return torch.from_numpy(np.stack(rows))

    def state_dict(self) -> dict:
        return {"seed": self.seed, "samples_drawn": self.samples_drawn, "domain_draws": dict(self.domain_draws)}

    def load_state_dict(self, state: dict) -> None:
        if state["seed"] != self.seed:
            raise ValueError(f"sampler state has seed {state['seed']}, this run uses {self.seed}")
        if set(state["domain_draws"]) != set(self.domains):
            raise ValueError("sampler state was saved for other domains; resume with the same data")
        self.samples_drawn = state["samples_drawn"]
        self.domain_draws = dict(state["domain_draws"])


# --------------------------------------------------------------------------------------------------
# User data


def _documents_from_file(path: Path, name: str, domain: str, Document, skips: Counter, strict: bool = False) -> list:
    """`strict` (a file named by the user, not found in a folder): text that is not UTF-8 is an error, not repaired."""
    raw = path.read_bytes()
    if not raw.strip():
        logger.warning("skipping empty file %s", name)
        skips["empty file"] += 1
        return []
    from sharedllm.assets import decode_text

    if strict:
        try:
            raw.decode("utf-8")
        except UnicodeDecodeError as err:
            raise ValueError(f"{path} is not UTF-8 text (byte 0x{raw[err.start]:02x} at offset {err.start}); convert "
                             f"it first, e.g. `iconv -f latin1 -t utf-8 {path} > {path.stem}.utf8{path.suffix}`") from None
    text = decode_text(raw, name)
    if path.suffix.lower() not in JSON_SUFFIXES:
        return [Document(doc_id=name, domain=domain, text=text)]
    if path.suffix.lower() == ".json" and text.lstrip().startswith("["):  # one JSON array of records
        try:
            entries = list(enumerate(json.loads(text), start=1))
        except ValueError as error:
            raise ValueError(f"{path} is not a JSON array of records ({error})") from None
    else:
        entries = list(enumerate(text.splitlines(), start=1))
    documents = []
    for line_number, line in entries:
        if isinstance(line, str) and not line.strip():
            continue
        try:
            record = json.loads(line) if isinstance(line, str) else line
            body = record["text"]
            if not isinstance(body, str):
                raise TypeError(f"'text' is {type(body).__name__}")
        except (ValueError, KeyError, TypeError) as error:
            logger.warning("skipping %s line %d: no string 'text' field (%s)", name, line_number, error)
            skips["bad JSON line"] += 1
            continue
        if not body.strip():
            skips["empty document"] += 1
            continue
        doc_id = str(record.get("id", f"{name}:{line_number}"))
        documents.append(Document(doc_id=doc_id, domain=str(record.get("domain", domain)), text=body))
    return documents


def _documents_from_dataset(dataset, domain: str, Document, skips: Counter) -> list:
    if "text" not in dataset.column_names:
        raise ValueError(f"the dataset has no 'text' column (columns: {dataset.column_names})")
    documents = []
    for i, record in enumerate(dataset):
        body = record["text"]
        if not isinstance(body, str) or not body.strip():
            skips["empty document"] += 1
            continue
        documents.append(Document(doc_id=str(record.get("id", i)), domain=str(record.get("domain", domain)),
                                  text=body))
    return documents


def load_user_documents(source, domain: str = "user") -> list:
    """Documents from a text file, a JSON-lines file (.jsonl / .ndjson / .json: one `{"text": ...}` per line, or a .json
    array of such records; optional `id`, `domain`), a directory of those (recursively; suffixes .txt .text .md .jsonl
    .ndjson .json, any case), or a HF
    `datasets.Dataset` with a `text` column. Bad files or lines in a folder are logged and skipped (non-UTF-8 bytes
    replaced); a single named file that is not UTF-8, or a source without any usable document, raises ValueError."""
    from sharedllm.assets import Document  # lazy: assets is a heavier module

    skips: Counter = Counter()
    if isinstance(source, (str, os.PathLike)):
        root = Path(source)
        if root.is_dir():
            files = sorted(p for p in root.rglob("*") if p.is_file() and p.suffix.lower() in USER_FILE_SUFFIXES)
            names = [p.relative_to(root).as_posix() for p in files]
        elif root.is_file():
            files, names = [root], [root.name]
        else:
            raise FileNotFoundError(f"no such file or directory: {root}")
        documents = [doc for path, name in zip(files, names)
                     for doc in _documents_from_file(path, name, domain, Document, skips, strict=root.is_file())]
    else:
        try:
            import datasets
        except ImportError:
            raise TypeError(f"cannot read documents from a {type(source).__name__}") from None
        if not isinstance(source, datasets.Dataset):
            raise TypeError(f"cannot read documents from a {type(source).__name__}")
        documents = _documents_from_dataset(source, domain, Document, skips)
    skipped = ", ".join(f"{n} x {what}" for what, n in sorted(skips.items()))
    if not documents:
        where = source if isinstance(source, (str, os.PathLike)) else f"the {type(source).__name__}"
        raise ValueError(f"no usable document in {where}" + (f" (skipped {skipped})" if skipped else "")
                         + f": text files ({', '.join(TEXT_SUFFIXES)}) or JSON lines ({', '.join(JSON_SUFFIXES)}) with a 'text' field")
    if skips:
        logger.warning("user data: skipped %s", skipped)
    return documents


VALIDATION_FRACTION = 0.05  # of --data held out for validation when no --validation-data is given


def split_description(n_documents: int, validation_fraction: float = VALIDATION_FRACTION) -> str:
    """What `split_documents` does with `n_documents`, as a run records it."""
    share = f"{validation_fraction:.0%}"
    if n_documents == 1:
        return f"one user document: its last {share} of text held out for validation"
    return f"user data split by document-id hash (about {share} validation)"


def _tail_cut(text: str, validation_fraction: float) -> int:
    """Where the held-out tail of `text` starts: at the `1 - validation_fraction` mark, moved back to the start of
    its line if that is within as far again (a text with few line breaks would otherwise hold out most of itself)."""
    mark = int(len(text) * (1 - validation_fraction))
    line_start = text.rfind("\n", max(0, mark - (len(text) - mark)), mark) + 1
    return line_start or mark


def split_documents(documents: list, validation_fraction: float = VALIDATION_FRACTION) -> tuple[list, list]:
    """A fixed train/validation split of user documents by a hash of the document id, not by order, so
    adding files never moves an existing document across the split. With two or more documents the
    validation side gets at least one (the lowest hash). One document (e.g. `--data book.txt`) has nothing to split
    by: its last `validation_fraction` of text (from a line start) is held out instead, so that neither side is empty.

    Whole documents, also of only 2-3 (a third to a half of the text then validates): tails of each document were
    tried (2026-12-06) and left most collections of chapter-sized files with no validation window at all, since
    validation windows never cross documents."""
    if len(documents) == 1:
        doc = documents[0]
        cut = _tail_cut(doc.text, validation_fraction)
        return ([dataclasses.replace(doc, text=doc.text[:cut])],
                [dataclasses.replace(doc, doc_id=f"{doc.doc_id}:tail", text=doc.text[cut:])])

    def bucket(doc) -> float:
        return int(hashlib.sha256(doc.doc_id.encode()).hexdigest()[:8], 16) / 0x1_0000_0000

    ranked = sorted(documents, key=bucket)
    n_validation = min(max(sum(bucket(d) < validation_fraction for d in ranked), 1), len(ranked) - 1)
    return ranked[n_validation:], ranked[:n_validation]


def documents_fingerprint(documents: list) -> str:
    """A hash of the documents' ids and texts, in order: a resumed run checks that it reads the data it stopped on
    (the sampler's state counts draws from these very windows)."""
    digest = hashlib.sha256()
    for doc in documents:
        digest.update(hashlib.sha256(doc.doc_id.encode("utf-8", errors="replace")).digest())
        digest.update(hashlib.sha256(doc.text.encode("utf-8", errors="replace")).digest())
    return digest.hexdigest()[:16]


# --------------------------------------------------------------------------------------------------
# Synthetic retrieval samples


# Training-only vocabulary and wording: different from the passkey ("The pass key is K") and RULER ("One of the
# special magic numbers for <key> is: <value>.") templates, so those evaluations stay unseen formats.
RETRIEVAL_NAMES = ("Alma Bruno Carla Dmitri Elena Farid Greta Hiro Ines Jonas Kira Luca Maya Nils Olga Pablo "
                   "Quinn Rosa Sami Tara Umar Vera Wim Xena Yusuf Zora").split()
RETRIEVAL_THINGS = ("locker safe bike lock suitcase gate mailbox door vault cabinet garage alarm").split()
# Word-pair keys ("amber-comet"), shaped like RULER's multikey keys but from words its lists do not use (a test checks).
RETRIEVAL_ADJECTIVES = ("amber azure bold brisk coral dusty faint frosty glossy hazy ivory jagged khaki lunar misty "
                        "muddy olive pale polar rusty sandy scarlet silver snowy sunny velvet windy").split()
RETRIEVAL_NOUNS = ("acorn arrow bell boot button carpet cloud comet crown drum fern flute fork kite lamp leaf mask "
                   "nest oar pearl pebble quill ribbon rocket scarf spoon tulip vase wagon whistle").split()


@dataclass(frozen=True)
class RetrievalWording:
    fact: str  # written into the text, with {key} and {value}
    question: str  # ends the window; the answer " {value}." follows it
    keys: str  # "owned": a person's thing ("Rosa's safe"); "pairs": a word pair ("amber-comet")


RETRIEVAL_WORDINGS = (  # the first is the original (and the only one unless --retrieval-wordings asks for more)
    RetrievalWording(" Note: the code of {key} is {value}.",
                     "\nQuestion: what is the code of {key}? Answer: the code of {key} is", "owned"),
    RetrievalWording(" Remember: the number filed under {key} is {value}.",
                     "\nWhich number is filed under {key}? The number filed under {key} is", "pairs"),
    RetrievalWording(" ({key}: {value})", "\nLook up {key} in the text above. {key}:", "pairs"),
    RetrievalWording(" By the way, {key} has the combination {value}.",
                     "\nWhat combination does {key} have? {key} has the combination", "owned"),
)
RETRIEVAL_FACT, RETRIEVAL_QUESTION = RETRIEVAL_WORDINGS[0].fact, RETRIEVAL_WORDINGS[0].question


@dataclass
class RetrievalSample:
    ids: np.ndarray  # (sample_len,) the window with facts planted in its context and questions at its end
    labels: np.ndarray  # (sample_len,) the answers' tokens, -100 elsewhere
    query_index: int  # the token before the first answer: the tree's query, as at evaluation


def plant_retrieval_facts(ids: np.ndarray, context_len: int, tokenizer, rng: np.random.Generator,
                          max_facts: int = 4, max_questions: int = 2, max_window_facts: int = 0,
                          n_wordings: int = 1) -> RetrievalSample:
    """Key-value facts written over random spots of the context, questions on some of them at the very end.

    The asked facts lie only in the first `context_len` tokens (the chunks), so the answers can only come through
    the cross-attention; the decoder window keeps its own text up to the questions. Only the answers are scored.
    With `max_window_facts`, 0 to that many more facts under other keys, never asked, are written into the window
    before the questions: distractors in plain view, as a haystack's other needles can be, which the answer must
    be told apart from by its key. Each exercise takes one of the first `n_wordings` of `RETRIEVAL_WORDINGS`.
    """
    encode = lambda text: _encode(tokenizer, text).astype(ids.dtype)  # noqa: E731
    n_facts = int(rng.integers(1, max_facts + 1))
    n_window = int(rng.integers(0, max_window_facts + 1)) if max_window_facts else 0  # no draw: old streams kept
    wording = RETRIEVAL_WORDINGS[int(rng.integers(n_wordings)) if n_wordings > 1 else 0]  # no draw: old streams kept
    keys = _retrieval_keys(wording.keys, n_facts + n_window, rng)
    values = [str(int(rng.integers(100, 10_000_000))) for _ in keys]
    facts = [encode(wording.fact.format(key=k, value=v)) for k, v in zip(keys, values)]

    ids, labels = ids.copy(), np.full(len(ids), -100, dtype=np.int64)
    _write_spread(ids, facts[:n_facts], 0, context_len, rng)

    asked = rng.choice(n_facts, size=min(max_questions, n_facts), replace=False)
    tail, answer_spans = [], []
    for i in asked:
        question = encode(wording.question.format(key=keys[i]))
        answer = encode(f" {values[i]}.")
        answer_spans.append((sum(map(len, tail)) + len(question), len(answer)))
        tail += [question, answer]
    tail = np.concatenate(tail)
    if len(tail) > len(ids) - context_len:
        raise ValueError("the questions do not fit the decoder window")
    offset = len(ids) - len(tail)
    ids[offset:] = tail
    _write_spread(ids, facts[n_facts:], context_len, offset, rng)
    for start, length in answer_spans:
        labels[offset + start:offset + start + length] = ids[offset + start:offset + start + length]
    return RetrievalSample(ids, labels, offset + answer_spans[0][0] - 1)


def _retrieval_keys(style: str, n: int, rng: np.random.Generator) -> list[str]:
    """n different keys of a wording's style (RetrievalWording.keys)."""
    if style == "owned":
        people = rng.choice(len(RETRIEVAL_NAMES), size=n, replace=False)
        return [f"{RETRIEVAL_NAMES[p]}'s {RETRIEVAL_THINGS[rng.integers(len(RETRIEVAL_THINGS))]}" for p in people]
    adjectives = rng.choice(len(RETRIEVAL_ADJECTIVES), size=n, replace=False)
    nouns = rng.choice(len(RETRIEVAL_NOUNS), size=n, replace=False)
    return [f"{RETRIEVAL_ADJECTIVES[a]}-{RETRIEVAL_NOUNS[b]}" for a, b in zip(adjectives, nouns)]


def _write_spread(ids: np.ndarray, facts: list[np.ndarray], start: int, end: int, rng: np.random.Generator) -> None:
    """Write each fact over ids[start:end], one per equal slice at a random offset inside it: they never overlap."""
    if not facts:
        return
    slice_len = (end - start) // len(facts)
    for i, fact in enumerate(facts):
        if len(fact) > slice_len:
            raise ValueError(f"a {len(fact)}-token fact does not fit a {slice_len}-token slice of tokens {start}-{end}")
        at = start + i * slice_len + int(rng.integers(0, slice_len - len(fact) + 1))
        ids[at:at + len(fact)] = fact


def copy_sample(ids: np.ndarray, context_len: int, rng: np.random.Generator) -> np.ndarray:
    """A copy warm-up sample (CEPE's "duplicate" warm-up): the decoder window repeats a span of the context.

    The first `context_len` tokens (the chunks) are kept; the decoder window is overwritten with the context span
    starting at a random offset, so the source lies only in the context and every window token after the first
    can be predicted by finding the span there and copying.
    """
    window = len(ids) - context_len
    if window > context_len:
        raise ValueError(f"a {window}-token decoder window cannot copy from {context_len} context tokens")
    start = int(rng.integers(0, context_len - window + 1))
    ids = ids.copy()
    ids[context_len:] = ids[start:start + window]
    return ids
