"""SharedLLMConfig: the method's knobs (the `KNOBS` table of sharedllm.knobs), validated when the config is built."""

from pathlib import Path

from transformers import AutoConfig, PretrainedConfig

# the knob table lives in sharedllm.knobs (no torch: commands build their flags from it before any model library
# loads); its names stay importable from here
from sharedllm.knobs import (  # noqa: F401
    ADAPTER_SHAPE_KNOBS, ATTENTION_ONLY_KNOBS, CONTEXT_BIASES, INJECTIONS, KNOB_DEFAULTS, KNOBS, NODE_COMPRESSIONS,
    NODE_ENCODINGS, SELECTION_SCORES, TREE_SELECTIONS, Knob, recorded_knobs,
)


class SharedLLMConfig(PretrainedConfig):
    r"""
    Configuration of a SharedLLM model: a base causal LM (`text_config`) used twice, as the lower model (its
    embedding and bottom `n_injected_layers` layers, which compress the context) and as the upper model (the whole
    LM, which reads the decoder window and cross-attends to the compressed context in its bottom layers).

    Args:
        text_config: config of the base causal LM (Llama, Mistral, Qwen2, ...).
        base_model: local path or hub id the base weights are loaded from by `from_pretrained`.
        base_fingerprint: digest of the base weights (see `loading.base_fingerprint`), checked at load time.
        **knobs: the method's knobs (`n_injected_layers` = M, `chunk_size` = C, `decoder_window` = Ld, `tree_depth`
            = D, `tokens_per_node` = P, ...): their types, defaults, valid values and meaning are the `KNOBS` table
            of sharedllm.knobs, the one place every command's flags are derived from (`sharedllm.flags`).
        adapter_sha256: digest of the saved adapter weights file, written by `save_pretrained`, checked at load.
        lora_sha256: digest of the saved LoRA's weights file (`upper_lora/`), likewise; None without a LoRA and in
            adapters saved before 2026-12-07, whose LoRA loads unchecked.
    """

    model_type = "sharedllm"
    sub_configs = {"text_config": AutoConfig}

    def __init__(
        self,
        text_config=None,
        base_model: str | None = None,
        base_fingerprint: str | None = None,
        adapter_sha256: str | None = None,
        lora_sha256: str | None = None,
        **kwargs,
    ):
        if isinstance(text_config, dict):
            text_config = AutoConfig.for_model(**text_config)
        self.text_config = text_config
        self.base_model = base_model
        self.base_fingerprint = base_fingerprint
        for name, knob in KNOBS.items():  # defaults come from the one table
            setattr(self, name, kwargs.pop(name, knob.default))
        self.adapter_sha256 = adapter_sha256
        self.lora_sha256 = lora_sha256
        if text_config is not None:
            # PretrainedConfig pushes its attention implementation down into text_config, which may be the base
            # model's own config object: default it to the base's so building this config never changes the base
            kwargs.setdefault("attn_implementation", text_config._attn_implementation)
        super().__init__(**kwargs)
        self.validate_knobs()

    @property
    def scoring_layer(self) -> int:
        """The injected layer whose query scores tokens for tree_selection="attention"."""
        return self.n_injected_layers - 1 if self.selection_layer is None else self.selection_layer

    @property
    def query_scoring_layer(self) -> int:
        """The injected layer whose queries rank the Q query tokens' added query_chunks (query_layer)."""
        return self.scoring_layer if self.query_layer is None else self.query_layer

    @property
    def n_query_vectors(self) -> int:
        """Query states per row that attention selection scores with: the Q query tokens' entering the scoring
        layer, and when they rank chunks at another layer (query_layer) their Q states entering that one first."""
        separate = self.query_tokens > 1 and self.query_scoring_layer != self.scoring_layer
        return self.query_tokens * (2 if separate else 1)

    @property
    def chunks_read(self) -> int | None:
        """Chunks a window reads (`context_encoder.top_chunks`): context_chunks k, query_chunks m more ranked by the
        Q tokens at the scoring layer and m more at a separate query_layer; None (no context_chunks): every chunk."""
        if self.context_chunks is None:
            return None
        return self.context_chunks + self.query_chunks * (self.n_query_vectors // self.query_tokens)

    @property
    def overlap_length(self) -> int:
        """Tokens read before each chunk: for joint injection chunk_overlap, at most one chunk (the previous one);
        none for cross injection, which reads every chunk alone."""
        return min(self.chunk_overlap, self.chunk_size) if self.injection == "joint" else 0

    @property
    def leaf_length(self) -> int:
        return self.chunk_size // 2**self.tree_depth

    def node_budget(self, length: int) -> int:
        """Key/value positions a kept node of `length` tokens is compressed to: P, or the leaf budget on the
        finest level."""
        leaf_budget = self.tokens_per_node if self.leaf_tokens_per_node is None else self.leaf_tokens_per_node
        return leaf_budget if length == self.leaf_length else self.tokens_per_node

    @property
    def context_tokens_per_chunk(self) -> int:
        """Key/value positions one chunk contributes per injected layer: P * (D - 1) coarse + 2 leaves (P*(D+1)
        when the leaves keep P too); one node of the leaf budget without a tree; with selected_leaves n, n leaves (n + 1
        with query_tokens > 1) at the leaf budget + P for each of the other leaves."""
        if self.tree_depth == 0:
            return self.node_budget(self.chunk_size)
        if self.selected_leaves is not None:
            exact = self.selected_leaves + (self.query_tokens > 1)  # the Q query tokens add their best leaf
            return exact * self.node_budget(self.leaf_length) + (2**self.tree_depth - exact) * self.tokens_per_node
        return self.tokens_per_node * (self.tree_depth - 1) + 2 * self.node_budget(self.leaf_length)

    @classmethod
    def reading(cls, adapter: str | None, knobs: dict) -> "SharedLLMConfig":
        """The config a model built with `knobs` reads with: the saved config of `adapter` with them over it
        (`with_overrides`), or without an adapter the knobs over the defaults. Raises ValueError saying what to
        change (an invalid combination, an override the adapter's weights do not fit): eval and bench check their
        flags with it before loading anything."""
        if not adapter:
            return cls(**knobs)
        from sharedllm.loading import load_adapter_config  # it imports this module

        return load_adapter_config(Path(adapter)).with_overrides(knobs)

    def with_overrides(self, overrides: dict) -> "SharedLLMConfig":
        """This saved adapter's config with knob overrides applied (in place) and checked: they may change how the
        adapter reads (windows, tree, budgets, a joint adapter's M), not which weights it has. The one override path
        of `from_pretrained`, eval's methods and bench."""
        for knob in ADAPTER_SHAPE_KNOBS[self.injection]:
            if knob in overrides and overrides[knob] != getattr(self, knob):
                fix = ("joint injection needs no adapter: use the untrained model (from_base, or --adapter none)"
                       if knob == "injection" and overrides[knob] == "joint" else "train an adapter with that value")
                raise ValueError(f"this adapter was trained with {knob}={getattr(self, knob)!r}; its weights do not "
                                 f"fit {knob}={overrides[knob]!r}: {fix}")
        for knob, value in overrides.items():
            setattr(self, knob, value)
        self.validate_knobs()  # the overrides, and knobs AutoConfig set on its own way here
        return self

    def validate_knobs(self) -> None:
        """Fail at config time, saying what to change, instead of deep inside a forward pass."""
        for name, knob in KNOBS.items():
            value = getattr(self, name)
            if value is None and knob.optional:
                continue
            # bool is an int subclass: reject True as a chunk size, and 1 as a flag
            if not isinstance(value, knob.type) or (knob.type is int and isinstance(value, bool)):
                raise ValueError(f"{name} must be of type {knob.type.__name__}, got {value!r} ({type(value).__name__})")
            if knob.choices is not None and value not in knob.choices:
                raise ValueError(f"{name} must be one of {knob.choices}, got {value!r}")
            if knob.minimum is not None and value < knob.minimum:
                raise ValueError(f"{name} must be >= {knob.minimum}, got {value}")
        self._check_attention_only_knobs()
        checks = [
            (
                self.tree_selection != "attention" or self.node_encoding == "chunk",
                "tree_selection='attention' scores tokens of the whole-chunk pass: it needs node_encoding='chunk'",
            ),
            (
                self.injection != "joint" or self.node_encoding == "chunk",
                "injection='joint' reads its context from the whole-chunk pass: it needs node_encoding='chunk'",
            ),
            (
                self.leaf_tokens_per_node is None or self.leaf_tokens_per_node <= self.leaf_length,
                f"leaf_tokens_per_node must be at most the leaf length chunk_size / 2**tree_depth = {self.leaf_length}, "
                f"got {self.leaf_tokens_per_node}",
            ),
            (
                self.selected_leaves is None
                or (1 <= self.tree_depth and self.selected_leaves <= 2**self.tree_depth
                    and self.tree_selection in ("attention", "recent")),
                f"selected_leaves ranks the 2**tree_depth leaves by their tokens' attention scores (or recency): it "
                f"needs tree_depth >= 1, selected_leaves <= 2**tree_depth and tree_selection 'attention' or "
                f"'recent', got selected_leaves={self.selected_leaves}, tree_depth={self.tree_depth}, "
                f"tree_selection={self.tree_selection!r}",
            ),
            (
                self.leaf_lookback == 0 or (self.selected_leaves is not None and self.leaf_lookback <= self.leaf_length),
                f"leaf_lookback widens the attention ranking of selected_leaves: above 0 it needs selected_leaves and "
                f"at most the leaf length {self.leaf_length}, got "
                f"leaf_lookback={self.leaf_lookback}, selected_leaves={self.selected_leaves}",
            ),
            (
                self.query_tokens == 1 or self.selected_leaves is None or self.selected_leaves < 2**self.tree_depth,
                f"query_tokens scores the context with the scoring layer's queries of several tokens: above 1 it needs "
                f"a leaf left to add (selected_leaves < 2**tree_depth), got "
                f"query_tokens={self.query_tokens}, selected_leaves={self.selected_leaves}",
            ),
            (
                self.query_chunks == 0 or (self.query_tokens > 1 and self.context_chunks is not None),
                f"query_chunks adds chunks chosen by several query tokens to the context_chunks read: above 0 it "
                f"needs query_tokens > 1 and context_chunks set, got query_chunks={self.query_chunks}, "
                f"query_tokens={self.query_tokens}, context_chunks={self.context_chunks} (for the query token alone pass "
                f"query_tokens 1 with query_chunks 0)",
            ),
            (
                self.query_layer is None or (self.query_chunks > 0 and self.query_layer < self.n_injected_layers),
                f"query_layer ranks the chunks of query_chunks: it needs query_chunks > 0 and an injected layer, "
                f"0..{self.n_injected_layers - 1} (n_injected_layers - 1), got query_layer={self.query_layer}, "
                f"query_chunks={self.query_chunks}",
            ),
            (
                self.context_chunks != 0 or self.query_chunks > 0,
                f"context_chunks ranks chunks by the scoring layer's attention: it must be >= 1 (0 with query_chunks "
                f"above 0: only the query tokens choose), got context_chunks={self.context_chunks}, "
                f"query_chunks={self.query_chunks}",
            ),
            (
                self.recent_chunks == 0 or (self.context_chunks is not None and self.recent_chunks <= self.context_chunks),
                f"recent_chunks counts among the context_chunks read: it needs context_chunks >= recent_chunks, got "
                f"recent_chunks={self.recent_chunks}, context_chunks={self.context_chunks}",
            ),
            (
                self.chunk_spacing == 0 or (self.injection == "joint" and self.context_chunks is not None),
                f"chunk_spacing lays the chunks read out in their order: above 0 it needs injection='joint' and "
                f"context_chunks set, got chunk_spacing={self.chunk_spacing}, "
                f"injection={self.injection!r}, context_chunks={self.context_chunks}",
            ),
            (
                self.chunk_spacing == 0 or self.context_bias == "none",
                "context_bias='log_chunks' gives chunks stacked on the same positions one chunk's share of the softmax; "
                "with chunk_spacing above 0 they are not stacked: pass context_bias='none'",
            ),
            (
                self.selection_layer is None or self.selection_layer < self.n_injected_layers,
                f"selection_layer must be an injected layer, 0..{self.n_injected_layers - 1} (n_injected_layers - 1), "
                f"got {self.selection_layer}",
            ),
            (
                self.chunk_size % 2**self.tree_depth == 0,
                f"chunk_size ({self.chunk_size}) must be divisible by 2**tree_depth ({2**self.tree_depth}) so that "
                f"the tree halves a chunk evenly; use a chunk_size that is a multiple of {2**self.tree_depth} "
                "or a smaller tree_depth",
            ),
        ]
        for ok, message in checks:
            if not ok:
                raise ValueError(message)
        leaf = self.leaf_length
        if leaf < self.tokens_per_node:
            raise ValueError(
                f"a leaf of the context tree has chunk_size / 2**tree_depth = {leaf} tokens, fewer than "
                f"tokens_per_node = {self.tokens_per_node}; lower tokens_per_node to at most {leaf}, lower "
                "tree_depth, or raise chunk_size"
            )
        if self.node_compression == "mean" and (leaf % self.tokens_per_node or leaf % self.node_budget(leaf)):
            raise ValueError(
                f"node_compression='mean' needs every node length (down to the leaf, {leaf}) to be divisible "
                f"by its budget (tokens_per_node {self.tokens_per_node}, leaf {self.node_budget(leaf)}); pick budgets dividing {leaf}"
            )
        if self.text_config is not None:
            self._check_chunk_spacing()
            n_layers = self.text_config.num_hidden_layers
            if self.n_injected_layers > n_layers:
                raise ValueError(
                    f"n_injected_layers = {self.n_injected_layers} exceeds the base model's depth "
                    f"({n_layers} layers); use at most {n_layers}"
                )

    def _check_chunk_spacing(self) -> None:
        """Spaced chunks reach back (k - 1)g + C + 1 (the sink) before a window at 0..Ld-1: every distance the
        window's attention meets must be one the base was trained on, or its attention breaks (docs/method.md,
        Positions)."""
        trained = getattr(self.text_config, "max_position_embeddings", None)
        if self.chunk_spacing == 0 or trained is None:
            return
        span = (self.chunks_read - 1) * self.chunk_spacing + self.chunk_size + 1 + self.decoder_window
        if span > trained:
            raise ValueError(
                f"chunk_spacing={self.chunk_spacing} puts the {self.chunks_read} chunks read of {self.chunk_size} "
                f"tokens, the sink and the {self.decoder_window}-token window in {span} positions, past the base's "
                f"trained {trained}: lower chunk_spacing or read fewer chunks (context_chunks, query_chunks)"
            )

    def _check_attention_only_knobs(self) -> None:
        """Knobs that only attention selection reads must be off under another tree_selection: one error naming
        every one that is set (an adapter saved with attention selection sets several), with the values and flags
        that switch them off, so that e.g. a `--tree-selection recent` ablation is fixed in one step."""
        if self.tree_selection == "attention":
            return
        set_knobs = [name for name in ATTENTION_ONLY_KNOBS if getattr(self, name) != KNOB_DEFAULTS[name]]
        if not set_knobs:
            return
        from sharedllm.flags import knob_flags

        got = ", ".join(f"{name}={getattr(self, name)!r}" for name in set_knobs)
        flags = " ".join(knob_flags({name: KNOB_DEFAULTS[name] for name in set_knobs}))
        raise ValueError(f"tree_selection={self.tree_selection!r} does not score the context by attention, but "
                         f"knobs only attention selection reads are set: {got}; switch them off (on the command line: "
                         f"{flags})")

    def to_dict(self) -> dict:
        output = super().to_dict()
        # the base's own config records where this machine loaded it from (a cache path); a saved adapter names its
        # base by the portable `base_model` instead, so its config.json holds no machine path
        if output.get("text_config") is not None and self.base_model is not None:
            output["text_config"]["_name_or_path"] = self.base_model
        return output

    def get_text_config(self, decoder=None, encoder=None) -> PretrainedConfig:
        # The upper model's self-attention cache and generation settings are the base model's.
        return self.text_config


# when this module is the first to import transformers' auto classes, the import hook in sharedllm/__init__.py
# finds it half-initialised and leaves the registration to it
AutoConfig.register("sharedllm", SharedLLMConfig, exist_ok=True)
