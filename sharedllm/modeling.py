"""SharedLLM on transformers 5: one base causal LM used as both the lower (context) and upper (decoder) model.

This module is the upper model, `SharedLLMForCausalLM`, which holds the lower one (`context_encoder.py`); loading
the base and the adapter's files is `loading.py`. Forward path for a batch of rows (see docs/method.md for the why):
  1. split (`rows.py`): a row of L real tokens gives k = ceil(max(0, L - Ld) / C) whole context chunks from its
     start; the remaining L - k*C tokens (between Ld - C + 1 and Ld when there is context) are its decoder window.
  2. query: the base model's layer 0 (then the final norm) at the query token, computed over the decoder window
     that the prefix ending at the query token would have (a pure function of the tokens and the query index).
  3. lower model (`ContextEncoder`): the embedding and bottom M layers of the base model encode each chunk (chunk
     index c as a rotary offset), the context tree picks the nodes, and each node becomes P key/value positions
     per layer.
  4. upper model: the whole base model reads the decoder window (positions 0..); in layers 0..M-1 a
     cross-attention between self-attention and MLP reads the layer's compressed context.
With `full_logits`, every input position gets logits: each C-token span is read by its own such pass over the
prefix that ends with it (`SharedLLMForCausalLM._all_logits`).
Generation keeps the context key/values and a stock DynamicCache for the decoder window; when the window would
exceed Ld, its oldest C tokens roll into a new context chunk (encoded once) and the window's cache is rebuilt.
"""

import contextlib
import copy
import os
import shutil
from dataclasses import dataclass, replace
from pathlib import Path

import torch
import torch.nn.functional as F
from safetensors.torch import save_file
from torch import nn
from transformers import AutoConfig, AutoModelForCausalLM, DynamicCache, GenerationMixin, PreTrainedModel
from transformers.cache_utils import Cache
from transformers.modeling_outputs import CausalLMOutputWithPast

from sharedllm.compat import CACHE_ARGUMENT, cache_argument
from sharedllm.config import ADAPTER_SHAPE_KNOBS, KNOBS, SharedLLMConfig
from sharedllm.context_cache import ContextCache
from sharedllm.context_encoder import (
    ContextEncoder,
    EncodedContext,
    LowerChunksMemo,
    append_chunks,
    layer_mask,
    self_attention_masks,
    spaced_positions,
    top_chunks,
)
from sharedllm.injection import (
    ContextCrossAttention,
    InjectedContext,
    joint_self_attention,
    masked_attention_implementation,
    window_attention_mask,
)
from sharedllm.knobs import check_knob_names
from sharedllm.loading import (
    ADAPTER_WEIGHTS,
    AUTO_PLUMBING,
    HUB_OPTIONS,
    base_fingerprint,
    base_loading_options,
    check_loaded_base,
    check_supported,
    file_sha256,
    load_adapter_config,
    load_causal_lm,
    load_tokenizer,
    portable_base_name,
    read_adapter_weights,
)
from sharedllm.lora import (
    LORA_DIR, LORA_WEIGHTS, has_upper_lora, load_upper_lora, merge_upper_lora, save_upper_lora, unmerge_upper_lora,
)
from sharedllm.rows import context_chunk_counts, gather_tokens, left_align, mask_positions, real_token_spans



# ----------------------------------------------------------------------------------------------------------------
# Outputs and the generation cache
# ----------------------------------------------------------------------------------------------------------------


@dataclass
class SharedLLMOutput(CausalLMOutputWithPast):
    """`logits` (B, W, V) cover the decoder-window tokens only, padded on the input's padding side (on the left
    with a cache: generate, use_cache=True, a ContextCache, where new tokens are appended on the right).
    `context_lengths` (B,) = tokens of each row that went into context (k * C): logits[b, i] of an unpadded row
    belong to input token context_lengths[b] + i. With full_logits, logits are (B, L, V) in the input's layout
    and context_lengths are 0."""

    context_lengths: torch.LongTensor | None = None


class SharedLLMCache(DynamicCache):
    """A stock DynamicCache for the decoder window's self-attention, plus what SharedLLM keeps across steps: the
    compressed context, the tree query vectors, the decoder window's tokens (to rebuild after a roll-over), and for
    joint injection the tokens before the window (the next chunk is read after them) and the attention sink."""

    def __init__(self, config, context: EncodedContext, query: torch.Tensor, decoder_ids, decoder_mask, previous,
                 sink=None):
        super().__init__(config=config)
        self.sink = sink  # joint injection: the attention sink's per-layer (keys, values), batch-independent
        self.context = context
        self.query = query  # (B, hidden), or (B, Q, hidden) for attention selection (`_query_vectors`)
        self.decoder_ids = decoder_ids  # (B, W) left-padded
        self.decoder_mask = decoder_mask  # (B, W)
        self.previous = previous  # (B, S) the chunk_overlap tokens before the window (joint injection)
        # input positions (padding included) consumed so far: `get_seq_length` is the window's width, which is what
        # the window's attention masks need, so generate cannot tell from it how much of a sequence this cache holds
        self.tokens_seen = 0

    @property
    def context(self) -> EncodedContext:
        return self._context

    @context.setter
    def context(self, context: EncodedContext) -> None:
        self._context = context
        # what the window's layers read of it (`SharedLLMForCausalLM._injected_context`: the top-k chunks gathered
        # in every layer), built once per context instead of at every decode step; a new context clears it
        self.injected = None

    def crop(self, max_length: int):
        """Assisted / speculative / prompt-lookup decoding crop rejected tokens from the cache; a SharedLLM window
        cannot be cut back (chunks may have rolled into context), so those modes are refused here, clearly."""
        raise NotImplementedError("SharedLLM's cache cannot be cropped: assisted, speculative and prompt-lookup "
                                  "decoding (assistant_model=, prompt_lookup_num_tokens=) are not supported")

    def reorder_cache(self, beam_idx: torch.LongTensor):
        super().reorder_cache(beam_idx)
        self.context = self.context.select(beam_idx)
        self.query, self.decoder_ids, self.decoder_mask, self.previous = (
            self.query[beam_idx], self.decoder_ids[beam_idx], self.decoder_mask[beam_idx], self.previous[beam_idx]
        )


# ----------------------------------------------------------------------------------------------------------------
# The model
# ----------------------------------------------------------------------------------------------------------------


def _check_cache(cache) -> None:
    """None, an empty cache (generate's, for a cached prefill) or one of SharedLLM's own: any other cache would be
    read as empty and the tokens it stands for silently dropped."""
    if cache is None or isinstance(cache, (SharedLLMCache, ContextCache)):
        return
    if not isinstance(cache, Cache):
        raise TypeError(f"past_key_values must be a transformers Cache or None, got {type(cache).__name__} (legacy "
                        "tuples of key/value tensors are not supported)")
    if cache.get_seq_length() > 0:
        raise ValueError(f"past_key_values is a {type(cache).__name__} already holding {cache.get_seq_length()} tokens: "
                         "SharedLLM continues only the SharedLLMCache it returned, or reads a document from a "
                         "ContextCache; pass the whole text without a cache instead")


def _seen(out: "SharedLLMOutput", width: int) -> "SharedLLMOutput":
    """Record on the cache a prefill returns how many input positions it has consumed."""
    if (cache := getattr(out, CACHE_ARGUMENT)) is not None:
        cache.tokens_seen = width
    return out


def _new_tokens(input_ids, attention_mask, cache) -> torch.LongTensor:
    """The tokens of a decode call that `cache` has not seen. With a mask as wide as the whole sequence (the
    transformers convention while decoding), they are the last (mask width - tokens seen): a call handing over more
    of the sequence than that reads only its unseen tail, one whose mask disagrees with the cache is refused.
    (generate itself hands over only unseen tokens: `prepare_inputs_for_generation`.)"""
    if attention_mask is None or attention_mask.shape[1] == input_ids.shape[1]:
        return input_ids  # only the new tokens, with or without their own mask
    n_new = attention_mask.shape[1] - cache.tokens_seen
    if not 1 <= n_new <= input_ids.shape[1]:
        raise ValueError(f"this SharedLLMCache has read {cache.tokens_seen} positions, and the attention_mask covers "
                         f"{attention_mask.shape[1]}: pass the whole sequence so far (with its mask), or only the new "
                         "tokens")
    return input_ids[:, -n_new:]


def _check_positions(position_ids, attention_mask) -> None:
    """position_ids are accepted only where they say what SharedLLM computes from the mask (each row's real tokens
    numbered from 0): packed sequences (positions restarting inside a row) would be read as one document."""
    if position_ids is None:
        return
    expected, real = mask_positions(attention_mask), attention_mask.bool()
    try:
        given = position_ids.to(expected.device).expand_as(expected)
    except RuntimeError:
        raise ValueError(f"position_ids have shape {tuple(position_ids.shape)}, the input {tuple(expected.shape)}") from None
    if not torch.equal(given[real], expected[real]):
        raise ValueError("position_ids other than each row's real tokens numbered from 0 are not supported: SharedLLM "
                         "positions tokens from the attention_mask; pass packed sequences as separate rows")


def last_window_states(hidden, count, n) -> torch.Tensor:
    """(B, W, hidden) left-padded window states, (B,) real tokens per row -> (B, n, hidden) the states of each row's
    last n tokens; where a row holds fewer, its last token's state stands in for the missing ones."""
    hidden = hidden[:, -n:]  # (B, <= n, hidden)
    in_window = torch.arange(hidden.shape[1], device=hidden.device)[None, :] >= hidden.shape[1] - count[:, None]
    hidden = torch.where(in_window[..., None], hidden, hidden[:, -1:])  # a row's padding: its last token's state
    return torch.cat([hidden[:, -1:].expand(-1, n - hidden.shape[1], -1), hidden], dim=1)


class SharedLLMForCausalLM(PreTrainedModel, GenerationMixin):
    config_class = SharedLLMConfig
    base_model_prefix = "base"
    supports_gradient_checkpointing = True
    # the base model runs its own attention; the cross-attention uses eager or sdpa (see injection.py)
    _supports_sdpa = True
    _supports_flash_attn = True
    _supports_flex_attn = True

    def __init__(self, config: SharedLLMConfig, base: PreTrainedModel):
        check_supported(base)
        implementation = base.config._attn_implementation
        config._attn_implementation = implementation  # the base's, whatever config was loaded (see config.py)
        super().__init__(config)
        self.base = base
        self.tokenizer = None  # optional: set by from_base / from_pretrained, written by save_pretrained
        implementation = masked_attention_implementation(implementation)
        injected = self.decoder.layers[: config.n_injected_layers] if config.injection == "cross" else []
        # joint injection reads the context with the layers' own attention: it adds no module
        self.cross_attention = nn.ModuleList([ContextCrossAttention(layer, implementation) for layer in injected])
        # the lower model: the same base modules read over the context chunks (it owns no parameters)
        self.context_encoder = ContextEncoder(self.config, base, self.cross_attention)
        self.post_init()
        if getattr(base, "generation_config", None) is not None:  # the base's stop ids and sampling defaults:
            self.generation_config = copy.deepcopy(base.generation_config)  # not a config of our text_config alone
        self._built_with = self._knob_values()  # what `_check_changed_knobs` compares model.config against
        self._chunk_memo: LowerChunksMemo | None = None  # set inside `reusing_chunk_encodings`

    @contextlib.contextmanager
    def reusing_chunk_encodings(self):
        """Inside it, each prefill reuses the lower pass of every chunk the prefill before it encoded with the same
        tokens and tokens before it (and chunk index, with cross injection): all that pass depends on
        (`LowerChunksMemo`). For many prompts that share most of their text, such as consecutive passkey trials (the
        same filler), niah trials (the same haystack before their needles; `scripts/chunk_reuse.py` counts what they
        share) or, with joint injection, overlapping held-out windows of one document whose starts differ by a
        multiple of C. The price is memory: the chunks of the last prefill stay kept (M layers x C keys and values
        per chunk, about 6 GB for a 128K prompt of SmolLM2-135M in fp32); a new prompt keeps only those it reads, so
        the memo never holds two prompts' chunks."""
        self._chunk_memo = LowerChunksMemo(self.context_encoder)
        try:
            yield
        finally:
            self._chunk_memo = None

    def _knob_values(self) -> dict:
        return {name: getattr(self.config, name) for name in KNOBS}

    def _check_changed_knobs(self) -> None:
        """Knobs set on `model.config` after construction (the README sets full_logits so) are checked before they
        are read, as at construction; those that lay out the weights (a cross adapter's M, the injection) cannot
        change on a built model. Otherwise a bad value failed deep inside a forward (an IndexError for a larger M)."""
        values = self._knob_values()
        if values == self._built_with:
            return
        for knob in ADAPTER_SHAPE_KNOBS[self._built_with["injection"]]:
            if values[knob] != self._built_with[knob]:
                raise ValueError(f"model.config.{knob} was changed from {self._built_with[knob]!r} to {values[knob]!r} "
                                 f"after the model was built, but it lays out the weights; build the model with "
                                 f"{knob}={values[knob]!r} (from_base / from_pretrained) instead")
        self.config.validate_knobs()
        self._built_with = values

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
        check_knob_names(knobs, "from_base")
        options = base_loading_options(dtype, torch_dtype, attn_implementation, device_map)
        if isinstance(base, (str, os.PathLike)):
            base_path = str(base)
            base, found_tokenizer = load_causal_lm(base_path, tokenizer_required=False, **options)
            tokenizer = tokenizer if tokenizer is not None else found_tokenizer
        else:
            check_loaded_base(base, options)
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
        self.config.adapter_sha256 = file_sha256(directory / ADAPTER_WEIGHTS)
        self.config.lora_sha256 = None
        if hasattr(self.base, "peft_config"):  # an upper-layer LoRA was trained with the adapter: keep it
            save_upper_lora(self, directory / LORA_DIR)
            self.config.lora_sha256 = file_sha256(directory / LORA_DIR / LORA_WEIGHTS)
        elif (directory / LORA_DIR).exists():  # an earlier save's LoRA, which from_pretrained would put back
            shutil.rmtree(directory / LORA_DIR)
        self.config.save_pretrained(directory)
        if self.tokenizer is not None:
            self.tokenizer.save_pretrained(directory)

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
        merge_lora: bool = True,
        **kwargs,
    ):
        """Load base + adapter from a folder written by `save_pretrained`.

        `base` overrides where the base model comes from (a loaded model or a path); by default it is the recorded
        `config.base_model`. The base's weight fingerprint must match the one the adapter was trained on, and the
        adapter file its recorded sha256. An `upper_lora/` folder (trained with `--lora-rank`) is injected into the
        base in place and, unless merge_lora=False, merged into its weights for speed (`sharedllm.lora`; `train()`
        unmerges it). Keyword knobs (`config.KNOBS`, e.g. decoder_window=2048 or full_logits=True) override the
        saved config; dtype (alias torch_dtype), attn_implementation and device_map load the base.
        """
        directory = Path(pretrained_model_name_or_path).expanduser()
        if model_args:
            raise TypeError(f"from_pretrained takes no positional arguments after the folder, got {model_args!r}")
        for name in AUTO_PLUMBING:  # added by AutoModelForCausalLM.from_pretrained on its way here
            kwargs.pop(name, None)
        hub = {name: kwargs.pop(name) for name in HUB_OPTIONS if name in kwargs}
        # AutoModelForCausalLM passes every hub option on, at its unset value (transformers >= 5.25: subfolder "")
        given = sorted(name for name, value in hub.items() if value not in (None, False, ""))
        if given:
            raise ValueError(f"SharedLLM adapters load from a local folder; hub options {given} do not apply")
        check_knob_names(kwargs, "from_pretrained")
        if not isinstance(config, SharedLLMConfig):
            config = load_adapter_config(directory)
        config = config.with_overrides(kwargs)
        # AutoModelForCausalLM.from_pretrained hands attn_implementation over inside the config it loaded
        attn_implementation = attn_implementation or getattr(config, "_attn_implementation_internal", None)
        options = base_loading_options(dtype, torch_dtype, attn_implementation, device_map)
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
            check_loaded_base(base, options)
        found = base_fingerprint(base)
        if config.base_fingerprint and found != config.base_fingerprint:
            # The fingerprint samples weights rounded to bf16, which an fp32 or bf16 load of one checkpoint agree
            # on; an fp16 load of an fp32 checkpoint rounds them elsewhere first.
            fp16 = base.dtype == torch.float16
            raise ValueError(
                f"the adapter in {directory} was trained on a base model with weight fingerprint "
                f"{config.base_fingerprint} ({config.base_model}), but the given base has fingerprint {found}; "
                + ("it is loaded in float16, whose rounding of a float32 checkpoint changes the fingerprint: load it "
                   "in float32 or bfloat16" if fp16 else "load it onto the base it was trained on")
            )
        model = cls(config, base)
        state = read_adapter_weights(weights_file, config.adapter_sha256, str(base.device))
        try:
            missing, unexpected = model.cross_attention.load_state_dict(state, strict=False)
        except RuntimeError as error:  # shapes of another base model
            raise ValueError(f"adapter weights in {directory} do not fit this base model: {error}") from None
        if missing or unexpected:
            raise ValueError(f"adapter weights in {directory} do not match: missing {missing}, unexpected {unexpected}")
        model.cross_attention.to(dtype=base.dtype)
        if has_upper_lora(directory):  # injected into the base in place, as it was trained
            load_upper_lora(model, directory / LORA_DIR, config.lora_sha256)
            if merge_lora:
                merge_upper_lora(model)
        if tokenizer is None:  # the one saved with the adapter, else the base's (read when the base was loaded)
            tokenizer = load_tokenizer(directory, required=False)
            tokenizer = base_tokenizer if tokenizer is None else tokenizer
        model.tokenizer = tokenizer
        return model.eval()

    def train(self, mode: bool = True):
        if mode and hasattr(self.base, "peft_config"):  # a LoRA merged by from_pretrained would get no gradient
            unmerge_upper_lora(self)
        return super().train(mode)

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

    def _injected_context(self, context: EncodedContext | None, sink=None) -> InjectedContext | None:
        """What the upper model's injected layers read: keys/values, padding mask, and the query rotation. sink:
        joint injection's per-layer (keys, values) from `ContextEncoder.sink`, read before the chunks' in every
        layer."""
        if context is None or int(context.n_chunks.max()) == 0:
            return None
        # queries sit at chunk-level position n_b (after the row's chunks 0..n_b-1), in prefill and every decode step
        query_position = context.n_chunks[:, None]
        if self.config.context_chunks is not None:  # a global top-k: only the best-scoring chunks are read
            cfg = self.config
            context = top_chunks(context, cfg.context_chunks, cfg.recent_chunks, cfg.query_tokens, cfg.query_chunks,
                                 cfg.n_query_vectors)
        keys, values = context.layers()
        joint = self.config.injection == "joint"
        if joint and self.config.chunk_spacing:
            keys, sink = spaced_positions(keys, sink, context.n_chunks, context.per_chunk, self.config.chunk_spacing,
                                          self.decoder.rotary_emb)
        reference = keys[0]  # dtype and device of everything below
        slots = torch.arange(reference.shape[2], device=reference.device)[None, :]
        valid = slots < (context.n_chunks * context.per_chunk)[:, None]
        mask = None
        bias = joint and self.config.context_bias == "log_chunks"
        if not valid.all() or bias:
            mask = torch.zeros(valid.shape, dtype=reference.dtype, device=reference.device)
            if bias:  # the row's chunks share positions: give them one chunk's share of the softmax, not n times it
                mask -= context.n_chunks.clamp(min=1).to(mask.dtype).log()[:, None]
            mask = mask.masked_fill(~valid, torch.finfo(reference.dtype).min)[:, None, None, :]
        cos, sin = self.decoder.rotary_emb(reference, query_position)
        has_context = (context.n_chunks > 0).to(reference.dtype)[:, None, None]
        sink_keys, sink_values = sink if joint else (None, None)
        return InjectedContext(keys, values, mask, cos, sin, has_context, sink_keys=sink_keys, sink_values=sink_values)

    def _cached_injected_context(self, cache: SharedLLMCache) -> InjectedContext | None:
        if cache.injected is None:  # cleared whenever cache.context is replaced (a roll-over, a beam reorder)
            cache.injected = self._injected_context(cache.context, cache.sink)
        return cache.injected

    # -- query vectors --------------------------------------------------------------------------------------------

    @torch.no_grad()  # the selection is discrete: no gradient flows through the query
    def _query_vectors(self, input_ids, start, query_index) -> torch.Tensor:
        """The tree query of each row: for "query" selection (B, hidden) the layer-0 state (then final norm) at the
        query token (the paper); for "attention" selection (B, V, hidden) the hidden states entering the scoring
        layer (`config.scoring_layer`, default the last injected one; the layers below it run without injection) at
        the query token and the Q - 1 tokens before it (`config.query_tokens`; where the window holds fewer, the
        query token's state stands in for the missing ones), from which that layer's queries are computed. With a
        separate `config.query_layer` the same tokens' states entering that layer come first (V = 2Q,
        config.n_query_vectors).

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
        masks = self_attention_masks(cfg.text_config, hidden, mask, None, positions)
        attention = cfg.tree_selection == "attention"
        stops = {cfg.scoring_layer, cfg.query_scoring_layer} if attention else {1}  # the layers whose input is read
        entering = {}  # layer index -> (B, W, hidden) the states entering it
        position_embeddings = self.decoder.rotary_emb(hidden, positions)
        for index, layer in enumerate(self.decoder.layers[: max(stops)]):
            if index in stops:
                entering[index] = hidden
            hidden = layer(
                hidden,
                attention_mask=layer_mask(cfg.text_config, masks, index),
                position_embeddings=position_embeddings,
                position_ids=positions,
            )
        entering[max(stops)] = hidden
        if not attention:
            return self.decoder.norm(hidden[:, -1])
        queries = last_window_states(entering[cfg.scoring_layer], count, cfg.query_tokens)  # (B, Q, hidden)
        if cfg.n_query_vectors > cfg.query_tokens:  # the Q states entering query_layer first: (B, 2Q, hidden)
            queries = torch.cat([last_window_states(entering[cfg.query_scoring_layer], count, cfg.query_tokens),
                                 queries], dim=1)
        return queries

    # -- upper model ----------------------------------------------------------------------------------------------

    def _decoder_forward(self, ids, mask, positions, injected: InjectedContext | None, cache=None) -> torch.Tensor:
        """The whole base model over the decoder window, cross-attending in layers 0..M-1. Returns normed hidden."""
        text_config = self.config.text_config
        hidden = self.decoder.embed_tokens(ids)
        position_embeddings = self.decoder.rotary_emb(hidden, positions)
        masks = self_attention_masks(text_config, hidden, mask, cache, positions)
        if injected is not None and self.config.injection == "joint":
            injected = replace(injected, window_mask=window_attention_mask(mask, ids.shape[1], hidden.dtype))
        for index, layer in enumerate(self.decoder.layers):
            layer_kwargs = dict(
                attention_mask=layer_mask(text_config, masks, index),
                position_embeddings=position_embeddings,
                position_ids=positions,
                **cache_argument(cache),
                use_cache=cache is not None,
            )
            if injected is not None and (index < self.config.n_injected_layers or self.config.injection == "joint"):
                hidden = self._injected_layer(index, layer, hidden, injected, layer_kwargs)  # joint: sink above M
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
                    layer_kwargs["position_embeddings"], injected.window_mask, layer_kwargs[CACHE_ARGUMENT],
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
        past_key_values (or `cache`, its name from transformers 5.24): during `generate`, the cache; an empty one
            starts a cached prefill. A `sharedllm.context_cache.ContextCache` (a document encoded once) is read as a
            prefix of every row: the rows are the questions, answered as if each were appended to the document.
        logits_to_keep: if > 0, only the last that many positions get logits (generation needs 1).
        full_logits: logits for every input position, (B, L, V) in the input's layout, as harnesses expect
            (default: `config.full_logits`). Position p's logits then depend on tokens 0..p only; see `_all_logits`.
        """
        if "cache" in kwargs:  # transformers >= 5.24 names it `cache` (generate passes it so)
            past_key_values = kwargs.pop("cache")
        self._check_changed_knobs()
        _check_cache(past_key_values)
        decoding = isinstance(past_key_values, SharedLLMCache)
        # while decoding, generate's attention_mask covers the whole sequence and input_ids only the new tokens
        self._check_inputs(input_ids, None if decoding else attention_mask, labels, kwargs)
        if decoding:
            return self._decode_step(_new_tokens(input_ids, attention_mask, past_key_values), past_key_values,
                                     logits_to_keep)
        width = input_ids.shape[1]  # the tokens a cache returned by this call has seen (before a document is prepended)
        if isinstance(past_key_values, ContextCache):
            if full_logits:
                raise ValueError("full_logits=True does not apply with a ContextCache: its forward reads each question "
                                 "as one decoder window after the document; score the document and question together "
                                 "without the cache for every position's logits")
            input_ids, attention_mask, labels, query_position = past_key_values.prepend_document(
                self, input_ids, attention_mask, labels, query_position
            )
            lower = lambda ids, index, before: past_key_values.lower_chunks(self, ids, index, before)  # noqa: E731
            out = self._full_forward(input_ids, attention_mask, labels, query_position, True, logits_to_keep, lower)
            return _seen(out, width)
        if attention_mask is None:
            attention_mask = torch.ones_like(input_ids)
        _check_positions(kwargs.pop("position_ids", None), attention_mask)
        full_logits = self.config.full_logits if full_logits is None else full_logits
        if use_cache and past_key_values is None and full_logits:
            raise ValueError("use_cache=True does not combine with full_logits: a cache continues one decoder window "
                             "(pass full_logits=False to prefill a cache, or use_cache=False to score every position)")
        # an empty cache from generate(), or use_cache=True in a forward of one's own: a cached prefill, whose
        # SharedLLMCache the next call continues with the new tokens only
        cached = past_key_values is not None or bool(use_cache)
        if not cached and full_logits:
            if query_position is not None:
                raise ValueError(
                    "query_position does not apply with full_logits (each span's query is the token before the span "
                    "it scores); pass full_logits=False to read one decoder window with that query"
                )
            return self._all_logits(input_ids, attention_mask, labels, logits_to_keep)
        return _seen(self._full_forward(input_ids, attention_mask, labels, query_position, cached, logits_to_keep,
                                        self._chunk_memo), width)

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
        the row's length, padding or batch). Cost: 1 + ceil((L - Ld + 1) / C) decoder forwards for L positions and
        one lower pass per chunk (`LowerChunksMemo`: the j-th forward reuses the j - 1 chunks encoded before it,
        keeping every chunk's lower keys/values for the call); the logits themselves take B * L * V floats.
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
        # every span re-reads the chunks before it: each chunk's lower pass runs once (node_encoding "node" never
        # calls it: it encodes nodes per query)
        lower = LowerChunksMemo(self.context_encoder)
        n_spans = 1 + int((length.max() - window).clamp(min=-1).add(chunk).div(chunk, rounding_mode="floor"))
        for span in range(n_spans):
            first = 0 if span == 0 else window + (span - 1) * chunk - 1  # first position of the span
            end = window - 1 if span == 0 else first + chunk  # one past its last position
            rows = (length > first).nonzero(as_tuple=True)[0]  # rows with positions in this span
            prefix = min(window, int(length.max())) if span == 0 else window + span * chunk
            ids, _ = gather_tokens(input_ids[rows], start[rows], length[rows].clamp(max=prefix), prefix, left_pad=False)
            query = torch.full_like(rows, max(first, 0))
            out = self._full_forward(ids, torch.ones_like(ids), None, query, False, prefix - first, lower)
            span_logits = out.logits[:, : min(end, prefix) - first]  # positions [first, end) of every row
            if logits is None:
                logits = span_logits.new_zeros(batch, width, span_logits.shape[-1])
            position = first + torch.arange(span_logits.shape[1], device=input_ids.device)[None, :]  # (1, S)
            keep = position < length[rows][:, None]  # (rows, S): real positions only
            target_rows = rows[:, None].expand_as(keep)[keep]
            logits[target_rows, (start[rows][:, None] + position)[keep]] = span_logits[keep]
        loss = None
        if labels is not None:
            real = attention_mask.bool()  # padding predicts nothing and is never a target
            targets = labels[:, 1:].masked_fill(~(real[:, :-1] & real[:, 1:]), -100)
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
            context = self.context_encoder.encode(input_ids, start, n_chunks, torch.zeros_like(n_chunks), query, lower)

        sink = self.context_encoder.sink() if cfg.injection == "joint" else None
        injected = self._injected_context(context, sink)
        cache = None
        if cached:
            empty = EncodedContext([[] for _ in range(input_ids.shape[0])], torch.zeros_like(n_chunks),
                                   cfg.context_tokens_per_chunk)
            previous = self._tokens_before(input_ids, start + context_length, context_length > 0,
                                           self.context_encoder.text_start_prefix(input_ids.shape[0], input_ids.device))
            cache = SharedLLMCache(cfg.text_config, context or empty, query, decoder_ids, decoder_mask, previous, sink)
            cache.injected = injected  # of `context or empty` as well: the first decode step need not rebuild it
        positions = mask_positions(decoder_mask)
        hidden = self._decoder_forward(decoder_ids, decoder_mask, positions, injected, cache)
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
        return SharedLLMOutput(loss=loss, logits=logits, **cache_argument(cache), context_lengths=context_length)

    def _tokens_before(self, ids, index, has_them, otherwise) -> torch.LongTensor:
        """(B, S) ids[b, index[b] - S : index[b]] (S = chunk_overlap) where has_them[b] (a whole chunk of C >= S
        tokens ends at index[b]), else the row of `otherwise` (B, S)."""
        offsets = torch.arange(-self.config.overlap_length, 0, device=ids.device)
        before = ids.gather(1, (index[:, None] + offsets[None, :]).clamp(min=0))
        return torch.where(has_them[:, None], before, otherwise)

    # -- generation -----------------------------------------------------------------------------------------------

    def prepare_inputs_for_generation(self, input_ids, next_sequence_length=None, cache=None, past_key_values=None,
                                      **kwargs):
        """GenerationMixin's, except what a SharedLLMCache has already read: generate slices the sequence by the
        cache's `get_seq_length`, which is the window's width, so a cache an earlier generate returned (a chat's next
        turn) would be handed tokens it has read (transformers >= 5.24, where generate slices by
        next_sequence_length; the cache is `cache` there, `past_key_values` before)."""
        cache = cache if cache is not None else past_key_values
        if isinstance(cache, SharedLLMCache) and next_sequence_length is not None:
            next_sequence_length = input_ids.shape[1] - cache.tokens_seen
        if next_sequence_length is not None:
            kwargs["next_sequence_length"] = next_sequence_length
        return super().prepare_inputs_for_generation(input_ids, **{CACHE_ARGUMENT: cache}, **kwargs)

    def _decode_step(self, new_ids, cache: SharedLLMCache, logits_to_keep) -> SharedLLMOutput:
        """Append new tokens to the decoder window; roll whole chunks into context when it would exceed Ld."""
        cfg = self.config
        n_new = new_ids.shape[1]
        cache.tokens_seen += n_new
        ids = torch.cat([cache.decoder_ids, new_ids], dim=1)
        mask = torch.cat([cache.decoder_mask, torch.ones_like(new_ids)], dim=1)
        decoder_length = mask.sum(1)
        rolled = context_chunk_counts(decoder_length, cfg.chunk_size, cfg.decoder_window)  # new chunks per row
        if int(rolled.max()) == 0:  # the common step: extend the window's cache
            cache.decoder_ids, cache.decoder_mask = ids, mask
            positions = mask_positions(mask)[:, -n_new:]
            hidden = self._decoder_forward(new_ids, mask, positions, self._cached_injected_context(cache), cache)
        else:
            start, _ = real_token_spans(mask)
            new_context = self.context_encoder.encode(
                ids, start, rolled, cache.context.n_chunks, cache.query, previous=cache.previous
            )
            cache.context = append_chunks(cache.context, new_context)
            cache.previous = self._tokens_before(ids, start + rolled * cfg.chunk_size, rolled > 0, cache.previous)
            positions_kept = torch.arange(ids.shape[1], device=ids.device)[None, :]
            keep = mask.bool() & (positions_kept >= (start + rolled * cfg.chunk_size)[:, None])
            cache.decoder_ids, cache.decoder_mask = left_align(ids, keep)
            cache.reset()  # the window moved: rebuild its self-attention cache over the tokens that remain
            positions = mask_positions(cache.decoder_mask)
            hidden = self._decoder_forward(
                cache.decoder_ids, cache.decoder_mask, positions, self._cached_injected_context(cache), cache
            )[:, -n_new:]
        if logits_to_keep:
            hidden = hidden[:, -logits_to_keep:]
        return SharedLLMOutput(logits=self.base.lm_head(hidden), **cache_argument(cache))


def register_auto_classes() -> None:
    """Let AutoConfig / AutoModelForCausalLM load a saved SharedLLM folder (after `import sharedllm`)."""
    AutoConfig.register("sharedllm", SharedLLMConfig, exist_ok=True)
    AutoModelForCausalLM.register(SharedLLMConfig, SharedLLMForCausalLM, exist_ok=True)
