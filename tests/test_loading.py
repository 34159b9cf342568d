"""Loading on a fresh machine: own models without the embedded default, optional tokenizers, the portable name."""

import json

import pytest
import torch
from conftest import tiny_model
from tiny_tokenizer import tiny_tokenizer
from transformers import AutoModelForCausalLM, AutoTokenizer

from sharedllm import SharedLLMForCausalLM
from sharedllm.loading import DEFAULT_BASE, portable_base_name

KNOBS = dict(n_injected_layers=2, chunk_size=16, decoder_window=32, tree_depth=2, tokens_per_node=2)


@pytest.fixture
def empty_home(tmp_path, monkeypatch):
    """A machine where the embedded default model was never fetched."""
    home = tmp_path / "home"
    monkeypatch.setenv("SHAREDLLM_HOME", str(home))
    return home


@pytest.fixture
def fake_default(empty_home):
    """A tiny model standing in for the fetched embedded default (its folder and completion stamp)."""
    from sharedllm.assets import MODEL_GGUF_SHA256, MODEL_NAME, MODEL_PACKAGE, STAMP_FILE

    folder = empty_home / "models" / MODEL_NAME
    tiny_model("llama").save_pretrained(folder)
    tiny_tokenizer().save_pretrained(folder)
    (folder / STAMP_FILE).write_text(json.dumps({"package": MODEL_PACKAGE, "gguf_sha256": MODEL_GGUF_SHA256}))
    return folder


def test_from_base_local_path_without_the_default_model(tmp_path, empty_home):
    tiny_model("llama").save_pretrained(tmp_path / "mine")
    assert portable_base_name(str(tmp_path / "mine")) == str(tmp_path / "mine")
    model = SharedLLMForCausalLM.from_base(str(tmp_path / "mine"), **KNOBS)
    assert model.config.base_model == str(tmp_path / "mine")
    assert not (empty_home / "models").exists()  # nothing was fetched



def test_a_relative_base_folder_is_recorded_absolute(tmp_path, empty_home, monkeypatch):
    """Was recorded as given: "mine" read from another working directory is a hub id."""
    tiny_model("llama").save_pretrained(tmp_path / "mine")
    monkeypatch.chdir(tmp_path)
    model = SharedLLMForCausalLM.from_base("mine", **KNOBS)
    model.save_pretrained(tmp_path / "adapter")
    (tmp_path / "elsewhere").mkdir()
    monkeypatch.chdir(tmp_path / "elsewhere")
    loaded = SharedLLMForCausalLM.from_pretrained(tmp_path / "adapter")
    assert loaded.config.base_model == str((tmp_path / "mine").resolve())
    assert portable_base_name("owner/model") == "owner/model"  # a hub id as given


def test_base_without_tokenizer_files_loads_and_saves_no_tokenizer(tmp_path, empty_home):
    tiny_model("llama").save_pretrained(tmp_path / "bare")  # no tokenizer files
    model = SharedLLMForCausalLM.from_base(str(tmp_path / "bare"), **KNOBS)
    assert model.tokenizer is None
    model.save_pretrained(tmp_path / "adapter")
    assert sorted(p.name for p in (tmp_path / "adapter").iterdir()) == ["config.json", "model.safetensors"]
    assert SharedLLMForCausalLM.from_pretrained(tmp_path / "adapter").tokenizer is None


def test_adapter_folder_carries_the_tokenizer(tmp_path, empty_home):
    base = tmp_path / "base"
    tiny_model("llama").save_pretrained(base)
    tiny_tokenizer().save_pretrained(base)
    model = SharedLLMForCausalLM.from_base(str(base), **KNOBS)
    model.save_pretrained(tmp_path / "adapter")
    tokenizer = AutoTokenizer.from_pretrained(tmp_path / "adapter")  # the usual way, from the adapter alone
    assert tokenizer("w5 w9").input_ids == [5, 9]
    assert SharedLLMForCausalLM.from_pretrained(tmp_path / "adapter").tokenizer("w7").input_ids == [7]
    # a loaded base with no folder behind it: the tokenizer is given explicitly
    wrapped = SharedLLMForCausalLM.from_base(tiny_model("llama"), tokenizer=tiny_tokenizer(), **KNOBS)
    wrapped.save_pretrained(tmp_path / "given")
    assert AutoTokenizer.from_pretrained(tmp_path / "given")("w8").input_ids == [8]


def test_default_model_is_recorded_and_loaded_by_its_portable_name(tmp_path, fake_default):
    model = SharedLLMForCausalLM.from_base(str(fake_default), **KNOBS)
    assert model.config.base_model == DEFAULT_BASE
    assert SharedLLMForCausalLM.from_base(DEFAULT_BASE, **KNOBS).config.base_fingerprint == model.config.base_fingerprint
    model.save_pretrained(tmp_path / "adapter")
    assert json.loads((tmp_path / "adapter" / "config.json").read_text())["base_model"] == DEFAULT_BASE
    reloaded = SharedLLMForCausalLM.from_pretrained(tmp_path / "adapter")
    assert reloaded.config.base_fingerprint == model.config.base_fingerprint
    assert SharedLLMForCausalLM.from_pretrained(tmp_path / "adapter", base=DEFAULT_BASE) is not None
    assert AutoTokenizer.from_pretrained(tmp_path / "adapter")("w5").input_ids == [5]


@pytest.mark.parametrize("spelling", ["dtype", "torch_dtype"])
def test_dtype_is_honoured(tmp_path, empty_home, spelling):
    tiny_model("llama").save_pretrained(tmp_path / "base")
    model = SharedLLMForCausalLM.from_base(str(tmp_path / "base"), **KNOBS)
    model.save_pretrained(tmp_path / "adapter")
    loaded = SharedLLMForCausalLM.from_pretrained(tmp_path / "adapter", **{spelling: torch.bfloat16})
    assert loaded.base.dtype == torch.bfloat16
    assert all(p.dtype == torch.bfloat16 for p in loaded.adapter_parameters())
    auto = AutoModelForCausalLM.from_pretrained(tmp_path / "adapter", **{spelling: torch.bfloat16})
    assert auto.base.dtype == torch.bfloat16
    assert SharedLLMForCausalLM.from_base(str(tmp_path / "base"), **{spelling: "bfloat16"}, **KNOBS).dtype == torch.bfloat16


def test_attn_implementation_and_knob_overrides_are_honoured(tmp_path, empty_home):
    tiny_model("llama").save_pretrained(tmp_path / "base")
    SharedLLMForCausalLM.from_base(str(tmp_path / "base"), **KNOBS).save_pretrained(tmp_path / "adapter")
    eager = SharedLLMForCausalLM.from_pretrained(tmp_path / "adapter", attn_implementation="eager")
    assert eager.base.config._attn_implementation == "eager"
    assert eager.cross_attention[0].attn_implementation == "eager"
    longer = AutoModelForCausalLM.from_pretrained(tmp_path / "adapter", decoder_window=48, device_map="cpu")
    assert longer.config.decoder_window == 48
    auto = AutoModelForCausalLM.from_pretrained(tmp_path / "adapter", attn_implementation="eager")
    assert auto.base.config._attn_implementation == "eager"
