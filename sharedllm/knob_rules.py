"""The rules a set of knob values must meet, and the sizes they imply, without a model library.

`KnobRules` holds them for any object with the knobs as attributes (and, when known, the base's config as
`text_config`): `SharedLLMConfig` is one, and `read_knobs` builds one from an adapter's config.json alone, so that
eval and bench refuse a knob combination in a fraction of a second, before torch and transformers load (importing
them takes seconds). The one place a combination of knobs is judged.
"""

import json
from pathlib import Path
from types import SimpleNamespace

from sharedllm.knobs import ADAPTER_SHAPE_KNOBS, ATTENTION_ONLY_KNOBS, KNOB_DEFAULTS, KNOBS, check_knob_names

MODEL_TYPE = "sharedllm"  # config.json's model_type of a saved adapter


class KnobRules:
    """What knob values imply (the properties) and the rules they must meet (`validate_knobs`). The base's config,
    `text_config`, is read for its depth and trained length where an object has one (None: not checked yet)."""

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

    def with_overrides(self, overrides: dict):
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


class KnobValues(KnobRules):
    """Knob values alone: the `KNOBS` defaults under the given ones, validated as a config validates them."""

    def __init__(self, text_config=None, **knobs):
        check_knob_names(knobs, "knobs")
        self.text_config = text_config
        for name, knob in KNOBS.items():
            setattr(self, name, knobs.get(name, knob.default))
        self.validate_knobs()


def read_adapter_json(directory: Path) -> dict:
    """A saved adapter's config.json, after the checks that say what the folder is when it is none: missing, no
    config.json, not JSON, a base model's folder."""
    if not directory.is_dir():
        raise FileNotFoundError(f"no SharedLLM adapter folder at {directory} (a folder written by save_pretrained)")
    config_file = directory / "config.json"
    if not config_file.is_file():
        raise FileNotFoundError(f"{directory} has no config.json: it is not a saved SharedLLM adapter")
    try:
        saved = json.loads(config_file.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise ValueError(f"{config_file} is not valid JSON ({error}); the adapter folder is damaged") from None
    if saved.get("model_type") != MODEL_TYPE:
        raise ValueError(
            f"{directory} holds a {saved.get('model_type')!r} model, not a SharedLLM adapter; wrap a base model with "
            f"SharedLLMForCausalLM.from_base({str(directory)!r}, ...)"
        )
    return saved


def read_knobs(adapter: str | None, knobs: dict) -> KnobValues:
    """The knobs a model built with `knobs` reads with: the saved knobs of `adapter` with them over it
    (`with_overrides`), or without an adapter the knobs over the defaults. Raises ValueError saying what to change
    (an invalid combination, an override the adapter's weights do not fit), as building the model would: eval and
    bench check their flags with it before loading anything."""
    if not adapter:
        return KnobValues(**knobs)
    directory = Path(adapter)
    saved = read_adapter_json(directory)
    text_config = saved.get("text_config")
    try:
        values = KnobValues(text_config and SimpleNamespace(**text_config),
                            **{name: saved[name] for name in KNOBS if name in saved})
    except (TypeError, ValueError) as error:
        raise ValueError(f"{directory / 'config.json'}: {error}") from None
    return values.with_overrides(knobs)
