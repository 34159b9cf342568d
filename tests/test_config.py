"""SharedLLMConfig: knobs refused at construction, and the config's round trip with its base's text config."""

from pathlib import Path

import pytest
from conftest import tiny_model
from test_model import wrap

from sharedllm import SharedLLMConfig, SharedLLMForCausalLM
from sharedllm.knob_rules import read_knobs
from sharedllm.knobs import KNOBS
from sharedllm.loading import load_adapter_config

SELECTION_KNOBS = dict(n_injected_layers=2, chunk_size=32, decoder_window=48)  # two tree levels: 8-token leaves


def wrap_selection(**knobs):
    return SharedLLMForCausalLM.from_base(tiny_model("llama"), **SELECTION_KNOBS, **knobs)


@pytest.mark.parametrize(
    "overrides,message",
    [
        (dict(chunk_size=16, tree_depth=2, tokens_per_node=8), "fewer than tokens_per_node"),
        (dict(n_injected_layers=9), "exceeds the base model's depth"),
        (dict(chunk_size=20, tree_depth=3), "divisible by 2\\*\\*tree_depth"),
        (dict(tree_selection="random"), "tree_selection must be one of"),
        (dict(node_compression="mean", chunk_size=24, tree_depth=1, tokens_per_node=5), "divisible"),
    ],
)
def test_bad_knobs_fail_at_config_time(overrides, message):
    with pytest.raises(ValueError, match=message):
        wrap(tiny_model("llama"), **overrides)


def test_config_roundtrip_keeps_text_config(tmp_path):
    model = wrap(tiny_model("mistral"))
    model.config.save_pretrained(tmp_path)
    config = SharedLLMConfig.from_pretrained(tmp_path)
    assert config.text_config.model_type == "mistral"
    assert config.chunk_size == 16 and config.base_fingerprint == model.config.base_fingerprint


def test_saved_config_names_its_base_without_a_machine_path(tmp_path):
    model = wrap(tiny_model("llama"))
    model.config.text_config._name_or_path = "/home/someone/.cache/sharedllm/models/Base"  # as a loaded base has
    model.config.base_model = "sharedllm-default:Base"
    model.config.save_pretrained(tmp_path)
    assert "/home/someone" not in (tmp_path / "config.json").read_text()
    assert SharedLLMConfig.from_pretrained(tmp_path).text_config._name_or_path == "sharedllm-default:Base"
    assert model.config.text_config._name_or_path.startswith("/home/someone")  # the live base config is untouched


def test_attention_selection_needs_chunk_encoding():
    with pytest.raises(ValueError, match="needs node_encoding='chunk'"):
        wrap_selection(tree_depth=2, tokens_per_node=4, tree_selection="attention", node_encoding="node")


@pytest.mark.parametrize("name", [name for name, knob in KNOBS.items() if knob.minimum is not None])
def test_every_knob_below_its_minimum_is_refused_by_name(name):
    """The table's `minimum` is the one lower bound of each count knob: one below it is refused with the knob's
    name, whatever the other knobs say (a negative tree depth used to reach 2**depth arithmetic first)."""
    below = KNOBS[name].minimum - 1
    with pytest.raises(ValueError, match=f"^{name} must be >= {below + 1}, got {below}$"):
        SharedLLMConfig(**{name: below})


def test_leaf_budget_must_fit_the_leaf():
    with pytest.raises(ValueError, match="leaf_tokens_per_node must be at most the leaf length chunk_size / 2\\*\\*tree_depth = 8"):
        wrap_selection(tree_depth=2, tokens_per_node=4, leaf_tokens_per_node=9)


def test_reading_a_folder_that_is_no_adapter_says_so(tmp_path):
    """eval and bench check their flags against an adapter's config with `read_knobs`: a base model's folder given as
    --adapter was read as a config with no base recorded (a traceback later)."""
    tiny_model("llama").save_pretrained(tmp_path / "base")
    with pytest.raises(ValueError, match="holds a 'llama' model, not a SharedLLM adapter"):
        read_knobs(str(tmp_path / "base"), {})
    (tmp_path / "damaged").mkdir()
    (tmp_path / "damaged" / "config.json").write_text("{not json")
    with pytest.raises(ValueError, match="is not valid JSON"):
        read_knobs(str(tmp_path / "damaged"), {})


SHIPPED = sorted((Path(__file__).resolve().parents[1] / "adapters").iterdir())


@pytest.mark.parametrize("adapter", SHIPPED, ids=lambda path: path.name)
def test_knobs_read_without_a_model_library_are_the_configs(adapter):
    """`read_knobs` (the checks of eval and bench, before torch loads) reads what `from_pretrained` builds with:
    every knob of every shipped adapter, and with overrides, the same values and the same refusals."""
    config, values = load_adapter_config(adapter), read_knobs(str(adapter), {})
    assert {name: getattr(values, name) for name in KNOBS} == {name: getattr(config, name) for name in KNOBS}
    assert values.chunks_read == config.chunks_read and values.text_config.num_hidden_layers == 30
    overrides = {"decoder_window": 2048, "context_chunks": None, "query_chunks": 0, "query_layer": None}
    if config.chunk_spacing:  # chunks read side by side need context_chunks set: every chunk, stacked, instead
        overrides["chunk_spacing"] = 0
    if config.injection == "joint":
        read = read_knobs(str(adapter), overrides)
        assert {n: getattr(read, n) for n in KNOBS} == {n: getattr(config.with_overrides(dict(overrides)), n) for n in KNOBS}
    for bad in ({"tree_selection": "recent"} if config.tree_selection == "attention" else {"tree_depth": 20},
                {"n_injected_layers": 31}, {"chunk_size": 500}):
        errors = []
        for read in (lambda: read_knobs(str(adapter), bad), lambda: load_adapter_config(adapter).with_overrides(bad)):
            with pytest.raises(ValueError) as caught:
                read()
            errors.append(str(caught.value))
        assert errors[0] == errors[1]
