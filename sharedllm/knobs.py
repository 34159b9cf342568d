"""The table of the method's knobs (`KNOBS`): their types, defaults, valid values and help, and the rules that read
the table alone.

Light on purpose (no torch, no transformers): every command builds its knob flags from this table while building
its parser (`sharedllm.flags`), and `report` / `compare` read the defaults, so `sharedllm CMD --help`, argument
errors and the report answer without importing a model library. `sharedllm.knob_rules` judges a combination of
knob values against it (for `SharedLLMConfig`, and for the commands' checks before a model library loads).
"""

from dataclasses import dataclass

TREE_SELECTIONS = ("query", "attention", "recent")
SELECTION_SCORES = ("logit", "probability")
NODE_COMPRESSIONS = ("stride", "stride_last", "mean")
NODE_ENCODINGS = ("chunk", "node")
INJECTIONS = ("cross", "joint")
CONTEXT_BIASES = ("none", "log_chunks")


@dataclass(frozen=True)
class Knob:
    """One knob of the method: its type, default, valid values and help. Every command's flags, the config's
    defaults and validation, and the packaging script read this one table (`KNOBS`)."""

    type: type
    default: object
    help: str
    choices: tuple | None = None
    optional: bool = False  # None is allowed: the knob then follows another one (see its help)
    minimum: int | None = None  # an int knob's smallest valid value; the config refuses less (one rule, one message)


# the method's knobs: what `from_base(base, **knobs)` and `from_pretrained(folder, **knobs)` accept
KNOBS = {
    "n_injected_layers": Knob(
        int, 4, "M: bottom layers that take part in self-injection (fixed by a cross adapter's weights; a joint "
        "adapter reads at any M)", minimum=1,
    ),
    "chunk_size": Knob(int, 512, "C: context tokens per chunk", minimum=1),
    "decoder_window": Knob(
        int, 1024, "Ld: the most tokens the upper model reads; older tokens become context chunks", minimum=1,
    ),
    "tree_depth": Knob(int, 3, "D: levels of the context tree; 0 = no tree (the whole chunk is one node)", minimum=0),
    "tokens_per_node": Knob(int, 32, "P: key/value positions kept per tree node and injected layer", minimum=1),
    "leaf_tokens_per_node": Knob(
        int, None, "positions kept per node of the finest level; default P; the leaf length C / 2**D keeps the "
        "finest level exact", optional=True, minimum=1,
    ),
    "selected_leaves": Knob(
        int, None, "n: rank every leaf (C / 2**D tokens) of a chunk at once and keep the n best at the leaf budget, "
        "every other leaf at P positions, instead of the tree's greedy descent (attention or recent selection). Why: "
        "the descent follows the single best token and loses a needle whose leaf ranks second (docs/method.md); "
        "default: the tree", optional=True, minimum=1,
    ),
    "leaf_lookback": Knob(
        int, 0, "s, with selected_leaves: a leaf is ranked by its best token among its own and the s tokens before it "
        "in its chunk, so the leaf after a matched key near a leaf border, where the value it looks up goes on, is "
        "kept exact too. Why: a needle's best token is its key words just before the value, and a value cut by a "
        "leaf border was copied truncated (docs/method.md); 0 = each leaf by its own tokens", minimum=0,
    ),
    "tree_selection": Knob(
        str, "query", "query: cosine of node vectors to the query (the paper); attention: the last injected "
        "layer's cross-attention logits (needs node_encoding chunk); recent: always the most recent half (ablation)",
        choices=TREE_SELECTIONS,
    ),
    "selection_layer": Knob(
        int, None, "tree_selection attention: the injected layer whose query scores the tokens (0-based); default the "
        "last injected layer. The base's retrieval heads may sit lower: calibrate it (docs/method.md)",
        optional=True, minimum=0,
    ),
    "selection_score": Knob(
        str, "logit", "tree_selection attention: how the scoring layer's heads score a token: logit = the best head's "
        "logit; probability = the best head's attention probability (its softmax over the chunk to rank leaves and "
        "halves, over all the row's chunks to rank chunks). Why: a few heads with large logits everywhere outvote the "
        "head that looks a needle up (docs/method.md)", choices=SELECTION_SCORES,
    ),
    "query_tokens": Knob(
        int, 1, "tree_selection attention: Q, the query token and the Q - 1 tokens before it in its decoder window "
        "score the context, the best (query, head) as the best head. What the query token selects stays; the Q "
        "tokens' best adds one exact leaf per chunk (with selected_leaves) and query_chunks chunks. Why: the "
        "question's key words look a needle up where its last token does not (docs/method.md); 1 = the query token "
        "alone", minimum=1,
    ),
    "query_chunks": Knob(
        int, 0, "m, with query_tokens > 1 and context_chunks k: m more chunks read, the best of the others under the "
        "Q tokens' best (k + m read)", minimum=0,
    ),
    "query_layer": Knob(
        int, None, "with query_tokens > 1 and query_chunks m: an injected layer whose queries and keys rank chunks "
        "for the Q tokens too, adding their m best others (k + 2m read); the query token's k, the Q tokens' m at the "
        "scoring layer and every leaf choice stay as without it. Why: at 128K the question's key words find a "
        "needle's chunk from layers 8-17, whose queries still match the needle's words, and not from layer 20, which "
        "picks the needle's leaf better (docs/method.md); default: none (the scoring layer adds nothing)",
        optional=True, minimum=0,
    ),
    "node_compression": Knob(
        str, "stride", "how a node's keys/values become its budget: stride (from the node's first token, the "
        "reference), stride_last (ending at its last token), mean (pooling)", choices=NODE_COMPRESSIONS,
    ),
    "node_encoding": Knob(
        str, "chunk", "chunk: one lower-model pass per chunk, nodes read from it; node: every node encoded alone "
        "(the reference)", choices=NODE_ENCODINGS,
    ),
    "injection": Knob(
        str, "cross", "cross: a new cross-attention over the context after the self-attention of each injected layer "
        "(the paper); joint: the context keys/values join the layer's own self-attention softmax (no new "
        "parameters; the untrained base reads its context, best with every layer injected, see docs/method.md)",
        choices=INJECTIONS,
    ),
    "chunk_overlap": Knob(
        int, 64, "S, joint injection: each chunk is read after the S tokens before it in the text (at most C; its left context "
        "and attention sink; the text's first chunk after BOS), which are then left out; 0 = every chunk alone. "
        "Cross injection reads chunks alone, as the paper does", minimum=0,
    ),
    "context_bias": Knob(
        str, "none", "joint injection: none, or log_chunks (every context logit lowered by log n, n = the row's "
        "chunks: the chunks, which share positions, then take the share one chunk would, not n times it)",
        choices=CONTEXT_BIASES,
    ),
    "context_chunks": Knob(
        int, None, "k, tree_selection attention: the window reads only the k chunks whose best token scores highest "
        "under the scoring layer's query (a global top-k over chunks, as InfLLM retrieves blocks; the others stay "
        "cached, and only the k are gathered for attention); 0 with query_chunks: only the query tokens' chunks; "
        "default every chunk. Why: stacked chunks share positions, so many of them dilute the window's attention "
        "(spaced ones, chunk_spacing, do not: docs/method.md)",
        optional=True, minimum=0,
    ),
    "chunk_spacing": Knob(
        int, 0, "g, joint injection: positions between the starts of consecutive chunks read, in their text order, the "
        "last one just before the window (chunk j of the k read at (j - k + 1)g - C + 0..C-1): 0 = stacked, every "
        "chunk at -C..-1 (any input length, as InfLLM places its blocks); C = side by side. Above 0 it needs "
        "context_chunks, and the chunks read plus the window inside the base's trained positions. Why: stacked "
        "chunks share positions, so the window cannot tell their order", minimum=0,
    ),
    "recent_chunks": Knob(
        int, 0, "r, with context_chunks: the r most recent chunks (the text just before the window) are always among "
        "the k read, whatever their score; the query ranks the rest", minimum=0,
    ),
    "max_chunks_per_pass": Knob(int, 16, "chunks encoded by one lower-model call; bounds peak memory", minimum=1),
    "full_logits": Knob(
        bool, False, "logits for every input position (harnesses such as lm-eval); each chunk-sized span is then "
        "scored by its own decoder pass",
    ),
}
KNOB_DEFAULTS = {name: knob.default for name, knob in KNOBS.items()}


def recorded_knobs(method_config: dict) -> dict:
    """A result's recorded method config with every SharedLLM knob it does not name at its default: a knob comes into
    the code at the default that keeps what the code did before, so a run recorded before the knob existed ran at
    that value (and a run that set it otherwise is another setting)."""
    return {**KNOB_DEFAULTS, **method_config}
# knobs read only by tree_selection "attention"; each one's default switches it off
ATTENTION_ONLY_KNOBS = ("selection_layer", "selection_score", "query_tokens", "query_chunks", "query_layer",
                        "context_chunks", "recent_chunks", "leaf_lookback", "chunk_spacing")
# per injection, the knobs that lay out a trained adapter's weights: a cross adapter has weights per injected layer;
# a joint adapter has none per layer (its LoRA, if any, covers every layer), so M is a reading knob for it
ADAPTER_SHAPE_KNOBS = {"cross": ("n_injected_layers", "injection"), "joint": ("injection",)}


def check_knob_names(knobs: dict, caller: str) -> None:
    unknown = sorted(set(knobs) - set(KNOBS))
    if unknown:
        raise TypeError(f"{caller}: unknown argument(s) {unknown}; SharedLLM knobs are {', '.join(KNOBS)}")
