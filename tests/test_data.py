"""Training data: token cache, sample windows, the resumable sampler, user files and bad data."""

import json
import logging
import re

import numpy as np
import pytest

from sharedllm import data
from sharedllm.assets import Document


class CharTokenizer:
    """One token per character; counts encode calls so tests can see the cache working."""

    def __init__(self, offset: int = 0):
        self.offset = offset
        self.calls = 0

    def encode(self, text, add_special_tokens=False, verbose=False):
        self.calls += 1
        return [ord(c) % 120 + 3 + self.offset for c in text]

    def get_vocab(self):
        return {chr(i): i % 120 + 3 + self.offset for i in range(256)}


def id_documents(lengths, domain="d"):
    """Documents whose every token is their own number (1000 + i): a window's tokens name its document."""
    return [data.TokenizedDocument(f"doc{i}", domain, np.full(n, 1000 + i, dtype=np.uint32))
            for i, n in enumerate(lengths)]


# --- windows ---------------------------------------------------------------------------------------


def test_windows_never_cross_documents_and_short_ones_are_counted(caplog):
    docs = id_documents([100, 64, 63, 250, 10])
    with caplog.at_level(logging.WARNING, logger="sharedllm.data"):
        windows = data.build_windows(docs, sample_len=64, stride=16)["d"]
    assert "skipped 2 documents shorter than one sample" in caplog.text
    starts_per_doc = {0: (100 - 64) // 16 + 1, 1: 1, 3: (250 - 64) // 16 + 1}
    assert len(windows) == sum(starts_per_doc.values())
    for i in range(len(windows)):
        window = windows[i]
        assert window.shape == (64,)
        assert len(set(window.tolist())) == 1, "a sample mixes two documents"


def test_packing_crosses_documents_only_when_asked():
    docs = id_documents([40, 40, 40])
    with pytest.raises(ValueError, match="no document has a full sample"):
        data.build_windows(docs, sample_len=64)
    with pytest.raises(ValueError, match="separator"):
        data.build_windows(docs, sample_len=64, pack=True)
    windows = data.build_windows(docs, sample_len=64, stride=32, pack=True, separator_id=2)["d"]
    assert len(windows) == (3 * 40 + 2 - 64) // 32 + 1
    first = windows[0].tolist()
    assert first[40] == 2 and set(first) == {1000, 2, 1001}  # separator between the two documents


def test_default_stride_is_half_a_sample():
    windows = data.build_windows(id_documents([256]), sample_len=64)["d"]
    assert windows.index[:, 1].tolist() == list(range(0, 256 - 64 + 1, 32))


# --- sampler ---------------------------------------------------------------------------------------


def two_domain_windows():
    docs = id_documents([300, 200], domain="a") + id_documents([400], domain="b")
    for i, doc in enumerate(docs):  # distinct ids across domains too
        doc.ids = doc.ids + 100 * i
    return data.build_windows(docs, sample_len=32, stride=16)


def draw(sampler, batches, batch_size=2):
    return [sampler.next_window_ids(batch_size) for _ in range(batches)]


def test_sampler_batch_shape_and_dtype():
    batch = data.WindowSampler(two_domain_windows(), seed=0).next_batch(3)
    assert tuple(batch.shape) == (3, 32) and str(batch.dtype) == "torch.int64"


def test_sampler_is_deterministic_and_resumes_exactly():
    windows = two_domain_windows()
    full = draw(data.WindowSampler(windows, seed=3), 10)
    assert full == draw(data.WindowSampler(windows, seed=3), 10)
    assert full != draw(data.WindowSampler(windows, seed=4), 10)
    first = data.WindowSampler(windows, seed=3)
    head = draw(first, 4)
    state = json.loads(json.dumps(first.state_dict()))  # goes through a JSON checkpoint file
    resumed = data.WindowSampler(windows, seed=3)
    resumed.load_state_dict(state)
    assert head + draw(resumed, 6) == full
    with pytest.raises(ValueError, match="seed"):
        data.WindowSampler(windows, seed=5).load_state_dict(state)


def test_ranks_draw_disjoint_shares_of_one_global_stream():
    windows = two_domain_windows()
    single = [w for batch in draw(data.WindowSampler(windows, seed=1), 5, batch_size=4) for w in batch]
    ranks = [draw(data.WindowSampler(windows, seed=1, rank=r, world_size=2), 5) for r in range(2)]
    for step in range(5):
        assert ranks[0][step] == single[4 * step:4 * step + 4][0::2]
        assert ranks[1][step] == single[4 * step:4 * step + 4][1::2]
    assert ranks[0] != ranks[1]


def test_each_domain_epoch_visits_every_window_once():
    windows = two_domain_windows()
    sampler = data.WindowSampler(windows, weights={"a": 1.0}, seed=0)
    n = len(windows["a"])
    drawn = [i for batch in draw(sampler, n, batch_size=1) for _, i in batch]
    assert sorted(drawn) == list(range(n))


def test_mixing_weights():
    windows = two_domain_windows()
    drawn = [d for batch in draw(data.WindowSampler(windows, {"a": 3, "b": 1}, seed=0), 1000, 1) for d, _ in batch]
    assert 0.70 < drawn.count("a") / len(drawn) < 0.80
    with pytest.raises(ValueError, match="without training windows"):
        data.WindowSampler(windows, {"c": 1.0})


def test_evaluation_windows_are_fixed_and_spread_over_domains():
    windows = two_domain_windows()
    picked = data.evaluation_windows(windows, 6)
    assert tuple(picked.shape) == (6, 32)
    assert (picked == data.evaluation_windows(windows, 6)).all()
    first_ids = {int(w[0]) // 100 for w in picked}
    assert first_ids >= {10, 12}  # windows of domain a (doc ids 1000/1101) and of b (1202)


# --- token cache -----------------------------------------------------------------------------------


def test_tokens_are_cached_once_per_tokenizer_and_text(tmp_path):
    docs = [Document("books/alice", "books", "Alice was beginning to get very tired" * 3),
            Document("code/x.py", "code", "def f():\n    return 1\n" * 4)]
    tokenizer = CharTokenizer()
    first = data.tokenize_documents(docs, tokenizer, tmp_path, progress=False)
    assert tokenizer.calls == 2
    assert first[0].ids.dtype == np.uint32 and first[0].ids.tolist() == CharTokenizer().encode(docs[0].text)
    again = data.tokenize_documents(docs, tokenizer, tmp_path, progress=False)
    assert tokenizer.calls == 2, "cached documents were tokenised again"
    assert [d.ids.tolist() for d in again] == [d.ids.tolist() for d in first]
    docs[1].text += "# edited\n"
    data.tokenize_documents(docs, tokenizer, tmp_path, progress=False)
    assert tokenizer.calls == 3  # only the edited document
    other = CharTokenizer(offset=1)  # another vocabulary: another fingerprint, no stale ids
    assert data.tokenize_documents(docs, other, tmp_path, progress=False)[0].ids[0] == first[0].ids[0] + 1
    assert len(list(tmp_path.glob("*/*.npy"))) == 5


# --- user data and bad data --------------------------------------------------------------------------


def test_user_files_with_bad_data_are_logged_and_skipped(tmp_path, caplog):
    folder = tmp_path / "corpus"
    (folder / "sub").mkdir(parents=True)
    (folder / "book.txt").write_text("a long enough book " * 20)
    (folder / "empty.txt").write_bytes(b"")
    (folder / "latin1.txt").write_bytes("caf\xe9 ".encode("latin-1") * 30)
    (folder / "sub" / "docs.jsonl").write_text("\n".join([
        json.dumps({"text": "first json document " * 10}),
        "{not json",
        json.dumps({"title": "no text field"}),
        json.dumps({"text": "short", "domain": "notes"}),
    ]))
    (folder / "image.png").write_bytes(b"\x89PNG")  # not a text suffix: ignored
    with caplog.at_level(logging.INFO, logger="sharedllm.data"):
        docs = data.load_user_documents(folder)
        tokenized = data.tokenize_documents(docs, CharTokenizer(), tmp_path / "cache", min_tokens=16, progress=False)
    assert [d.doc_id for d in docs] == ["book.txt", "latin1.txt", "sub/docs.jsonl:1", "sub/docs.jsonl:4"]
    assert "\ufffd" in docs[1].text  # replacement characters, not a crash
    assert docs[3].domain == "notes"
    assert [d.doc_id for d in tokenized] == ["book.txt", "latin1.txt", "sub/docs.jsonl:1"]
    for expected in ["skipping empty file empty.txt", "latin1.txt is not valid UTF-8",
                     "skipping sub/docs.jsonl line 2", "skipping sub/docs.jsonl line 3",
                     "skipped 1 of 4 documents shorter than one chunk"]:
        assert expected in caplog.text


def test_json_files_are_records_not_text(tmp_path):
    """A .json / .ndjson file (any case) was one plain-text document, its JSON syntax included, and skipped in a folder."""
    record = lambda i: json.dumps({"text": f"document number {i} " * 5})  # noqa: E731
    (tmp_path / "lines.json").write_text(record(1) + "\n" + record(2))
    (tmp_path / "array.JSON").write_text("[" + record(3) + ", " + record(4) + "]")
    (tmp_path / "more.NDJSON").write_text(record(5))
    assert [d.text.split()[2] for d in data.load_user_documents(tmp_path / "lines.json")] == ["1", "2"]
    docs = data.load_user_documents(tmp_path)
    assert sorted(d.doc_id for d in docs) == ["array.JSON:1", "array.JSON:2", "lines.json:1", "lines.json:2",
                                              "more.NDJSON:1"]
    assert not any("{" in d.text for d in docs)


def test_single_file_and_missing_path(tmp_path):
    path = tmp_path / "one.jsonl"
    path.write_text(json.dumps({"text": "x" * 50, "id": "custom"}) + "\n\n")
    assert [d.doc_id for d in data.load_user_documents(path)] == ["custom"]
    with pytest.raises(FileNotFoundError):
        data.load_user_documents(tmp_path / "nope")
    with pytest.raises(TypeError):
        data.load_user_documents(42)


def test_user_split_is_fixed_by_document_id():
    docs = [Document(f"file{i}.txt", "user", "text") for i in range(60)]
    train, validation = data.split_documents(docs)
    assert 1 <= len(validation) < 10 and len(train) + len(validation) == 60
    assert not {d.doc_id for d in train} & {d.doc_id for d in validation}
    shuffled_train, shuffled_validation = data.split_documents(docs[::-1] + [Document("new.txt", "user", "t")])
    assert {d.doc_id for d in validation} <= {d.doc_id for d in shuffled_validation}  # stable when files are added
    assert [len(part) for part in data.split_documents(docs[:2])] == [1, 1]
    assert "document-id hash" in data.split_description(2)
    book = Document("book.txt", "user", "".join(f"line {i} of the book\n" for i in range(1000)))
    (train_part,), (held_out,) = data.split_documents([book])  # one document: was all train or all validation
    assert train_part.text + held_out.text == book.text and held_out.doc_id == "book.txt:tail"
    assert held_out.text.startswith("line ") and 0.04 < len(held_out.text) / len(book.text) < 0.06


def test_a_tail_is_cut_at_a_line_start_only_near_the_mark():
    text = "title\n" + "word " * 400  # its one line break is far before the 95% mark
    (head,), (tail,) = data.split_documents([Document("essay.txt", "user", text)])
    assert head.text + tail.text == text and 0.04 < len(tail.text) / len(text) < 0.06  # was all but "title"


# --- synthetic retrieval samples -------------------------------------------------------------------


def printable_decoder(tokenizer):
    """ids -> text, every token that is not a printable character (the document's 0s, newlines) as "_"."""
    text_of = {tokenizer.encode(chr(c))[0]: chr(c) for c in range(32, 127)}
    return lambda ids: "".join(text_of.get(int(i), "_") for i in ids)


def test_planted_facts_sit_in_the_context_and_only_the_asked_answers_are_scored():
    tokenizer = CharTokenizer()
    decode = printable_decoder(tokenizer)
    context_len = 2000
    for seed in range(5):
        window = np.zeros(3000, dtype=np.uint32)
        planted = data.plant_retrieval_facts(window, context_len, tokenizer, np.random.default_rng(seed))
        again = data.plant_retrieval_facts(window, context_len, tokenizer, np.random.default_rng(seed))
        assert np.array_equal(planted.ids, again.ids) and not window.any()  # seeded, and the input is untouched
        context = decode(planted.ids[:context_len])
        facts = dict(re.findall(r"Note: the code of (.+?) is (\d+)\.", context))
        assert 1 <= len(facts) <= 4 and len(re.findall("Note:", context)) == len(facts)
        tail = decode(planted.ids[context_len:]).strip("_")
        assert not set(decode(planted.ids[context_len:len(planted.ids) - len(tail)])) - {"_"}  # the window's text
        asked = re.findall(r"Question: what is the code of (.+?)\? Answer: the code of \1 is (\d+)\.", tail)
        assert 1 <= len(asked) <= 2 and all(facts[key] == value for key, value in asked)
        scored = planted.labels != -100
        assert np.array_equal(planted.labels[scored], planted.ids[scored].astype(np.int64))
        assert decode(planted.ids[scored]) == "".join(f" {value}." for _, value in asked)
        assert not scored[:planted.query_index + 1].any() and scored[planted.query_index + 1]
        assert decode(planted.ids[planted.query_index - 2:planted.query_index + 1]) == " is"


def test_window_facts_are_other_keys_in_the_window_never_asked():
    tokenizer = CharTokenizer()
    decode = printable_decoder(tokenizer)
    context_len, counts = 2000, set()
    for seed in range(8):
        planted = data.plant_retrieval_facts(np.zeros(3000, dtype=np.uint32), context_len, tokenizer,
                                             np.random.default_rng(seed), max_window_facts=2)
        context = dict(re.findall(r"Note: the code of (.+?) is (\d+)\.", decode(planted.ids[:context_len])))
        window_text = decode(planted.ids[context_len:])
        questions = window_text.index("Question:")
        in_window = dict(re.findall(r"Note: the code of (.+?) is (\d+)\.", window_text[:questions]))
        assert "Note:" not in window_text[questions:] and window_text[:questions].count("Note:") == len(in_window)
        names = lambda keys: {key.split("'")[0] for key in keys}  # noqa: E731
        assert not names(context) & names(in_window)  # other people: a key tells them apart
        asked = re.findall(r"Question: what is the code of (.+?)\? Answer", window_text)
        assert set(asked) <= set(context)  # only context facts are asked
        counts.add(len(in_window))
    assert counts == {0, 1, 2}
    plain = data.plant_retrieval_facts(np.zeros(3000, dtype=np.uint32), context_len, tokenizer, np.random.default_rng(0))
    assert np.array_equal(plain.ids, data.plant_retrieval_facts(np.zeros(3000, dtype=np.uint32), context_len, tokenizer,
                                                                np.random.default_rng(0), max_window_facts=0).ids)


def test_every_wording_plants_its_own_keys_and_asks_in_its_own_words():
    from sharedllm.evaluation import needle

    tokenizer = CharTokenizer()
    decode = printable_decoder(tokenizer)
    assert not set(data.RETRIEVAL_ADJECTIVES + data.RETRIEVAL_NOUNS) & set(needle.ADJECTIVES + needle.NOUNS)
    assert min(len(data.RETRIEVAL_ADJECTIVES), len(data.RETRIEVAL_NOUNS)) >= len(data.RETRIEVAL_NAMES)
    as_pattern = lambda template: re.escape(template.lstrip("\n")).replace(r"\{key\}", "(.+?)").replace(  # noqa: E731
        r"\{value\}", r"(\d+)")
    seen = set()
    for seed in range(16):
        planted = data.plant_retrieval_facts(np.zeros(3000, dtype=np.uint32), 2000, tokenizer,
                                             np.random.default_rng(seed), n_wordings=len(data.RETRIEVAL_WORDINGS))
        context, tail = decode(planted.ids[:2000]), decode(planted.ids[2000:])
        wording = next(w for w in data.RETRIEVAL_WORDINGS if re.search(as_pattern(w.question), tail))
        seen.add(wording)
        facts = dict(re.findall(as_pattern(wording.fact), context))
        assert 1 <= len(facts) <= 4 and all(("'s " in key) == (wording.keys == "owned") for key in facts)
        asked = [match[0] for match in re.findall(as_pattern(wording.question), tail)]
        answers = decode(planted.ids[planted.labels != -100])
        assert asked and answers == "".join(f" {facts[key]}." for key in asked)
    assert seen == set(data.RETRIEVAL_WORDINGS)


def test_planted_facts_that_cannot_fit_fail_clearly():
    with pytest.raises(ValueError, match="does not fit"):
        data.plant_retrieval_facts(np.zeros(300, np.uint32), 40, CharTokenizer(), np.random.default_rng(0))
    with pytest.raises(ValueError, match="questions do not fit"):
        data.plant_retrieval_facts(np.zeros(2100, np.uint32), 2000, CharTokenizer(), np.random.default_rng(0))
