"""The shared command-line vocabulary: knob flags derived from config.KNOBS, one length spelling."""

import argparse
import subprocess
import sys

import pytest

from sharedllm import flags
from sharedllm.config import KNOBS, SharedLLMConfig
from sharedllm.flags import (add_knob_arguments, add_old_knob_argument, format_length, infllm_option, knob_flag,
                             knob_flags, knobs_from_args, parse_length)


@pytest.mark.parametrize("text, tokens", [("8192", 8192), ("8K", 8192), ("128k", 131072), ("1M", 1048576), (512, 512)])
def test_parse_length(text, tokens):
    assert parse_length(text) == tokens


@pytest.mark.parametrize("text", ["8KB", "", "-3", "0", "1.5K", "K"])
def test_parse_length_refuses(text):
    with pytest.raises(argparse.ArgumentTypeError):
        parse_length(text)


@pytest.mark.parametrize("tokens", [1, 1000, 1024, 3072, 8192, 131072, 1048576])
def test_format_length_round_trips(tokens):
    assert parse_length(format_length(tokens)) == tokens
    assert format_length(131072) == "128K"


def test_every_knob_is_a_flag_with_the_configs_type_and_choices():
    parser = argparse.ArgumentParser()
    add_knob_arguments(parser)
    assert knobs_from_args(parser.parse_args([])) == {}  # nothing given: the adapter's or the config's values
    given = parser.parse_args(["--decoder-window", "2K", "--tree-selection", "recent", "--full-logits",
                               "--leaf-tokens-per-node", "64", "--n-injected-layers", "2"])
    knobs = knobs_from_args(given)
    assert knobs == {"decoder_window": 2048, "tree_selection": "recent", "full_logits": True,
                     "leaf_tokens_per_node": 64, "n_injected_layers": 2}
    SharedLLMConfig(**knobs)  # what the flags produce is what the config accepts
    help_text = parser.format_help()
    assert all(knob_flag(name) in help_text for name in KNOBS)
    with pytest.raises(SystemExit):
        parser.parse_args(["--tree-selection", "random"])


@pytest.mark.parametrize("name", [name for name, knob in KNOBS.items() if knob.minimum is not None])
def test_a_knob_flag_below_the_knobs_minimum_is_refused_while_parsing(name, capsys):
    """The table's minimum is refused by the flag itself (before a model library loads), and the minimum passes."""
    parser = argparse.ArgumentParser()
    add_knob_arguments(parser)
    minimum = KNOBS[name].minimum
    assert getattr(parser.parse_args([knob_flag(name), str(minimum)]), name) == minimum
    with pytest.raises(SystemExit):
        parser.parse_args([knob_flag(name), str(minimum - 1)])
    assert f"argument {knob_flag(name)}: " in capsys.readouterr().err


def test_none_switches_an_optional_knob_off():
    parser = argparse.ArgumentParser()
    add_knob_arguments(parser)
    knobs = knobs_from_args(parser.parse_args(["--selected-leaves", "none", "--context-chunks", "None"]))
    assert knobs == {"selected_leaves": None, "context_chunks": None}  # given: overrides an adapter's saved value
    assert knobs_from_args(parser.parse_args(["--selected-leaves", "2"])) == {"selected_leaves": 2}
    for required in (["--tree-depth", "none"], ["--selected-leaves", "two"]):  # only optional knobs take "none"
        with pytest.raises(SystemExit):
            parser.parse_args(required)
    help_text = " ".join(parser.format_help().split())
    assert "default: the tree; 'none' sets it back to that default" in help_text
    assert "follows P" not in help_text  # it said so for every optional knob, e.g. context_chunks (every chunk)


def old_knob_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser()
    add_knob_arguments(parser)
    add_old_knob_argument(parser)
    return parser


def test_the_old_knob_spelling_reads_values_as_the_knob_flags_do():
    """--knob read JSON, so `tree_depth=abc` went through as a string and `decoder_window=2K` was refused; its values
    are now what the knob's flag makes of them (the spellings committed commands use parse as they did)."""
    parse = old_knob_parser().parse_args
    old = ["tree_depth=0", "tree_selection=recent", "tokens_per_node=64", "node_encoding=node", "chunk_size=256",
           "injection=joint", "selected_leaves=null", "context_chunks=none", "decoder_window=2K", "full_logits=true"]
    assert knobs_from_args(parse([arg for text in old for arg in ("--knob", text)])) == {
        "tree_depth": 0, "tree_selection": "recent", "tokens_per_node": 64, "node_encoding": "node", "chunk_size": 256,
        "injection": "joint", "selected_leaves": None, "context_chunks": None, "decoder_window": 2048,
        "full_logits": True}
    assert knobs_from_args(parse(["--knob", "decoder_window=2K", "--knob", "selected_leaves=none"])) == knobs_from_args(
        parse(["--decoder-window", "2K", "--selected-leaves", "none"]))


@pytest.mark.parametrize("text, message", [
    ("tree_depth=abc", "argument --knob: tree_depth: invalid int value: 'abc'"),
    ("tree_depth=1.5", "argument --knob: tree_depth: invalid int value: '1.5'"),
    ("tree_depth=null", "argument --knob: tree_depth: invalid int value: 'null'"),  # not optional: no "none"
    ("decoder_window=2.5K", "argument --knob: decoder_window: not a token length: '2.5K' (use e.g. 8192, 8K or 128K)"),
    ("tree_selection=best",
     "argument --knob: tree_selection: invalid choice: 'best' (choose from 'query', 'attention', 'recent')"),
    ("full_logits=1", "argument --knob: full_logits: wants true or false, got '1'"),
])
def test_the_old_knob_spelling_refuses_what_the_knob_flag_refuses(capsys, text, message):
    with pytest.raises(SystemExit):
        old_knob_parser().parse_args(["--knob", text])
    assert capsys.readouterr().err.strip().splitlines()[-1].endswith(message)


def test_a_knob_given_twice_the_old_way_is_refused_not_first_wins(capsys):
    for second in ("tree_depth=2", "tree_depth=1"):
        argv = ["--knob", "tree_depth=1", "--knob", second]
        with pytest.raises(SystemExit):
            old_knob_parser().parse_args(argv)
        assert capsys.readouterr().err.strip().endswith("argument --knob: gives tree_depth more than once: pass each "
                                                        "knob once")
    assert knobs_from_args(old_knob_parser().parse_args(["--knob", "tree_depth=1", "--knob", "chunk_size=256"])) == {
        "tree_depth": 1, "chunk_size": 256}


def test_config_defaults_come_from_the_table():
    config = SharedLLMConfig()
    assert {name: getattr(config, name) for name in KNOBS} == {name: knob.default for name, knob in KNOBS.items()}
    with pytest.raises(ValueError, match="tree_selection must be one of"):
        SharedLLMConfig(tree_selection="random")


def test_importing_the_config_first_registers_it_without_a_warning():
    code = ("import sharedllm.config; from transformers import AutoConfig; "
            "print(type(AutoConfig.for_model('sharedllm')).__name__)")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert done.stdout.strip() == "SharedLLMConfig"
    assert "could not register" not in done.stderr


@pytest.mark.parametrize("full_logits", [False, True])
def test_knob_flags_parse_back_to_the_same_knobs(full_logits):
    saved = {**SharedLLMConfig(injection="joint", n_injected_layers=6, tree_selection="attention", context_chunks=8).to_dict(),
             "full_logits": full_logits, "model_type": "sharedllm"}  # a config.json holds more than knobs
    parser = argparse.ArgumentParser()
    add_knob_arguments(parser)
    flags = knob_flags(saved, skip=("decoder_window",))
    parsed = knobs_from_args(parser.parse_args(flags))
    assert parsed == {k: saved[k] for k in KNOBS if k in saved and k != "decoder_window"}
    assert saved["selected_leaves"] is None and flags[flags.index("--selected-leaves") + 1] == "none"  # switched off
    assert "--decoder-window" not in flags and parsed["injection"] == "joint" and parsed["full_logits"] is full_logits


def test_infllm_options_are_the_names_infllm_declares_with_whole_numbers(monkeypatch):
    from sharedllm.methods import InfLLM

    assert [infllm_option(f"{name}=8") for name in InfLLM.KNOBS] == [(name, 8) for name in InfLLM.KNOBS]
    for text in ["topk", "topk=", "=8", "topk=1.5", "topk=-1", "topk=eight", "topk=\uff18", "top_k=8", "decoder_window=8"]:
        with pytest.raises(argparse.ArgumentTypeError, match=f"with KNOB one of n_sink, .*, got {text!r}"):
            infllm_option(text)
    monkeypatch.setattr(flags, "INFLLM_OPTIONS", ("topk",))  # the names are read from the table, not retyped
    with pytest.raises(argparse.ArgumentTypeError, match="KNOB one of topk and N"):
        infllm_option("n_sink=8")
