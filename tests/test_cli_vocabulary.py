"""One command-line vocabulary: every command that builds or loads a SharedLLM model lists every config.KNOBS knob
under the same flag, the same way, and old spellings still work for one release, with a warning. The parsers are
built in-process, as `sharedllm.cli` builds them (no subprocess: no torch import per command)."""

import re

import pytest
from fakes import FakeMethod, fake_stack  # noqa: F401 (fixture)

from sharedllm.cli import build_parser
from sharedllm.config import KNOBS
from sharedllm.evaluation.cli import TASKS
from sharedllm.flags import knob_flag, knobs_from_args

KNOB_COMMANDS = [["train"], ["ask"], *(["eval", task] for task in TASKS)]


def help_text(argv, capsys) -> str:
    with pytest.raises(SystemExit) as exit_info:
        build_parser(argv[0]).parse_args([*argv, "--help"])
    assert exit_info.value.code == 0
    return capsys.readouterr().out


@pytest.mark.parametrize("argv", KNOB_COMMANDS, ids=" ".join)
def test_every_knob_is_listed_under_its_one_flag(argv, capsys):
    text = help_text(argv, capsys)
    listed = set(re.findall(r"^  (--[a-z-]+)", text, flags=re.MULTILINE))  # the options' lines, not the usage
    missing = [knob_flag(name) for name in KNOBS if knob_flag(name) not in listed]
    assert not missing, f"sharedllm {' '.join(argv)} --help lacks {missing}"
    assert "  --base BASE " in text


@pytest.mark.parametrize("argv", KNOB_COMMANDS, ids=" ".join)
def test_knob_flags_parse_to_the_same_values_everywhere(argv):
    given = ["--decoder-window", "2K", "--tree-selection", "recent", "--leaf-tokens-per-node", "8", "--full-logits"]
    positional = ["notes.txt"] if argv == ["ask"] else []
    required = ["--output", "run"] if argv == ["train"] else []
    args = build_parser(argv[0]).parse_args([*argv, *positional, *required, *given])
    assert (args.decoder_window, args.tree_selection, args.leaf_tokens_per_node, args.full_logits) == (
        2048, "recent", 8, True)
    untouched = build_parser(argv[0]).parse_args([*argv, *positional, *required])
    assert all(getattr(untouched, name) is None for name in KNOBS)  # not given: the adapter's or the config's


def test_old_eval_spellings_still_work_and_warn(capsys):
    args = build_parser("eval").parse_args(["eval", "ppl", "--method", "full", "window"])
    assert args.methods == ["full", "window"]
    assert capsys.readouterr().err.strip() == (
        "warning: --method is deprecated and will be removed in the next release: use --methods")
    args = build_parser("eval").parse_args(["eval", "ppl", "--methods", "full"])
    assert args.methods == ["full"] and capsys.readouterr().err == ""


def test_eval_passes_knob_flags_to_sharedllm_and_infllm_options_to_infllm_alone(fake_stack, monkeypatch, capsys):  # noqa: F811
    import sharedllm.methods
    from sharedllm.evaluation import session

    built = {}
    monkeypatch.setattr(sharedllm.methods, "load_method", lambda name, base, tok, shared=None, **options: built.setdefault(
        name, sharedllm.methods.METHOD_CLASSES[name].settings(shared, **options)))  # what Method.build passes

    def methods(*argv):
        built.clear()
        args = build_parser("eval").parse_args(["eval", "ppl", "--base", "fake", *argv])
        list(session.Session(args).methods())
        return dict(built)

    assert methods("--methods", "window", "infllm", "--decoder-window", "2K", "--infllm", "topk=8") == {
        "window": {"decoder_window": 2048}, "infllm": {"decoder_window": 2048, "topk": 8}}
    # streaming's constructor has an n_sink and a block_size too: InfLLM's options are not its
    assert methods("--methods", "streaming", "infllm", "--infllm", "n_sink=8", "block_size=64") == {
        "streaming": {"decoder_window": 1024}, "infllm": {"decoder_window": 1024, "n_sink": 8, "block_size": 64}}
    assert methods("--methods", "sharedllm", "--adapter", "none", "--tree-selection", "recent", "--chunk-size", "256") == {
        "sharedllm": {"decoder_window": 1024, "tree_selection": "recent", "chunk_size": 256}}  # no adapter: untrained
    # with an adapter, --decoder-window is the knob: it overrides the adapter's, as --knob decoder_window=N did
    assert methods("--methods", "sharedllm", "--adapter", "my-adapter", "--decoder-window", "768") == {
        "sharedllm": {"adapter": "my-adapter", "decoder_window": 768}}
    # "none" switches an adapter's saved optional knob off: the method is handed None, not left to the adapter
    assert methods("--methods", "sharedllm", "--adapter", "my-adapter", "--selected-leaves", "none") == {
        "sharedllm": {"adapter": "my-adapter", "decoder_window": 1024, "selected_leaves": None}}


@pytest.mark.parametrize("command", [["eval", "ppl"], ["bench"]], ids=" ".join)
def test_infllm_options_are_one_flag_parsed_the_same_in_eval_and_bench(command, capsys):
    parse = build_parser(command[0]).parse_args
    assert parse([*command]).infllm == {}
    assert parse([*command, "--infllm", "topk=8", "n_sink=16", "--infllm", "topk=2"]).infllm == {"topk": 2, "n_sink": 16}
    assert "--infllm KNOB=VALUE [KNOB=VALUE ...]" in help_text(command, capsys)


def test_the_old_knob_spelling_fills_the_knob_flag_which_wins_and_is_hidden(capsys):
    parse = build_parser("eval").parse_args
    args = parse(["eval", "ppl", "--knob", "tree_depth=0", "--knob", "selected_leaves=null"])
    assert knobs_from_args(args) == {"tree_depth": 0, "selected_leaves": None}  # null: the optional knob switched off
    for argv in (["--tree-selection", "query", "--knob", "tree_selection=recent"],
                 ["--knob", "tree_selection=recent", "--tree-selection", "query"]):
        assert parse(["eval", "ppl", *argv]).tree_selection == "query"  # as before: the flag wins over --knob
    assert "use --selected-leaves none" in capsys.readouterr().err
    assert "--knob" not in help_text(["eval", "ppl"], capsys)


def test_eval_knob_given_the_old_way_warns_and_still_reaches_the_method(fake_stack, monkeypatch, capsys):  # noqa: F811
    import sharedllm.methods

    built = {}

    def load_method(name, base, tokenizer, shared=None, **options):
        built[name] = knobs = sharedllm.methods.METHOD_CLASSES[name].settings(shared, **options)
        return FakeMethod(name, tokenizer, **knobs)

    monkeypatch.setattr(sharedllm.methods, "load_method", load_method)
    monkeypatch.chdir(fake_stack)
    argv = ["eval", "ppl", "--base", "fake", "--methods", "sharedllm", "--adapter", "none", "--knob",
            "tree_selection=recent", "--data", "book.txt", "--lengths", "512", "--max-windows", "1", "--output", "out"]
    args = build_parser("eval").parse_args(argv)
    args.run(args)
    assert built["sharedllm"]["tree_selection"] == "recent"
    assert ("warning: --knob tree_selection=recent is deprecated and will be removed in the next release: use "
            "--tree-selection recent") in capsys.readouterr().err


def test_ask_hands_its_knobs_and_base_to_the_loader_and_refuses_what_it_cannot_honour(tmp_path, monkeypatch):
    from sharedllm import ask

    (tmp_path / "notes.txt").write_text("Some notes.")
    seen = {}

    def loader(adapter, device, base=None, **knobs):
        seen.update(base=base, **knobs)
        raise ask.AskError("stop here")

    monkeypatch.setattr(ask, "load_model", loader)
    args = build_parser("ask").parse_args(["ask", str(tmp_path / "notes.txt"), "--base", "my-base",
                                           "--decoder-window", "4K", "--tree-selection", "recent"])
    with pytest.raises(ask.AskError, match="stop here"):
        args.run(args)
    assert seen == {"base": "my-base", "dtype": "float32", "decoder_window": 4096, "tree_selection": "recent"}
    for flag in (["--node-encoding", "node"], ["--full-logits"]):
        seen.clear()
        args = build_parser("ask").parse_args(["ask", str(tmp_path / "notes.txt"), *flag])
        with pytest.raises(ask.AskError, match=f"^{' '.join(flag)} does not apply to ask"):
            args.run(args)
        assert not seen  # refused before anything loads
