"""`sharedllm ask` at its edges: Ctrl-C during an answer, questions piped in, binary files, folders that are not
adapters. The tiny model and the char tokenizer of test_context_cache's `ask_setup` stand in for a real one."""

import io
import json

import pytest
from fakes import PROSE
from test_context_cache import TerminalInput, ask_setup, expected_answer, run_cli  # noqa: F401 (a fixture)

from sharedllm.cli import main


def error_line(capsys, argv) -> str:
    with pytest.raises(SystemExit) as stopped:
        main(argv)
    assert stopped.value.code == 2
    return capsys.readouterr().err.strip()


def test_ctrl_c_stops_one_answer_and_keeps_the_document(ask_setup, capsys, monkeypatch):
    """Encoding a long file takes minutes: Ctrl-C while answering goes back to the prompt, not out of the session."""
    model, tokenizer, files, document = ask_setup
    generate, calls = model.generate, []

    def interrupted_once(*args, **kwargs):
        calls.append(1)
        if len(calls) == 1:
            raise KeyboardInterrupt
        return generate(*args, **kwargs)

    monkeypatch.setattr(model, "generate", interrupted_once)
    monkeypatch.setattr("sys.stdin", TerminalInput("Who sat?\nWhat mat?\n"))
    try:
        assert run_cli([*files, "--max-new-tokens", "6"]) == 0
    except KeyboardInterrupt:  # let the rest of the suite run
        pytest.fail("Ctrl-C during an answer ended the session")
    out, err = capsys.readouterr()
    assert out == "\n" + expected_answer(model, tokenizer, document, "What mat?", 6) + "\n"
    assert "[interrupted]" in err and err.count("encoded once in") == 1


def test_ctrl_c_at_the_prompt_quits(ask_setup, capsys, monkeypatch):
    class CtrlCAtPrompt(TerminalInput):
        def readline(self, *args):
            raise KeyboardInterrupt

    files = ask_setup[2]
    monkeypatch.setattr("sys.stdin", CtrlCAtPrompt())
    with pytest.raises(SystemExit) as stopped:
        main(["ask", *files])
    assert stopped.value.code == 130 and "sharedllm ask: interrupted" in capsys.readouterr().err


def test_piped_questions_skip_blank_lines_and_end_at_end_of_input(ask_setup, capsys, monkeypatch):
    model, tokenizer, files, document = ask_setup
    monkeypatch.setattr("sys.stdin", io.StringIO("Who sat?\n\n  \nWhat mat?\n\n"))
    assert run_cli([*files, "--max-new-tokens", "6"]) == 0
    expected = [expected_answer(model, tokenizer, document, q, 6) for q in ("Who sat?", "What mat?")]
    assert capsys.readouterr().out == "".join(answer + "\n" for answer in expected)


def test_help_says_how_piped_questions_are_read():
    from sharedllm.cli import build_parser

    help_text = " ".join(build_parser("ask")._subparsers._group_actions[0].choices["ask"].format_help().split())
    assert "blank lines are skipped and the questions end at end of input" in help_text
    assert "binary files such as PDFs are refused" in help_text


@pytest.mark.parametrize("content, message", [
    (b"%PDF-1.7\n" + b"stream\x00\x01\x02x\x9c\xff" * 50, "is not a text file (it holds NUL bytes"),
    ("Un caf\u00e9 \u00e0 l'\u00e9t\u00e9. ".encode("latin-1") * 40,  # 4 accents in 17 bytes
     "is not UTF-8 text (160 of its 680 bytes are not UTF-8)"),
    ("Hi".encode("utf-16"), "is not a text file (it holds NUL bytes"),
], ids=["pdf", "latin-1", "utf-16"])
def test_binary_or_other_encoding_files_are_refused_before_loading(tmp_path, capsys, monkeypatch, content, message):
    from sharedllm import ask

    monkeypatch.setattr(ask, "load_model", lambda *a, **k: pytest.fail("the model is loaded after the files are read"))
    path = tmp_path / "doc.txt"
    path.write_bytes(content)
    line = error_line(capsys, ["ask", str(path), "-q", "x"])
    assert line.startswith(f"sharedllm ask: error: {path} {message}") and "\n" not in line


def test_a_few_bad_bytes_are_still_replaced(tmp_path):
    """Under 1% of the bytes (or fewer than 10) that are not UTF-8 are replaced, as the help says."""
    from sharedllm.ask import read_files

    path = tmp_path / "doc.txt"
    path.write_bytes(PROSE[:3000].encode() + b"\xff" * 20)  # 20 of 3020 bytes
    assert read_files([path]).endswith("\ufffd" * 20)


@pytest.mark.parametrize("config, message", [
    ({"model_type": "llama", "hidden_size": 64}, "holds a 'llama' model, not a SharedLLM adapter"),  # a base model
    ("{not json", "config.json is not valid JSON"),
    ({"model_type": "sharedllm"}, "records no base model; pass --base MODEL"),
], ids=["base model folder", "damaged config", "no base recorded"])
def test_a_folder_that_is_not_a_usable_adapter_is_one_line(tmp_path, capsys, monkeypatch, config, message):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    (tmp_path / "book.txt").write_text(PROSE)
    folder = tmp_path / "adapter"
    folder.mkdir()
    (folder / "config.json").write_text(config if isinstance(config, str) else json.dumps(config))
    line = error_line(capsys, ["ask", str(tmp_path / "book.txt"), "-q", "Who?", "--adapter", str(folder)])
    assert line.startswith("sharedllm ask: error: ") and message in line


def test_an_adapter_without_its_weights_is_one_line(tmp_path, capsys, monkeypatch):
    from conftest import tiny_model
    from fakes import char_tokenizer

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    (tmp_path / "book.txt").write_text(PROSE)
    tiny_model().save_pretrained(tmp_path / "base")
    char_tokenizer().save_pretrained(tmp_path / "base")
    (tmp_path / "adapter").mkdir()
    (tmp_path / "adapter" / "config.json").write_text(json.dumps({"model_type": "sharedllm",
                                                                  "base_model": str(tmp_path / "base")}))
    argv = ["ask", str(tmp_path / "book.txt"), "-q", "Who?", "--adapter", str(tmp_path / "adapter")]
    line = error_line(capsys, argv).splitlines()[-1]  # after the progress bar of loading the base
    assert line.startswith("sharedllm ask: error: ") and "has no model.safetensors" in line


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_dtype_loads_the_base_and_adapter_in_it(tmp_path, monkeypatch, dtype):
    """`ask --dtype bfloat16` halves the memory of the weights and of the context cache, which takes the base's
    dtype; the adapter's saved weights load into it."""
    import torch
    from conftest import tiny_model
    from fakes import char_tokenizer

    from sharedllm import ask
    from sharedllm.modeling import SharedLLMForCausalLM

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    tiny_model().save_pretrained(tmp_path / "base")
    char_tokenizer().save_pretrained(tmp_path / "base")
    saved = SharedLLMForCausalLM.from_base(str(tmp_path / "base"), n_injected_layers=1, chunk_size=16,
                                           decoder_window=16, tree_depth=1, tokens_per_node=4)
    saved.save_pretrained(tmp_path / "adapter")
    model, _ = ask.load_model(tmp_path / "adapter", "cpu", dtype=dtype)
    assert {p.dtype for p in model.parameters()} == {getattr(torch, dtype)}


def test_the_dtype_flag_reaches_the_loader(ask_setup, monkeypatch, capsys):
    from sharedllm import ask

    model, tokenizer, files, _ = ask_setup
    asked = {}
    monkeypatch.setattr(ask, "load_model", lambda adapter, device, base=None, **kw: asked.update(kw) or (model, tokenizer))
    assert run_cli([*files, "-q", "Where?", "--max-new-tokens", "2", "--dtype", "bfloat16"]) == 0
    assert asked["dtype"] == "bfloat16"
    with pytest.raises(SystemExit):  # float16 on a CPU base: not offered
        run_cli([*files, "-q", "Where?", "--dtype", "float16"])
