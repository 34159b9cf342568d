"""The shared command-line vocabulary: knob flags derived from config.KNOBS, one length spelling."""

import argparse
import subprocess
import sys

import pytest

from sharedllm.config import KNOBS, SharedLLMConfig
from sharedllm.flags import (add_knob_arguments, format_length, infllm_option, knob_flag, knob_flags, knobs_from_args,
                             parse_length)


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
    monkeypatch.setattr(InfLLM, "KNOBS", ("topk",))  # the names are read from the method, not retyped
    with pytest.raises(argparse.ArgumentTypeError, match="KNOB one of topk and N"):
        infllm_option("n_sink=8")
