"""ContextCache (a document encoded once, many questions) on tiny random models: cached answers equal from-scratch
answers token for token, through the stock generate(), at batch 1 and > 1; save/load; refusals."""

import io

import pytest
import torch
from conftest import tiny_model
from fakes import char_tokenizer
from test_model import pad_batch, randomise_adapter, wrap

from sharedllm.compat import cache_argument
from sharedllm.context_cache import ContextCache

# C = 16, Ld = 32, D = 2: a 100-token document holds 6 whole chunks and a 4-token tail
DOCUMENT_LENGTH = 100
# question lengths chosen to hit every case of the split rule for L = 100 + L_q:
#   3 -> k = 5: the document's 6th whole chunk and its tail go to the decoder window with the question
#   20 -> k = 6: exactly the cached chunks
#   30 -> k = 7: chunk 6 (tail + question start) is encoded per question
#   45 -> k = 8: two chunks beyond the document, one of them question only
QUESTION_LENGTHS = (3, 20, 30, 45)
GENERATE = dict(max_new_tokens=20, min_new_tokens=20, do_sample=False, pad_token_id=0)


def setup(selection="query", arch="llama", **overrides):
    model = randomise_adapter(wrap(tiny_model(arch), tree_selection=selection, **overrides))
    generator = torch.Generator().manual_seed(0)
    document = torch.randint(3, 128, (DOCUMENT_LENGTH,), generator=generator)
    questions = [torch.randint(3, 128, (n,), generator=generator) for n in QUESTION_LENGTHS]
    return model, document, questions


def scratch_generate(model, document, question, **kwargs):
    out = model.generate(torch.cat([document, question])[None], output_logits=True, return_dict_in_generate=True,
                         **GENERATE, **kwargs)
    return out.sequences[0, DOCUMENT_LENGTH + len(question) :], torch.stack(out.logits)


def assert_cached_answers_equal_scratch(model, document, questions):
    """One ContextCache of the document answers every question token for token (and logit for logit) as a
    from-scratch generate over document + question does; returns the cache."""
    with torch.no_grad():
        context = ContextCache.encode(model, document)
        for question in questions:  # one cache object serves every question
            out = model.generate(question[None], **cache_argument(context), output_logits=True,
                                 return_dict_in_generate=True, **GENERATE)
            expected_tokens, expected_logits = scratch_generate(model, document, question)
            assert torch.equal(out.sequences[0, len(question) :], expected_tokens), f"question of {len(question)}"
            assert torch.allclose(torch.stack(out.logits), expected_logits, atol=1e-4)
    return context


@pytest.mark.parametrize("selection", ["query", "attention", "recent"])
@pytest.mark.parametrize("arch", ["llama", "qwen2", "qwen3"])
def test_cached_generate_equals_from_scratch(selection, arch):
    model, document, questions = setup(selection, arch)
    context = assert_cached_answers_equal_scratch(model, document, questions)
    assert context.n_chunks == DOCUMENT_LENGTH // 16


def test_cached_generate_equals_from_scratch_with_a_separate_query_layer():
    """The union of several query tokens scored at their own layer (query_layer) and the top-k chunk ranking: a
    cached document answers as from scratch (the cache recomputes the selection for each question)."""
    model, document, questions = setup("attention", tree_depth=2, selected_leaves=1, query_tokens=3, query_chunks=1,
                                       context_chunks=2, query_layer=0, selection_score="probability")
    assert model.config.n_query_vectors == 6
    assert_cached_answers_equal_scratch(model, document, questions)


def test_cached_forward_logits_equal_from_scratch():
    """A plain forward (scoring) with the cache: same logits, context lengths, loss and query_position shift."""
    model, document, questions = setup()
    with torch.no_grad():
        context = ContextCache.encode(model, document)
        for question in questions:
            full = torch.cat([document, question])[None]
            labels = full.clone()
            labels[:, : DOCUMENT_LENGTH + 1] = -100
            expected = model(full, labels=labels, query_position=DOCUMENT_LENGTH)
            cached = model(question[None], **cache_argument(context), labels=labels[:, DOCUMENT_LENGTH:], query_position=0)
            assert cached.context_lengths.tolist() == expected.context_lengths.tolist()
            assert torch.allclose(cached.logits, expected.logits, atol=1e-4)
            assert torch.allclose(cached.loss, expected.loss, atol=1e-5)


def test_batched_questions_equal_from_scratch():
    """Several questions of different lengths in one left-padded batch against one document."""
    model, document, questions = setup()
    ids, mask = pad_batch(questions, "left")
    with torch.no_grad():
        context = ContextCache.encode(model, document)
        batched = model.generate(ids, attention_mask=mask, **cache_argument(context), **GENERATE)[:, ids.shape[1] :]
        full_ids, full_mask = pad_batch([torch.cat([document, q]) for q in questions], "left")
        scratch = model.generate(full_ids, attention_mask=full_mask, **GENERATE)[:, full_ids.shape[1] :]
        assert torch.equal(batched, scratch)
        for row, question in zip(batched, questions):
            assert torch.equal(row, scratch_generate(model, document, question)[0])


def test_beam_search_and_sampling_with_the_cache_equal_from_scratch():
    """generate() expands the question rows (beams, several samples); each is still read after the document."""
    model, document, questions = setup()
    with torch.no_grad():
        context = ContextCache.encode(model, document)
        for question in (questions[0], questions[-1]):  # window-only and extra-chunk cases
            full = torch.cat([document, question])[None]
            beams = dict(max_new_tokens=12, min_new_tokens=12, num_beams=3, do_sample=False, pad_token_id=0)
            cached = model.generate(question[None], **cache_argument(context), **beams)[0, len(question) :]
            assert torch.equal(cached, model.generate(full, **beams)[0, full.shape[1] :])
            samples = dict(max_new_tokens=12, do_sample=True, top_k=0, num_return_sequences=2, pad_token_id=0)
            torch.manual_seed(3)
            cached = model.generate(question[None], **cache_argument(context), **samples)[:, len(question) :]
            torch.manual_seed(3)
            assert torch.equal(cached, model.generate(full, **samples)[:, full.shape[1] :])


def test_one_cache_serves_models_that_differ_in_question_time_knobs():
    """The stored pass does not depend on tree_selection, decoder_window, tokens_per_node or compression."""
    query_model, document, questions = setup("query")
    other = wrap(query_model.base, tree_selection="recent", decoder_window=24, tokens_per_node=4,
                 node_compression="mean")
    other.cross_attention.load_state_dict(query_model.cross_attention.state_dict())
    with torch.no_grad():
        context = ContextCache.encode(query_model, document)
        for question in questions[:2]:
            cached = other.generate(question[None], **cache_argument(context), **GENERATE)[0, len(question) :]
            assert torch.equal(cached, scratch_generate(other, document, question)[0])


def test_short_document_and_no_tree_choice():
    """A document shorter than a chunk (nothing cached) and tree_depth 1 (no node vectors) still match."""
    model, _, questions = setup(tree_depth=1, tokens_per_node=4)
    document = torch.randint(3, 128, (10,))
    with torch.no_grad():
        context = ContextCache.encode(model, document)
        assert context.n_chunks == 0 and context.lowered.node_vectors.shape[1] == 0
        question = questions[-1]
        cached = model.generate(question[None], **cache_argument(context), **GENERATE)[0, len(question) :]
        expected = model.generate(torch.cat([document, question])[None], **GENERATE)[0, len(document) + len(question) :]
        assert torch.equal(cached, expected)


def test_saved_and_loaded_cache_answers_the_same(tmp_path):
    model, document, questions = setup()
    with torch.no_grad():
        context = ContextCache.encode(model, document)
        context.save(tmp_path / "book.safetensors")
        loaded = ContextCache.load(tmp_path / "book.safetensors", model)
        assert torch.equal(loaded.document_ids, document)
        for question in questions:
            before = model.generate(question[None], **cache_argument(context), **GENERATE)
            after = model.generate(question[None], **cache_argument(loaded), **GENERATE)
            assert torch.equal(before, after)


def test_other_base_or_knobs_refused(tmp_path):
    model, document, questions = setup()
    with torch.no_grad():
        context = ContextCache.encode(model, document)
    context.save(tmp_path / "book.safetensors")
    other_base = wrap(tiny_model("llama", seed=1))
    with pytest.raises(ValueError, match="fingerprint"):
        ContextCache.load(tmp_path / "book.safetensors", other_base)
    with pytest.raises(ValueError, match="fingerprint"):  # also when handed over in memory
        other_base.generate(questions[0][None], **cache_argument(context), **GENERATE)
    other_chunks = wrap(model.base, chunk_size=8)
    with pytest.raises(ValueError, match=r"chunk_size=16 \(model: 8\)"):
        ContextCache.load(tmp_path / "book.safetensors", other_chunks)
    other_depth = wrap(model.base, tree_depth=1)
    with pytest.raises(ValueError, match=r"tree_depth=2 \(model: 1\)"):
        other_depth(questions[0][None], past_key_values=context)
    by_node = wrap(model.base, node_encoding="node")
    with pytest.raises(ValueError, match="node_encoding='chunk'"):
        ContextCache.encode(by_node, document)
    with pytest.raises(ValueError, match="node_encoding='chunk'"):
        ContextCache.load(tmp_path / "book.safetensors", by_node)
    from safetensors.torch import save_file

    save_file({"x": torch.zeros(1)}, str(tmp_path / "other.safetensors"))
    with pytest.raises(ValueError, match="not a sharedllm context cache"):
        ContextCache.load(tmp_path / "other.safetensors", model)


def test_a_cache_encoded_without_the_joint_lora_is_refused():
    """Under joint injection a LoRA changes the context's keys/values: a cache made without it answers otherwise."""
    from sharedllm.lora import add_upper_lora

    model = wrap(tiny_model("llama"), injection="joint", n_injected_layers=4)
    document = torch.randint(3, 128, (DOCUMENT_LENGTH,), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        context = ContextCache.encode(model, document)
        add_upper_lora(model, rank=2)
        for name, p in model.base.named_parameters():
            if "lora_B" in name:
                p.normal_()
    with pytest.raises(ValueError, match=r"lora=None \(model: '[0-9a-f]{16}'\)"):
        model(document[None, :5], past_key_values=context)


def test_cache_is_stored_in_the_base_dtype():
    model, document, _ = setup()
    model = model.to(torch.bfloat16)
    context = ContextCache.encode(model, document)
    assert {t.dtype for t in [context.stored, context.lowered.node_vectors]} == {torch.bfloat16}
    float_model = model.to(torch.float32)
    with pytest.raises(ValueError, match="dtype='bfloat16' \\(model: 'float32'\\)"):
        float_model(torch.tensor([[5, 6]]), past_key_values=context)


# ---------------------------------------------------------------------------------------------------------------
# `sharedllm ask` on a tiny model and a character-level tokenizer (the command logic; model loading is patched)


def expected_answer(model, tokenizer, document: str, question: str, max_new_tokens: int) -> str:
    """From scratch: the whole chat prompt (document and question in one user message) through generate()."""
    prompt = tokenizer.apply_chat_template([{"role": "user", "content": f"{document}\n\nQuestion: {question}"}],
                                           tokenize=False, add_generation_prompt=True)
    ids = torch.tensor([tokenizer(prompt, add_special_tokens=False)["input_ids"]])
    with torch.no_grad():
        out = model.generate(ids, max_new_tokens=max_new_tokens, do_sample=False, eos_token_id=2, pad_token_id=0)
    return tokenizer.decode(out[0, ids.shape[1] :], skip_special_tokens=True)


@pytest.fixture
def ask_setup(tmp_path, monkeypatch):
    """A tiny model behind `sharedllm ask`, and two text files (one with a byte that is not UTF-8)."""
    from sharedllm import ask

    model, tokenizer = randomise_adapter(wrap(tiny_model("llama"))), char_tokenizer(chat_template=True)
    monkeypatch.setattr(ask, "load_model", lambda adapter, device, base=None, **knobs: (model, tokenizer))
    first, second = tmp_path / "first.txt", tmp_path / "second.txt"
    first.write_text("The cat sat on the mat. " * 6)
    second.write_bytes(b"A second file, a bad byte \xff here, and the end of it.\n")
    document = f"first.txt:\n{first.read_text().strip()}\n\nsecond.txt:\nA second file, a bad byte \ufffd here, and the end of it."
    return model, tokenizer, [str(first), str(second)], document


def run_cli(argv):
    from sharedllm.cli import build_parser

    args = build_parser("ask").parse_args(["ask", *argv])
    return args.run(args)


def test_ask_streams_answers_equal_to_from_scratch(ask_setup, capsys):
    model, tokenizer, files, document = ask_setup
    questions = ["Where did the cat sit?", "What is in the second file?"]
    assert run_cli([*files, "--question", questions[0], "-q", questions[1], "--max-new-tokens", "12"]) == 0
    out, err = capsys.readouterr()
    expected = [expected_answer(model, tokenizer, document, q, 12) for q in questions]
    assert out == "".join(answer + "\n" for answer in expected)
    assert "encoded once in" in err and err.count("tokens in context") == 2 and "answered in" in err


class TerminalInput(io.StringIO):
    """stdin as typed at a terminal (`sharedllm ask` quits at an empty line only there)."""

    def isatty(self):
        return True


def test_ask_interactive_answers_stdin_until_empty_line(ask_setup, capsys, monkeypatch):
    model, tokenizer, files, document = ask_setup
    monkeypatch.setattr("sys.stdin", TerminalInput("Who sat?\nWhat mat?\n\nnever asked\n"))
    assert run_cli([*files, "-q", "First?", "--interactive", "--max-new-tokens", "6"]) == 0
    out, err = capsys.readouterr()
    expected = [expected_answer(model, tokenizer, document, q, 6) for q in ("First?", "Who sat?", "What mat?")]
    assert out == "".join(answer + "\n" for answer in expected)
    assert err.count("encoded once in") == 1  # the files are encoded once for every question


def test_ask_without_questions_reads_stdin(ask_setup, capsys, monkeypatch):
    import io

    model, tokenizer, files, document = ask_setup
    monkeypatch.setattr("sys.stdin", io.StringIO("Who sat?\n"))  # ends at end of input
    assert run_cli([files[0], "--max-new-tokens", "5"]) == 0
    single = "The cat sat on the mat. " * 6
    assert capsys.readouterr().out == expected_answer(model, tokenizer, single.strip(), "Who sat?", 5) + "\n"


def test_ask_missing_or_empty_file_fails_in_one_line(tmp_path, capsys, monkeypatch):
    from sharedllm import ask

    from sharedllm.cli import main

    monkeypatch.setattr(ask, "load_model", lambda *a: pytest.fail("the model is loaded after the files are read"))
    for path, message in [(tmp_path / "nope.txt", f"no such file: {tmp_path / 'nope.txt'}"),
                          (tmp_path / "blank.txt", f"{tmp_path / 'blank.txt'} is empty")]:
        (tmp_path / "blank.txt").write_text(" \n\n")
        with pytest.raises(SystemExit) as stopped:
            main(["ask", str(path), "-q", "x"])
        assert stopped.value.code == 2 and capsys.readouterr().err == f"sharedllm ask: error: {message}\n"


def test_ask_prompt_without_chat_template_and_default_adapter():
    from sharedllm.ask import DEFAULT_ADAPTER, prompt_parts

    assert prompt_parts(char_tokenizer(chat_template=False)) == ("", "\n\nQuestion: ", "\nAnswer:")
    assert prompt_parts(char_tokenizer(chat_template=True)) == ("<u>", "\n\nQuestion: ", "</u><a>")
    assert DEFAULT_ADAPTER.is_absolute() and (DEFAULT_ADAPTER / "config.json").is_file()


def test_a_cache_encoded_under_another_selection_keeps_the_node_vectors():
    """A "recent" model computes no node vectors for itself, but its cache stores them: a "query" model answers
    from it exactly as from scratch (including the chunks encoded per question)."""
    query_model, document, questions = setup("query")
    recent = wrap(query_model.base, tree_selection="recent")
    recent.cross_attention.load_state_dict(query_model.cross_attention.state_dict())
    with torch.no_grad():
        context = ContextCache.encode(recent, document)
        assert context.lowered.node_vectors.shape == (DOCUMENT_LENGTH // 16, 2, 64)
        for question in questions:
            cached = query_model.generate(question[None], **cache_argument(context), **GENERATE)[0, len(question) :]
            assert torch.equal(cached, scratch_generate(query_model, document, question)[0])
