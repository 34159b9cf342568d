"""Every long-context method of the comparison behind one scoring / generation interface.

All methods run on the same base causal LM (Llama / Qwen2 / Mistral family, a transformers `*ForCausalLM`):

    method = load_method(name, base, tokenizer=None, shared=None, **options)
    nll = method.token_nll(input_ids, score_start)   # (T,) -> (T - score_start,) NLL of tokens [score_start, T)
    logits = method.prefill(input_ids)               # (T,) -> (V,) next-token logits; keeps the method's cache
    logits = method.step(token)                      # one more token (a 0-d or (1,) tensor) -> (V,)
    new_ids = method.generate(input_ids, max_new_tokens, eos_token_id=None)   # greedy over prefill / step
    method.name, method.describe()                   # describe(): the knobs, for result JSON

`shared` holds the settings of a whole comparison: `adapter` (a SharedLLM adapter folder) and SharedLLM knobs
(`config.KNOBS` names such as `decoder_window`). Each method class takes from it what it declares
(`Method.shared_knobs`, `Method.reads_adapter`, from its row of `sharedllm.method_table`) and ignores the rest, so a
caller never asks which method takes what; `options` are the method's own keyword options (`n_sink=`, `topk=`, ...)
and win over `shared`.

Methods:
    full       the base model, full attention over all T tokens (the upper bound while T fits its training)
    window     the base model on the last `decoder_window` tokens only (the no-context floor)
    streaming  StreamingLLM: attention sinks + a recent window, positions taken inside the cache
    infllm     InfLLM: sinks + local window + the top-k context blocks retrieved per chunk (sharedllm/infllm.py)
    yarn       training-free YaRN RoPE scaling with factor max(1, T / native) chosen per input
    sharedllm  SharedLLMForCausalLM (a saved adapter, or untrained from the base)
    cepe       the encoder-decoder variant of the same class: every layer injected, no tree, no compression

Only the logits a caller needs are ever computed: at 32K tokens and a 49K vocabulary the full logits would
take 6 GB, so scoring applies `lm_head` to the hidden states of the predicting positions, a slice at a time.
"""

import contextlib
import copy
import math

import torch
import torch.nn.functional as F
from transformers.cache_utils import Cache, DynamicCache, DynamicLayer

from sharedllm.compat import cache_argument, output_cache
from sharedllm.config import KNOB_DEFAULTS
from sharedllm.flags import format_length
from sharedllm.method_table import INFLLM_DEFAULTS, INFLLM_OPTIONS, METHOD_READS, METHODS, check_infllm_values
from sharedllm.rope import rotate

# lm_head rows per step when turning hidden states into NLL: bounds the (rows, vocab) logits to ~200 MB in fp32.
LOGIT_ROWS_PER_STEP = 1024


# ----------------------------------------------------------------------------------------------------------------
# shared helpers


def _check_scoring_args(input_ids: torch.Tensor, score_start: int) -> None:
    if input_ids.dim() != 1:
        raise ValueError(f"input_ids must be a 1-D tensor of token ids, got shape {tuple(input_ids.shape)}")
    if not 1 <= score_start < input_ids.shape[0]:
        raise ValueError(
            f"score_start must be in [1, T) = [1, {input_ids.shape[0]}) (token 0 has nothing to be predicted from), "
            f"got {score_start}"
        )


def _nll_from_hidden(lm_head: torch.nn.Module, hidden: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """NLL (n,) of `targets` (n,) under the next-token distributions of the final hidden states `hidden` (n, H)."""
    nll = []
    for rows in range(0, hidden.shape[0], LOGIT_ROWS_PER_STEP):
        logits = lm_head(hidden[rows : rows + LOGIT_ROWS_PER_STEP]).float()  # (rows, V)
        nll.append(F.cross_entropy(logits, targets[rows : rows + LOGIT_ROWS_PER_STEP], reduction="none"))
    return torch.cat(nll)


def _eos_set(eos_token_id: int | list[int] | None) -> set[int]:
    if eos_token_id is None:
        return set()
    return {eos_token_id} if isinstance(eos_token_id, int) else set(eos_token_id)


def _greedy_decode(prefill, step, input_ids: torch.Tensor, max_new_tokens: int, eos_token_id) -> torch.Tensor:
    """Greedy decoding around `prefill(ids (T,)) -> logits (V,)` and `step(token) -> logits (V,)` of the next token.

    Like `GenerationMixin.generate`, an EOS token is returned as the last new token; `eos_token_id=None` never stops
    early.
    """
    if max_new_tokens <= 0:
        return input_ids.new_empty(0)
    eos, new_ids = _eos_set(eos_token_id), []
    logits = prefill(input_ids)
    while True:
        token = int(logits.argmax())
        new_ids.append(token)
        if token in eos or len(new_ids) == max_new_tokens:
            return torch.tensor(new_ids, dtype=input_ids.dtype, device=input_ids.device)
        logits = step(input_ids.new_tensor([token]))


def _full_attention_nll(base, input_ids: torch.Tensor, score_start: int) -> torch.Tensor:
    """NLL (T - score_start,) of input_ids[score_start:] under the base model reading all of input_ids (T,)."""
    hidden = base.model(input_ids[None], use_cache=False).last_hidden_state[0]  # (T, H)
    # position p predicts token p + 1: the scored tokens [score_start, T) come from positions [score_start - 1, T - 1)
    return _nll_from_hidden(base.lm_head, hidden[score_start - 1 : -1], input_ids[score_start:])


def _base_logits(base, cache: DynamicCache, ids: torch.Tensor) -> torch.Tensor:
    """Feed ids (n,) into the base model's own KV cache; next-token logits (V,) of the last one, in fp32."""
    hidden = base.model(ids[None], **cache_argument(cache), use_cache=True).last_hidden_state  # (1, n, H)
    return base.lm_head(hidden[0, -1]).float()


class Method:
    """One long-context method on a base causal LM.

    Subclasses implement `token_nll` (scoring) and `prefill` / `step` (decoding with the method's own cache, kept in
    `self.state` between the calls); `generate` is greedy decoding over the pair, the same for every method, and
    the benchmark times the same two calls. Every method is built alike, `cls(base, tokenizer, **options)`, or from
    a comparison's shared settings with `cls.build(base, tokenizer, shared=..., **options)`.
    """

    name: str
    shared_knobs: tuple[str, ...] = ()  # the SharedLLM knobs (config.KNOBS names) of a comparison this method reads
    reads_adapter = False  # whether a comparison's SharedLLM adapter is this method's

    def __init_subclass__(cls, **kwargs):
        """A method of the comparison (a class with its own `name`, not a shared base such as PieceFedMethod) reads
        what its row of `method_table.METHOD_READS` says: written once there, where eval checks it before torch."""
        super().__init_subclass__(**kwargs)
        if "name" in vars(cls):
            reads = METHOD_READS[cls.name]
            cls.shared_knobs, cls.reads_adapter = reads.shared_knobs, reads.reads_adapter

    def __init__(self, base, tokenizer=None):
        self.base = base
        self.tokenizer = tokenizer
        self.state = None  # the decoding cache between prefill and step

    @classmethod
    def build(cls, base, tokenizer=None, shared: dict | None = None, **options) -> "Method":
        """The method with the knobs of `shared` it reads (and its adapter, if it reads one); `options` win."""
        return cls(base, tokenizer, **cls.settings(shared, **options))

    @classmethod
    def settings(cls, shared: dict | None = None, **options) -> dict:
        """The constructor keywords `build` passes: what this method reads of `shared`, then `options`."""
        shared = shared or {}
        taken = {k: v for k, v in shared.items() if k in cls.shared_knobs}  # None too: `--selected-leaves none`
        if cls.reads_adapter and shared.get("adapter") is not None:
            taken["adapter"] = shared["adapter"]
        return {**taken, **options}

    @property
    def device(self) -> torch.device:
        return self.base.device

    def token_nll(self, input_ids: torch.Tensor, score_start: int) -> torch.Tensor:
        raise NotImplementedError

    def prefill(self, input_ids: torch.Tensor, max_new_tokens: int = 0) -> torch.Tensor:
        """Read the prompt input_ids (T,) into a fresh cache; returns the next-token logits (V,) in fp32.
        `max_new_tokens`: how many `step`s may follow (YaRN sizes its RoPE factor to the whole sequence)."""
        raise NotImplementedError

    def step(self, token: torch.Tensor) -> torch.Tensor:
        """Append one token (a (1,) tensor) after `prefill` or the previous step; returns its next-token logits (V,)."""
        raise NotImplementedError

    def reset(self) -> None:
        """Drop the decoding cache (it can hold every key and value of a long prompt)."""
        self.state = None

    @torch.no_grad()
    def generate(self, input_ids: torch.Tensor, max_new_tokens: int, eos_token_id=None) -> torch.Tensor:
        """Greedy generation (T,) -> (n_new,) over `prefill` / `step`; the cache is dropped afterwards."""
        input_ids = input_ids.to(self.device)
        try:
            prefill = lambda ids: self.prefill(ids, max_new_tokens)  # noqa: E731
            return _greedy_decode(prefill, self.step, input_ids, max_new_tokens, eos_token_id)
        finally:
            self.reset()

    def reusing_encodings(self):
        """A context in which consecutive prompts reuse the work on what they share: SharedLLM's chunk encodings
        (`SharedLLMForCausalLM.reusing_chunk_encodings`); nothing for the other methods."""
        return contextlib.nullcontext()

    def window_order(self, windows: list[dict]) -> list[int] | None:
        """The order in which to score held-out windows ({"doc", "start"} each; indexes into the list) inside
        `reusing_encodings`, where they share work; their scores do not depend on it. None: they share nothing this
        method could reuse, so they are scored in the given order without keeping anything (as here)."""
        return None

    def describe(self) -> dict:
        return {"method": self.name}

    def same_as_another(self, n_tokens: int) -> str | None:
        """Why this method computes exactly what another one does on inputs of n_tokens, or None. A grid can then
        skip the duplicate cell and say why instead of paying for it twice."""
        return None


# ----------------------------------------------------------------------------------------------------------------
# full attention and the window floor


class FullAttention(Method):
    """The base model with full causal attention over every input token."""

    name = "full"

    @torch.no_grad()
    def token_nll(self, input_ids, score_start):
        _check_scoring_args(input_ids, score_start)
        return _full_attention_nll(self.base, input_ids.to(self.device), score_start)

    @torch.no_grad()
    def prefill(self, input_ids, max_new_tokens=0):
        self.state = DynamicCache(config=self.base.config)
        return _base_logits(self.base, self.state, input_ids.to(self.device))

    @torch.no_grad()
    def step(self, token):
        return _base_logits(self.base, self.state, token.to(self.device).view(1))


class WindowAttention(FullAttention):
    """The base model on the last `decoder_window` input tokens: everything older is invisible.

    This is the floor every context method must beat: what the decoder window alone gives.
    """

    name = "window"

    def __init__(self, base, tokenizer=None, decoder_window: int = KNOB_DEFAULTS["decoder_window"]):
        super().__init__(base, tokenizer)
        if decoder_window < 2:
            raise ValueError(f"decoder_window must be >= 2, got {decoder_window}")
        self.decoder_window = decoder_window

    def describe(self):
        return {"method": self.name, "decoder_window": self.decoder_window}

    @torch.no_grad()
    def token_nll(self, input_ids, score_start):
        _check_scoring_args(input_ids, score_start)
        window_start = max(0, input_ids.shape[0] - self.decoder_window)
        if score_start <= window_start:
            raise ValueError(
                f"window: the scored span starts at token {score_start}, but only tokens [{window_start}, "
                f"{input_ids.shape[0]}) are in the decoder window of {self.decoder_window}; the first scored token "
                f"must be predicted from inside the window (score_start >= {window_start + 1})"
            )
        window = input_ids[window_start:].to(self.device)
        return _full_attention_nll(self.base, window, score_start - window_start)

    def prefill(self, input_ids, max_new_tokens=0):
        # The prompt is cut to the window; new tokens then extend it (generations are short next to the window).
        return super().prefill(input_ids[-self.decoder_window :], max_new_tokens)


# ----------------------------------------------------------------------------------------------------------------
# methods that read their input a piece at a time (StreamingLLM, InfLLM)


class PieceFedMethod(Method):
    """A method that reads its input a piece at a time into its own cache: StreamingLLM (blocks) and InfLLM
    (chunks). Subclasses give the piece length, the cache and the forward of one piece; scoring and decoding
    feed pieces the same way, so a prompt of whole pieces followed by a step is fed exactly as scoring feeds it."""

    piece_size: int

    def new_cache(self, reserve: int = 0) -> Cache:
        """An empty cache; `reserve`: tokens it will hold, where preallocating them helps."""
        raise NotImplementedError

    def forward_piece(self, cache: Cache, piece: torch.Tensor) -> torch.Tensor:
        """Feed piece (n,) through the base model into the cache; returns final hidden states (n, H)."""
        raise NotImplementedError

    @torch.no_grad()
    def token_nll(self, input_ids, score_start):
        _check_scoring_args(input_ids, score_start)
        input_ids = input_ids.to(self.device)
        cache = self.new_cache(reserve=input_ids.shape[0] - 1)
        hidden = []  # final hidden states of the predicting positions [score_start - 1, T - 1), piece by piece
        # the last token predicts nothing, so it is never fed
        for piece_start, piece in zip(range(0, input_ids.shape[0], self.piece_size), input_ids[:-1].split(self.piece_size)):
            piece_hidden = self.forward_piece(cache, piece)  # (n, H); row i is text position piece_start + i
            hidden.append(piece_hidden[max(0, score_start - 1 - piece_start) :])
        return _nll_from_hidden(self.base.lm_head, torch.cat(hidden), input_ids[score_start:])

    def _feed(self, ids: torch.Tensor) -> torch.Tensor:
        """Feed ids (n,) piece by piece into the decoding cache; the next-token logits of the last one (V,)."""
        for piece in ids.split(self.piece_size):
            hidden = self.forward_piece(self.state, piece)
        return self.base.lm_head(hidden[-1]).float()

    @torch.no_grad()
    def prefill(self, input_ids, max_new_tokens=0):
        self.state = self.new_cache()
        return self._feed(input_ids.to(self.device))

    @torch.no_grad()
    def step(self, token):
        return self._feed(token.to(self.device).view(1))


# ----------------------------------------------------------------------------------------------------------------
# StreamingLLM (Xiao et al. 2023): attention sinks + recent window, positions inside the cache


class SinkCache(Cache):
    """KV cache of StreamingLLM: the first `n_sink` tokens plus the most recent ones, at most `window` in all.

    Positions are indices inside the cache, not in the text: after each eviction the kept recent keys are
    re-rotated back by the number of evicted tokens, so cache positions stay 0..len-1 and the model never sees a
    position >= window. transformers 5 dropped its SinkCache; this one is a `Cache` of plain `DynamicLayer`s plus
    `make_room`, called before every forward.
    """

    def __init__(self, rotary_emb: torch.nn.Module, window: int, n_sink: int):
        super().__init__(layer_class_to_replicate=DynamicLayer)
        self.rotary_emb = rotary_emb
        self.window = window
        self.n_sink = n_sink

    def make_room(self, n_new: int) -> None:
        """Evict the oldest non-sink tokens so that the cache plus `n_new` incoming tokens fit in the window."""
        if n_new > self.window - self.n_sink:
            raise ValueError(f"cannot feed {n_new} tokens at once into a window of {self.window} with {self.n_sink} sinks")
        n_evict = self.get_seq_length() + n_new - self.window
        if n_evict <= 0:
            return
        back = torch.tensor([[-n_evict]], device=self.layers[0].keys.device)  # (1, 1): one shift for every key
        for layer in self.layers:  # keys / values: (B, H_kv, S, D)
            # the key at p becomes the key at p - n_evict
            recent_keys = rotate(layer.keys[:, :, self.n_sink + n_evict :], back, self.rotary_emb)
            layer.keys = torch.cat([layer.keys[:, :, : self.n_sink], recent_keys], dim=-2)
            layer.values = torch.cat([layer.values[:, :, : self.n_sink], layer.values[:, :, self.n_sink + n_evict :]], dim=-2)


class StreamingLLM(PieceFedMethod):
    """StreamingLLM with `n_sink` attention sinks and a recent window, `window` key/values in all.

    Input is fed in blocks of `block_size` tokens (bounded memory, cheap prefill). Before each block the cache is
    cut to `window - block_size` entries, so a block's i-th token attends to at most `window` keys and at least
    `window - block_size + i + 1`; `block_size=1` is exact token-by-token StreamingLLM (decoding always is).
    """

    name = "streaming"

    def __init__(self, base, tokenizer=None, decoder_window: int = KNOB_DEFAULTS["decoder_window"],
                 window: int | None = None, n_sink: int = 4, block_size: int = 256):
        super().__init__(base, tokenizer)
        self.window = decoder_window if window is None else window
        self.n_sink = n_sink
        if n_sink < 0 or self.window <= n_sink:
            raise ValueError(f"streaming needs 0 <= n_sink < window, got n_sink={n_sink}, window={self.window}")
        if block_size < 1:
            raise ValueError(f"block_size must be >= 1, got {block_size}")
        # a block must leave room for the sinks in the window
        self.block_size = self.piece_size = min(block_size, self.window - n_sink)

    def describe(self):
        return {"method": self.name, "window": self.window, "n_sink": self.n_sink, "block_size": self.block_size}

    def new_cache(self, reserve: int = 0) -> SinkCache:
        return SinkCache(self.base.model.rotary_emb, self.window, self.n_sink)

    def forward_piece(self, cache: SinkCache, block: torch.Tensor) -> torch.Tensor:
        """Feed block (n,) through the base model with cache positions; returns final hidden states (n, H)."""
        cache.make_room(block.shape[0])
        first = cache.get_seq_length()
        position_ids = torch.arange(first, first + block.shape[0], device=block.device)[None]  # (1, n)
        out = self.base.model(block[None], position_ids=position_ids, **cache_argument(cache), use_cache=True)
        return out.last_hidden_state[0]


# ----------------------------------------------------------------------------------------------------------------
# InfLLM (Xiao et al. 2024): block retrieval over the KV cache, training-free


class InfLLM(PieceFedMethod):
    """InfLLM on the base model: sinks + local window + the `topk` most relevant memory blocks, per chunk.

    The retrieval lives in sharedllm/infllm.py (cache, block selection, attention). Input is fed in chunks of
    `chunk_size` tokens; each chunk (and each decode step) retrieves its own blocks. The local window defaults to
    the decoder window of the comparison. Every attended distance stays below `attended_tokens`, which must fit the
    base's trained window. Every key and value stays in the cache on the model's device (InfLLM offloads them to
    CPU memory), so memory grows like full attention's: 46 KB per token for SmolLM2-135M in fp32.
    """

    name = "infllm"
    # its own options, all whole numbers: what `--infllm KNOB=VALUE` of eval and bench may set (sharedllm.flags)
    KNOBS = INFLLM_OPTIONS

    def __init__(self, base, tokenizer=None, decoder_window: int = KNOB_DEFAULTS["decoder_window"],
                 local_window: int | None = None, n_sink: int = INFLLM_DEFAULTS["n_sink"],
                 block_size: int = INFLLM_DEFAULTS["block_size"], n_rep: int = INFLLM_DEFAULTS["n_rep"],
                 topk: int = INFLLM_DEFAULTS["topk"], chunk_size: int = INFLLM_DEFAULTS["chunk_size"]):
        super().__init__(base, tokenizer)
        check_infllm_values(local_window=decoder_window if local_window is None else local_window, n_sink=n_sink,
                            block_size=block_size, n_rep=n_rep, topk=topk, chunk_size=chunk_size)
        self.local_window = decoder_window if local_window is None else local_window
        self.n_sink, self.block_size, self.n_rep = n_sink, block_size, n_rep
        self.topk, self.chunk_size, self.piece_size = topk, chunk_size, chunk_size
        native = getattr(base.config, "max_position_embeddings", None)
        if native is not None and self.attended_tokens > native:
            raise ValueError(f"infllm attends up to {self.attended_tokens} tokens (n_sink + topk * block_size + "
                             f"local_window + block_size + chunk_size), past the base's trained {native}")

    @property
    def attended_tokens(self) -> int:
        """The most keys a query sees, hence the largest distance (the local window holds < local + block tokens)."""
        return self.n_sink + self.topk * self.block_size + self.local_window + self.block_size + self.chunk_size

    def describe(self):
        return {"method": self.name, "local_window": self.local_window, "n_sink": self.n_sink,
                "block_size": self.block_size, "n_rep": self.n_rep, "topk": self.topk, "chunk_size": self.chunk_size}

    def new_cache(self, reserve: int = 0):
        """An empty InfLLMCache; `reserve` = tokens it will hold, preallocated (it still grows past them)."""
        from sharedllm.infllm import InfLLMCache

        return InfLLMCache(self.base.model.rotary_emb, self.n_sink, self.local_window, self.block_size, self.n_rep,
                           self.topk, reserve)

    def forward_piece(self, cache, chunk: torch.Tensor) -> torch.Tensor:
        """Feed chunk (n,) through the base model with retrieval; returns final hidden states (n, H)."""
        from sharedllm.infllm import infllm_attention_on

        with infllm_attention_on(self.base.config):
            out = self.base.model(chunk[None], **cache_argument(cache), use_cache=True, infllm_cache=cache)
        return out.last_hidden_state[0]


# ----------------------------------------------------------------------------------------------------------------
# YaRN (Peng et al. 2023), training-free


class YaRN(Method):
    """Full attention with YaRN-scaled RoPE; factor = max(1, T / native) for an input of T tokens unless fixed
    (for decoding, T counts the prompt and the `max_new_tokens` that `prefill` is told may follow).

    The scaled rotary module is swapped into `base.model` for the duration of one call and the original put back
    (even on error), so the caller's base model is unchanged afterwards. Not safe to share one base between threads.
    """

    name = "yarn"

    def __init__(self, base, tokenizer=None, factor: float | None = None, native: int | None = None):
        super().__init__(base, tokenizer)
        rope = base.config.rope_parameters
        if rope.get("rope_type", "default") != "default":
            raise ValueError(f"yarn scales plain RoPE; this base already uses rope_type={rope['rope_type']!r}")
        if factor is not None and factor < 1:
            raise ValueError(f"yarn factor must be >= 1, got {factor}")
        self.factor = factor
        self.native = native or base.config.max_position_embeddings

    def describe(self):
        return {"method": self.name, "factor": self.factor or "max(1, T / native)", "native": self.native}

    def factor_for(self, n_tokens: int) -> float:
        return self.factor or max(1.0, n_tokens / self.native)

    def same_as_another(self, n_tokens: int) -> str | None:
        if self.factor_for(n_tokens) == 1:  # YaRN with factor 1 leaves every RoPE frequency and scale as it is
            return f"identical to full: YaRN factor 1 at T <= {format_length(self.native)}"
        return None

    def _scaled_rotary(self, n_tokens: int) -> torch.nn.Module:
        """The base's rotary module rebuilt with the YaRN factor for a sequence of n_tokens."""
        config = copy.deepcopy(self.base.config)
        config.rope_parameters = {
            **self.base.config.rope_parameters,
            "rope_type": "yarn",
            "factor": self.factor_for(n_tokens),
            "original_max_position_embeddings": self.native,
        }
        return type(self.base.model.rotary_emb)(config=config).to(self.device)

    @contextlib.contextmanager
    def _swapped_in(self, rotary_emb: torch.nn.Module):
        model = self.base.model
        original = model.rotary_emb
        model.rotary_emb = rotary_emb
        try:
            yield
        finally:
            model.rotary_emb = original

    @torch.no_grad()
    def token_nll(self, input_ids, score_start):
        _check_scoring_args(input_ids, score_start)
        with self._swapped_in(self._scaled_rotary(input_ids.shape[0])):
            return _full_attention_nll(self.base, input_ids.to(self.device), score_start)

    @torch.no_grad()
    def prefill(self, input_ids, max_new_tokens=0):
        # one factor for the prompt and every step after it: the cached keys were rotated with it
        rotary_emb = self._scaled_rotary(input_ids.shape[0] + max_new_tokens)
        self.state = (DynamicCache(config=self.base.config), rotary_emb)
        with self._swapped_in(rotary_emb):
            return _base_logits(self.base, self.state[0], input_ids.to(self.device))

    @torch.no_grad()
    def step(self, token):
        cache, rotary_emb = self.state
        with self._swapped_in(rotary_emb):
            return _base_logits(self.base, cache, token.to(self.device).view(1))


# ----------------------------------------------------------------------------------------------------------------
# SharedLLM and its encoder-decoder (CEPE-style) variant


class SharedLLM(Method):
    """`SharedLLMForCausalLM` on the base: a saved adapter dir, or untrained via `from_base(base, **knobs)`.

    With an adapter, knobs override its saved config (e.g. a longer decoder_window at evaluation). Scoring passes
    `query_position = score_start - 1`, the last token before the scored span, so the tree selection never peeks
    at a scored token; the scored span must lie inside the decoder window (the model only has logits there).
    """

    name = "sharedllm"
    KNOBS = METHOD_READS["sharedllm"].shared_knobs  # the model's knobs, but full_logits (sharedllm.method_table)

    def __init__(self, base, tokenizer=None, adapter: str | None = None, **model_knobs):
        super().__init__(base, tokenizer)
        from sharedllm.modeling import SharedLLMForCausalLM  # lazy: keeps the baselines free of the model module

        unknown = set(model_knobs) - set(self.KNOBS)
        if unknown:
            raise ValueError(f"{self.name}: unknown knobs {sorted(unknown)}; valid: adapter, {', '.join(self.KNOBS)}")
        if adapter is None:
            self.model = SharedLLMForCausalLM.from_base(base, **model_knobs)
        else:
            from sharedllm.lora import has_upper_lora

            if has_upper_lora(adapter):  # its LoRA goes into the base in place (merged): keep the
                base = copy.deepcopy(base)  # comparison's base, which the other methods of the run read, untouched
            self.model = SharedLLMForCausalLM.from_pretrained(adapter, base=base, **model_knobs)
        self.model.eval()
        self.adapter = adapter

    def describe(self):
        return {"method": self.name, "adapter": self.adapter, **{k: getattr(self.model.config, k) for k in self.KNOBS}}

    def reusing_encodings(self):
        return self.model.reusing_chunk_encodings()

    def window_order(self, windows: list[dict]) -> list[int] | None:
        """Joint injection encodes a chunk the same wherever it falls (`LowerChunksMemo`): windows of one document
        whose starts differ by a multiple of C cut it into the same chunks, so they go one after another. Cross
        injection reads a chunk's index: windows at other starts share no chunk."""
        if not self.model.context_encoder.chunks_share_positions:
            return None
        chunk = self.model.config.chunk_size
        return sorted(range(len(windows)), key=lambda i: (windows[i]["doc"], windows[i]["start"] % chunk,
                                                          windows[i]["start"]))

    def context_length(self, n_tokens: int) -> int:
        """Tokens the split rule puts into context chunks: k * C with k = ceil(max(0, L - Ld) / C)."""
        c = self.model.config
        return math.ceil(max(0, n_tokens - c.decoder_window) / c.chunk_size) * c.chunk_size

    @torch.no_grad()
    def token_nll(self, input_ids, score_start):
        _check_scoring_args(input_ids, score_start)
        n_tokens, n_context = input_ids.shape[0], self.context_length(input_ids.shape[0])
        if score_start <= n_context:
            raise ValueError(
                f"{self.name}: the scored span starts at token {score_start}, but tokens [0, {n_context}) of this "
                f"{n_tokens}-token input become context chunks; the first scored token must be predicted "
                f"from inside the decoder window (score_start >= {n_context + 1})"
            )
        input_ids = input_ids.to(self.device)
        # logits of the last n_tokens - score_start + 1 decoder positions: [score_start - 1, T), the last one unused
        out = self.model(input_ids[None], query_position=score_start - 1, logits_to_keep=n_tokens - score_start + 1,
                         full_logits=False)  # one decoder window with this query, whatever the adapter's default
        if int(out.context_lengths[0]) != n_context:
            raise RuntimeError(f"model split {int(out.context_lengths[0])} context tokens, expected {n_context}")
        return F.cross_entropy(out.logits[0, :-1].float(), input_ids[score_start:], reduction="none")

    @torch.no_grad()
    def prefill(self, input_ids, max_new_tokens=0):
        # an empty cache starts the cached prefill that `generate` drives; only the last position gets logits
        out = self.model(input_ids.to(self.device)[None], **cache_argument(DynamicCache()), use_cache=True,
                         logits_to_keep=1)
        self.state = output_cache(out)
        return out.logits[0, -1].float()

    @torch.no_grad()
    def step(self, token):
        # a chunk rolls into context whenever the decoder window would exceed decoder_window
        out = self.model(token.to(self.device).view(1, 1), **cache_argument(self.state), use_cache=True,
                         logits_to_keep=1)
        return out.logits[0, -1].float()


class CEPE(SharedLLM):
    """Encoder-decoder context (CEPE-style) through the same class: every layer cross-attends to its own
    encoding of every context token (tree_depth = 0, tokens_per_node = chunk_size: no tree, no compression)."""

    name = "cepe"  # what it reads of a comparison (never its adapter): its row of method_table.METHOD_READS

    def __init__(self, base, tokenizer=None, adapter: str | None = None, **model_knobs):
        if adapter is None:
            model_knobs = self.preset(base.config.num_hidden_layers, model_knobs)
        super().__init__(base, tokenizer, adapter=adapter, **model_knobs)

    @staticmethod
    def preset(n_layers: int, knobs: dict) -> dict:
        """The untrained CEPE-style model's knobs (also what benchmark.flops counts): `knobs` with every one of the
        base's `n_layers` injected, no tree, a node the whole chunk."""
        if fixed := sorted({"n_injected_layers", "tree_depth", "tokens_per_node"} & set(knobs)):
            raise ValueError(f"cepe: {', '.join(fixed)} are fixed by the CEPE-style preset (every layer, no tree)")
        chunk_size = knobs.get("chunk_size", KNOB_DEFAULTS["chunk_size"])
        return {**knobs, "n_injected_layers": n_layers, "chunk_size": chunk_size, "tree_depth": 0,
                "tokens_per_node": chunk_size}


# ----------------------------------------------------------------------------------------------------------------

METHOD_CLASSES = {cls.name: cls for cls in (FullAttention, WindowAttention, StreamingLLM, InfLLM, YaRN, SharedLLM, CEPE)}
assert tuple(METHOD_CLASSES) == METHODS


def load_method(name: str, base, tokenizer=None, shared: dict | None = None, **options) -> Method:
    """Build method `name` (one of METHODS) on the causal LM `base`: `shared` = a comparison's adapter and SharedLLM
    knobs, of which the method takes what it reads; `options` = the method's own keyword options (they win)."""
    if name not in METHOD_CLASSES:
        raise ValueError(f"unknown method {name!r}; valid methods: {', '.join(METHODS)}")
    return METHOD_CLASSES[name].build(base, tokenizer, shared, **options)
