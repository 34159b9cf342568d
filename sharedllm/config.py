"""SharedLLMConfig: the method's knobs, validated when the config is built."""

from transformers import AutoConfig, PretrainedConfig

TREE_SELECTIONS = ("query", "attention", "recent")
NODE_COMPRESSIONS = ("stride", "stride_last", "mean")
NODE_ENCODINGS = ("chunk", "node")
# the method's knobs (what `from_base(base, **knobs)` and `from_pretrained(folder, **knobs)` accept), with their type
KNOBS = {
    "n_injected_layers": int,
    "chunk_size": int,
    "decoder_window": int,
    "tree_depth": int,
    "tokens_per_node": int,
    "leaf_tokens_per_node": int,
    "tree_selection": str,
    "node_compression": str,
    "node_encoding": str,
    "max_chunks_per_pass": int,
    "full_logits": bool,
}
OPTIONAL_KNOBS = {"leaf_tokens_per_node"}  # None: follow another knob (see the docstring)


class SharedLLMConfig(PretrainedConfig):
    r"""
    Configuration of a SharedLLM model: a base causal LM (`text_config`) used twice, as the lower model (its
    embedding and bottom `n_injected_layers` layers, which compress the context) and as the upper model (the whole
    LM, which reads the decoder window and cross-attends to the compressed context in its bottom layers).

    Args:
        text_config: config of the base causal LM (Llama, Mistral, Qwen2, ...).
        base_model: local path or hub id the base weights are loaded from by `from_pretrained`.
        base_fingerprint: digest of the base weights (see `modeling.base_fingerprint`), checked at load time.
        n_injected_layers (M): bottom layers that take part in self-injection.
        chunk_size (C): context tokens per chunk.
        decoder_window (Ld): the most tokens the upper model reads; older tokens become context chunks.
        tree_depth (D): levels of the context tree; 0 means no tree (the whole chunk is one node).
        tokens_per_node (P): key/value positions kept per tree node and injected layer.
        leaf_tokens_per_node: positions kept per node of the finest level (the two leaves of the expanded path);
            None = P. Setting it to the leaf length C / 2**D keeps the finest level exact, token for token, which
            is what copying an exact string (a passkey, a number) out of the context needs.
        tree_selection: "query" expands the half whose node vector is most similar (cosine) to the query vector
            (the paper); "attention" expands the half holding the token with the highest attention logit of the
            last injected layer's cross-attention query (Quest / InfLLM score blocks this way; needs
            node_encoding="chunk"); "recent" always expands the most recent half (ablation without query
            awareness).
        node_compression: how a node's keys/values become P positions: "stride" (uniform stride from the node's
            first token, the reference), "stride_last" (stride ending at the node's last token), "mean" (mean
            pooling of P equal groups).
        node_encoding: "chunk" runs the lower model once per chunk and reads every node from that pass
            (cheaper; a new query only changes which nodes are gathered); "node" encodes every node alone with
            local positions (the reference).
        max_chunks_per_pass: chunks encoded by one lower-model call; bounds peak memory on long inputs.
        full_logits: forward returns logits for every input position, as harnesses built on transformers expect
            (lm-eval's HFLM); each C-token span is scored by its own decoder pass with the context before it
            compressed (see `SharedLLMForCausalLM.forward` and docs/architecture.md for the cost). False: logits
            cover the decoder window only (one pass).
        adapter_sha256: digest of the saved adapter weights file, written by `save_pretrained`, checked at load.
    """

    model_type = "sharedllm"
    sub_configs = {"text_config": AutoConfig}

    def __init__(
        self,
        text_config=None,
        base_model: str | None = None,
        base_fingerprint: str | None = None,
        n_injected_layers: int = 4,
        chunk_size: int = 512,
        decoder_window: int = 1024,
        tree_depth: int = 3,
        tokens_per_node: int = 32,
        leaf_tokens_per_node: int | None = None,
        tree_selection: str = "query",
        node_compression: str = "stride",
        node_encoding: str = "chunk",
        max_chunks_per_pass: int = 16,
        full_logits: bool = False,
        adapter_sha256: str | None = None,
        **kwargs,
    ):
        if isinstance(text_config, dict):
            text_config = AutoConfig.for_model(**text_config)
        self.text_config = text_config
        self.base_model = base_model
        self.base_fingerprint = base_fingerprint
        self.n_injected_layers = n_injected_layers
        self.chunk_size = chunk_size
        self.decoder_window = decoder_window
        self.tree_depth = tree_depth
        self.tokens_per_node = tokens_per_node
        self.leaf_tokens_per_node = leaf_tokens_per_node
        self.tree_selection = tree_selection
        self.node_compression = node_compression
        self.node_encoding = node_encoding
        self.max_chunks_per_pass = max_chunks_per_pass
        self.full_logits = full_logits
        self.adapter_sha256 = adapter_sha256
        if text_config is not None:
            # PretrainedConfig pushes its attention implementation down into text_config, which may be the base
            # model's own config object: default it to the base's so building this config never changes the base
            kwargs.setdefault("attn_implementation", text_config._attn_implementation)
        super().__init__(**kwargs)
        self.validate_knobs()

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
        when the leaves keep P too); one node of the leaf budget without a tree."""
        if self.tree_depth == 0:
            return self.node_budget(self.chunk_size)
        return self.tokens_per_node * (self.tree_depth - 1) + 2 * self.node_budget(self.leaf_length)

    def validate_knobs(self) -> None:
        """Fail at config time, saying what to change, instead of deep inside a forward pass."""
        for knob, kind in KNOBS.items():
            value = getattr(self, knob)
            if value is None and knob in OPTIONAL_KNOBS:
                continue
            # bool is an int subclass: reject True as a chunk size, and 1 as a flag
            if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
                raise ValueError(f"{knob} must be of type {kind.__name__}, got {value!r} ({type(value).__name__})")
        checks = [
            (self.tree_selection in TREE_SELECTIONS, f"tree_selection must be one of {TREE_SELECTIONS}, got {self.tree_selection!r}"),
            (self.node_compression in NODE_COMPRESSIONS, f"node_compression must be one of {NODE_COMPRESSIONS}, got {self.node_compression!r}"),
            (self.node_encoding in NODE_ENCODINGS, f"node_encoding must be one of {NODE_ENCODINGS}, got {self.node_encoding!r}"),
            (
                self.tree_selection != "attention" or self.node_encoding == "chunk",
                "tree_selection='attention' scores tokens of the whole-chunk pass: it needs node_encoding='chunk'",
            ),
            (
                self.leaf_tokens_per_node is None or 1 <= self.leaf_tokens_per_node <= self.chunk_size // 2**max(self.tree_depth, 0),
                f"leaf_tokens_per_node must be between 1 and the leaf length chunk_size / 2**tree_depth, got "
                f"{self.leaf_tokens_per_node}",
            ),
            (self.n_injected_layers >= 1, f"n_injected_layers must be >= 1, got {self.n_injected_layers}"),
            (self.tree_depth >= 0, f"tree_depth must be >= 0, got {self.tree_depth}"),
            (self.tokens_per_node >= 1, f"tokens_per_node must be >= 1, got {self.tokens_per_node}"),
            (self.decoder_window >= 1, f"decoder_window must be >= 1, got {self.decoder_window}"),
            (self.max_chunks_per_pass >= 1, f"max_chunks_per_pass must be >= 1, got {self.max_chunks_per_pass}"),
            (
                self.chunk_size >= 1 and self.chunk_size % 2**self.tree_depth == 0,
                f"chunk_size ({self.chunk_size}) must be divisible by 2**tree_depth ({2**self.tree_depth}) so that "
                f"the tree halves a chunk evenly; use a chunk_size that is a multiple of {2**self.tree_depth} "
                "or a smaller tree_depth",
            ),
        ]
        for ok, message in checks:
            if not ok:
                raise ValueError(message)
        leaf = self.chunk_size // 2**self.tree_depth
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
            n_layers = self.text_config.num_hidden_layers
            if self.n_injected_layers > n_layers:
                raise ValueError(
                    f"n_injected_layers = {self.n_injected_layers} exceeds the base model's depth "
                    f"({n_layers} layers); use at most {n_layers}"
                )

    def get_text_config(self, decoder=None, encoder=None) -> PretrainedConfig:
        # The upper model's self-attention cache and generation settings are the base model's.
        return self.text_config
