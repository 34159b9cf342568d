"""Bad input, each with a clear error that says what to change: forward tensors, knobs, folders and files."""

import json
import re
from pathlib import Path

import pytest
import torch
from conftest import tiny_model
from safetensors.torch import load_file, save_file
from test_model import KNOBS, pad_batch, randomise_adapter, wrap

from sharedllm import SharedLLMForCausalLM

# -- forward ------------------------------------------------------------------------------------------------------

LONG = torch.randint(3, 128, (1, 50), generator=torch.Generator().manual_seed(0))
FORWARD_CASES = {
    "empty": (dict(input_ids=torch.zeros(1, 0, dtype=torch.long)), "non-empty"),
    "1-D": (dict(input_ids=LONG[0]), r"must be \(batch, length\), got shape \(50,\); for one sequence pass ids\[None\]"),
    "float ids": (dict(input_ids=LONG.float()), "must hold integer token ids, got dtype torch.float32"),
    "id >= vocab": (dict(input_ids=LONG.clone().fill_(128)), r"outside the base model's vocabulary \[0, 128\)"),
    "negative id": (dict(input_ids=LONG.clone().fill_(-1)), "outside the base model's vocabulary"),
    "mask shorter than ids": (
        dict(input_ids=LONG, attention_mask=torch.ones(1, 40, dtype=torch.long)),
        r"attention_mask has shape \(1, 40\), input_ids \(1, 50\); they must be equal",
    ),
    "mask with a hole": (
        dict(input_ids=LONG[:, :5], attention_mask=torch.tensor([[1, 0, 1, 1, 1]])), "one contiguous run of real tokens"
    ),
    "all-padding row": (
        dict(input_ids=LONG[:, :5].expand(2, -1), attention_mask=torch.tensor([[1] * 5, [0] * 5])), "all-zero row"
    ),
    "labels of another length": (dict(input_ids=LONG, labels=LONG[:, :45]), r"labels have shape \(1, 45\)"),
    "query_position past the end": (dict(input_ids=LONG[:, :5], query_position=7), "query_position 7 is outside"),
    "query_position before the start": (dict(input_ids=LONG[:, :5], query_position=-6), "query_position -6 is outside"),
    "query_position of another batch": (
        dict(input_ids=LONG[:, :5], query_position=torch.tensor([1, 2])), r"query_position must be an int or a \(batch,\)"
    ),
    "float query_position": (dict(input_ids=LONG[:, :5], query_position=2.5), "query_position must be an int"),
    "output_hidden_states": (dict(input_ids=LONG, output_hidden_states=True), "output_hidden_states=True is not supported"),
    "output_attentions": (dict(input_ids=LONG, output_attentions=True), "output_attentions=True is not supported"),
    "inputs_embeds": (dict(input_ids=LONG, inputs_embeds=torch.zeros(1, 50, 64)), "inputs_embeds is not supported"),
}


@pytest.fixture(scope="module")
def model():
    return wrap(tiny_model("llama"))


@pytest.mark.parametrize("case", list(FORWARD_CASES))
def test_forward_refuses_bad_tensors(model, case):
    kwargs, message = FORWARD_CASES[case]
    with pytest.raises(ValueError, match=message):
        model(**kwargs)


@pytest.mark.parametrize("side", ["left", "right"])
def test_forward_with_labels_does_not_depend_on_padding(side):
    """The default query (last token before the first scored label) and the split are per row, not per batch."""
    model = randomise_adapter(wrap(tiny_model("llama")))
    generator = torch.Generator().manual_seed(1)
    rows = [torch.randint(3, 128, (n,), generator=generator) for n in (100, 61, 30)]
    ids, mask = pad_batch(rows, side)
    labels = torch.where(mask.bool(), ids, torch.full_like(ids, -100))
    with torch.no_grad():
        batched = model(ids, attention_mask=mask, labels=labels)
        for i, row in enumerate(rows):
            single = model(row[None], labels=row[None])
            n = single.logits.shape[1]
            got = batched.logits[i, -n:] if side == "left" else batched.logits[i, :n]
            assert torch.allclose(got, single.logits[0], atol=1e-5), f"row {i}"


# -- knobs and loading arguments ----------------------------------------------------------------------------------

KNOB_CASES = {
    "typo in a knob": (dict(decoder_windw=128), TypeError, r"unknown argument\(s\) \['decoder_windw'\]; SharedLLM knobs are"),
    "knob as a string": (dict(decoder_window="512"), ValueError, "decoder_window must be of type int, got '512'"),
    "flag as an int": (dict(full_logits=1), ValueError, "full_logits must be of type bool"),
    "bool as a size": (dict(chunk_size=True), ValueError, "chunk_size must be of type int"),
    "bad enum": (dict(tree_selection="random"), ValueError, "tree_selection must be one of"),
    "dtype that is no dtype": (dict(dtype="float33"), ValueError, "'float33' is not a torch dtype"),
    "sharded device_map": (dict(device_map="auto"), ValueError, "runs the base model on one device"),
    "dtype of a loaded base": (dict(dtype=torch.bfloat16), ValueError, "is loaded in torch.float32, not torch.bfloat16"),
    "attention of a loaded base": (dict(attn_implementation="eager"), ValueError, "uses attn_implementation='sdpa'"),
    "device_map for a loaded base": (dict(device_map="cpu"), ValueError, "device_map applies when the base is loaded by path"),
    "torch_dtype against dtype": (dict(dtype=torch.float16, torch_dtype=torch.bfloat16), ValueError, "disagree"),
}


@pytest.mark.parametrize("case", list(KNOB_CASES))
def test_from_base_refuses_bad_arguments(case):
    overrides, error, message = KNOB_CASES[case]
    with pytest.raises(error, match=message):
        SharedLLMForCausalLM.from_base(tiny_model("llama"), **{**KNOBS, **overrides})


def test_from_base_refuses_a_non_llama_model(tmp_path):
    from transformers import GPT2Config, GPT2LMHeadModel

    gpt2 = GPT2LMHeadModel(GPT2Config(n_layer=2, n_embd=32, n_head=2, vocab_size=128))
    with pytest.raises(TypeError, match="GPT2LMHeadModel is not a Llama-family causal LM"):
        SharedLLMForCausalLM.from_base(gpt2, **KNOBS)
    gpt2.save_pretrained(tmp_path / "gpt2")
    with pytest.raises(TypeError, match="is not a Llama-family causal LM"):
        SharedLLMForCausalLM.from_base(str(tmp_path / "gpt2"), **KNOBS)


@pytest.mark.parametrize("arch, message", [
    ("Olmoe", "query/key norms over the whole projection, not per head"),
    ("Granite", "scaled embedding_multiplier, residual_multiplier, logits_scaling"),
    ("Phi3", "fused query/key/value projections"),
    ("StableLm", "another norm (LayerNorm"),
])
def test_from_base_refuses_a_layer_that_computes_more_than_llamas(arch, message):
    """A layer that passes the attribute check but computes more than SharedLLM recomputes (it would read the context
    with wrong logits, silently, or fail deep inside): refused up front, naming the difference."""
    import transformers

    config = getattr(transformers, f"{arch}Config")(
        vocab_size=128, hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, pad_token_id=0, bos_token_id=1, eos_token_id=2,
        **(dict(embedding_multiplier=12.0, residual_multiplier=0.22, logits_scaling=8.0) if arch == "Granite" else {}),
        **(dict(num_experts=4, num_experts_per_tok=2) if arch == "Olmoe" else {}))
    base = getattr(transformers, f"{arch}ForCausalLM")(config)
    with pytest.raises(TypeError, match=f"differs from the Llama layer SharedLLM recomputes: .*{re.escape(message)}"):
        SharedLLMForCausalLM.from_base(base, **KNOBS)


@pytest.mark.parametrize("where", ["missing", "not a model", "relative, hub-like"])
def test_from_base_refuses_a_missing_path(tmp_path, where, monkeypatch):
    path = str(tmp_path / "nowhere")
    message = "no model folder at"
    if where == "not a model":
        (tmp_path / "nowhere").mkdir()
        message = "has no config.json"
    elif where == "relative, hub-like":  # "runs/model" may be a hub id: tried there (offline here), then refused
        monkeypatch.chdir(tmp_path)
        monkeypatch.setenv("HF_HUB_OFFLINE", "1")
        path, message = "runs/model", "'runs/model' is neither a local model folder nor a hub model"
    with pytest.raises(FileNotFoundError, match=message):
        SharedLLMForCausalLM.from_base(path, **KNOBS)


# -- adapter folders ----------------------------------------------------------------------------------------------


def edit_config(folder, **changes):
    config = json.loads((folder / "config.json").read_text())
    config.update(changes)
    for key in [k for k, v in changes.items() if v is None]:
        config.pop(key)
    (folder / "config.json").write_text(json.dumps(config))


def truncate(folder):
    data = (folder / "model.safetensors").read_bytes()
    (folder / "model.safetensors").write_bytes(data[: len(data) // 2])


def flip_bytes(folder):
    path = folder / "model.safetensors"
    data = bytearray(path.read_bytes())
    data[-64:] = torch.randint(0, 256, (64,), dtype=torch.uint8, generator=torch.Generator().manual_seed(0)).tolist()
    path.write_bytes(bytes(data))


def plant_nan(folder):
    weights = load_file(folder / "model.safetensors")
    next(iter(weights.values())).view(-1)[0] = float("nan")
    save_file(weights, folder / "model.safetensors", metadata={"format": "pt"})


FOLDER_CASES = {
    "missing folder": (lambda f: None, dict(path="missing"), FileNotFoundError, "no SharedLLM adapter folder at"),
    "no config": (lambda f: (f / "config.json").unlink(), {}, FileNotFoundError, "has no config.json"),
    "config not JSON": (lambda f: (f / "config.json").write_text("{oops"), {}, ValueError, "is not valid JSON"),
    "no weights": (lambda f: (f / "model.safetensors").unlink(), {}, FileNotFoundError, "has no model.safetensors"),
    "truncated weights": (truncate, {}, ValueError, "does not match the sha256 recorded"),
    "truncated, no digest": (
        lambda f: (truncate(f), edit_config(f, adapter_sha256=None)), {}, ValueError, "is not a readable safetensors file"
    ),
    "corrupted bytes": (flip_bytes, {}, ValueError, "does not match the sha256 recorded"),
    "NaN weights, no digest": (
        lambda f: (plant_nan(f), edit_config(f, adapter_sha256=None)), {}, ValueError, r"non-finite values \(NaN or inf\)"
    ),
    "knob as a string": (lambda f: edit_config(f, decoder_window="512"), {}, ValueError, "config.json: decoder_window must be of type int"),
    "bad knob value": (lambda f: edit_config(f, tree_depth=-1), {}, ValueError, "config.json: tree_depth must be >= 0"),
    "typo in an override": (lambda f: None, dict(decoder_windw=64), TypeError, r"unknown argument\(s\) \['decoder_windw'\]"),
    "bad override": (lambda f: None, dict(chunk_size=18), ValueError, "divisible by 2\\*\\*tree_depth"),
    "another base": (lambda f: None, dict(base="other"), ValueError, "weight fingerprint"),
    "a base model folder": (lambda f: None, dict(path="base"), ValueError, "holds a 'llama' model, not a SharedLLM adapter"),
    "hub options": (lambda f: None, dict(revision="main"), ValueError, "hub options"),
}


@pytest.mark.parametrize("case", list(FOLDER_CASES))
def test_from_pretrained_refuses_bad_folders(tmp_path, case):
    damage, kwargs, error, message = FOLDER_CASES[case]
    tiny_model("llama").save_pretrained(tmp_path / "base")
    randomise_adapter(SharedLLMForCausalLM.from_base(str(tmp_path / "base"), **KNOBS)).save_pretrained(tmp_path / "adapter")
    damage(tmp_path / "adapter")
    folder = tmp_path / {"missing": "nowhere", "base": "base"}.get(kwargs.pop("path", None), "adapter")
    if kwargs.get("base") == "other":
        kwargs["base"] = tiny_model("llama", seed=5)
    with pytest.raises(error, match=message):
        SharedLLMForCausalLM.from_pretrained(folder, **kwargs)


def test_a_lora_is_checked_against_its_recorded_digest_and_a_stale_one_is_not_put_back(tmp_path):
    from sharedllm.loading import file_sha256
    from sharedllm.lora import LORA_DIR, LORA_WEIGHTS, add_upper_lora

    tiny_model("llama").save_pretrained(tmp_path / "base")
    model = SharedLLMForCausalLM.from_base(str(tmp_path / "base"), **{**KNOBS, "injection": "joint"})
    add_upper_lora(model, rank=2)
    model.save_pretrained(tmp_path / "adapter")
    lora_file, config_file = tmp_path / "adapter" / LORA_DIR / LORA_WEIGHTS, tmp_path / "adapter" / "config.json"
    assert json.loads(config_file.read_text())["lora_sha256"] == file_sha256(lora_file)
    SharedLLMForCausalLM.from_pretrained(tmp_path / "adapter")  # intact: loads
    data = bytearray(lora_file.read_bytes())
    data[-8:] = bytes(255 - b for b in data[-8:])
    lora_file.write_bytes(bytes(data))
    with pytest.raises(ValueError, match="does not match the sha256 recorded"):
        SharedLLMForCausalLM.from_pretrained(tmp_path / "adapter")
    # a model without a LoRA saved over it: the earlier LoRA must not come back with it
    SharedLLMForCausalLM.from_base(str(tmp_path / "base"), **KNOBS).save_pretrained(tmp_path / "adapter")
    assert not (tmp_path / "adapter" / LORA_DIR).exists() and json.loads(config_file.read_text())["lora_sha256"] is None


SHIPPED = sorted((Path(__file__).resolve().parents[1] / "adapters").iterdir())


@pytest.mark.parametrize("adapter", SHIPPED, ids=lambda path: path.name)
def test_a_shipped_adapters_recorded_digests_are_those_of_its_files(adapter):
    """A weights file replaced without its config.json (a repackaged adapter half committed) fails here, not at load."""
    from sharedllm.loading import file_sha256
    from sharedllm.lora import LORA_DIR, LORA_WEIGHTS

    config = json.loads((adapter / "config.json").read_text())
    files = {"adapter_sha256": adapter / "model.safetensors", "lora_sha256": adapter / LORA_DIR / LORA_WEIGHTS}
    recorded = {key: digest for key, digest in config.items() if key in files and digest}
    assert recorded or not any(path.exists() for path in files.values())  # weights of an adapter record their digest
    assert {key: file_sha256(files[key]) for key in recorded} == recorded


def test_intact_adapter_loads_and_its_digest_is_recorded(tmp_path):
    tiny_model("llama").save_pretrained(tmp_path / "base")
    model = randomise_adapter(SharedLLMForCausalLM.from_base(str(tmp_path / "base"), **KNOBS))
    model.save_pretrained(tmp_path / "adapter")
    assert len(json.loads((tmp_path / "adapter" / "config.json").read_text())["adapter_sha256"]) == 64
    ids = torch.randint(3, 128, (1, 80))
    with torch.no_grad():
        assert torch.equal(SharedLLMForCausalLM.from_pretrained(tmp_path / "adapter")(ids).logits, model(ids).logits)
