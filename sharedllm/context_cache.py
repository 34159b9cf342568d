"""Read a long document once, answer many questions: `ContextCache`.

With node_encoding="chunk" the lower model's pass over a chunk depends only on the chunk's tokens and index, not
on the question: the question only decides which tree nodes are gathered. `ContextCache.encode` runs that pass once
over every whole chunk of the document and keeps its output (`LowerChunks`: the keys/values of every token of the
injected layers, and the node vectors the tree compares). A question is then answered by passing the cache as a
prefix cache, the way transformers passes one:

    context = ContextCache.encode(model, document_ids)            # (L_doc,) token ids, once
    out = model.generate(question_ids, cache=context, max_new_tokens=64)   # any number of times

Each row of `question_ids` is read as if appended to the document, so the result is exactly that of
`model.generate(cat(document_ids, question_row))`: the split rule is applied to the whole L = L_doc + L_q tokens,
k = ceil(max(0, L - Ld) / C) chunks go to context. Chunks 0..min(k, n)-1 (n = L_doc // C whole chunks of the
document) come from the cache; chunks n..k-1, which hold the document's last partial chunk and the question's
start, are encoded when the question comes (at most ceil(L_q / C) + 1 of them); the document's tokens from k*C on
are read by the decoder with the question. Only the query vector, the tree search, the node compression and the
decoder window are computed per question. The cache is never modified, so one object serves every question.
"""

import json
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from tqdm.auto import tqdm
from transformers import DynamicCache

from sharedllm.context_encoder import LowerChunks
from sharedllm.loading import base_fingerprint
from sharedllm.lora import lora_fingerprint
from sharedllm.rows import left_align, real_token_spans

FORMAT = "sharedllm-context-cache/1"
# the knobs that shape the stored tensors; the others (decoder_window, tree_selection, tokens_per_node,
# node_compression, max_chunks_per_pass) act when a question is answered and may differ between questions
STORED_KNOBS = ("chunk_size", "n_injected_layers", "tree_depth", "node_encoding", "injection", "chunk_overlap")


def model_signature(model) -> dict:
    """What a cache must have been made with to answer exactly as `model` would from scratch."""
    config = model.config
    fingerprint = config.base_fingerprint or base_fingerprint(model.base)
    return {
        "base_fingerprint": fingerprint,
        "dtype": str(model.base.dtype).removeprefix("torch."),
        "lora": lora_fingerprint(model),  # joint injection encodes the context through the LoRA'd layers
        **{knob: getattr(config, knob) for knob in STORED_KNOBS},
    }


def check_chunk_encoding(model) -> None:
    if model.config.node_encoding != "chunk":
        raise ValueError(
            "a context cache needs node_encoding='chunk': with node_encoding='node' every kept node is encoded "
            "alone after the question's query picks it, so nothing question-independent is left to cache; load "
            "the model with node_encoding='chunk' (the default)"
        )


class ContextCache(DynamicCache):
    """A document's lower-model pass, kept to answer questions (see the module docstring).

    It is a `DynamicCache` with no layers only so that `generate(cache=...)` accepts it as a prefix
    cache; the forward pass turns it into a fresh `SharedLLMCache` for every call and never writes into it.
    """

    def __init__(self, document_ids: torch.LongTensor, stored: torch.Tensor, node_vectors: torch.Tensor,
                 signature: dict):
        super().__init__()
        self.document_ids = document_ids  # (L_doc,)
        # the document's n = L_doc // C whole chunks: (2M, n, Hkv, C, hd) their M injected layers' keys, then values
        self.stored = stored
        self.lowered = LowerChunks(list(stored.unbind(1)), node_vectors)  # views: what a question's encoding reads
        self.signature = signature

    @property
    def n_chunks(self) -> int:
        return self.lowered.node_vectors.shape[0]

    def nbytes(self) -> int:
        tensors = [self.stored, self.lowered.node_vectors, self.document_ids]
        return sum(t.numel() * t.element_size() for t in tensors)

    # -- encoding, saving, loading --------------------------------------------------------------------------------

    @classmethod
    @torch.no_grad()
    def encode(cls, model, document_ids, progress: bool = False) -> "ContextCache":
        """Run the lower model once over every whole chunk of `document_ids` ((L_doc,) or (1, L_doc) token ids),
        `max_chunks_per_pass` chunks at a time, each pass written into one preallocated buffer."""
        check_chunk_encoding(model)
        cfg = model.config
        ids = torch.as_tensor(document_ids, device=model.device)
        if ids.dim() == 2 and ids.shape[0] == 1:
            ids = ids[0]
        if ids.dim() != 1 or ids.numel() == 0:
            raise ValueError(f"encode one document: (L,) or (1, L) token ids with L >= 1, got shape {tuple(ids.shape)}")
        model._check_inputs(ids[None], None, None, {})  # integer ids inside the vocabulary, as forward checks them
        ids = ids.long()
        n = ids.shape[0] // cfg.chunk_size
        chunks = ids[: n * cfg.chunk_size].view(n, cfg.chunk_size)
        before = model.context_encoder.tokens_before(chunks, None)  # (n, S) the tokens before each chunk
        stored, node_vectors = _empty_storage(model, n)  # filled pass by pass (shorter than a chunk: nothing to fill)
        with tqdm(total=n, desc="encoding", unit="chunk", disable=not progress) as bar:
            for first in range(0, n, cfg.max_chunks_per_pass):
                part = slice(first, first + cfg.max_chunks_per_pass)
                index = torch.arange(first, min(first + cfg.max_chunks_per_pass, n), device=ids.device)
                out = model.context_encoder.lower_chunks(chunks[part], index, before[part], node_vectors=True)
                for j, chunk in enumerate(out.chunks):  # into its slot: no stacked copy of the pass first
                    stored[:, first + j] = chunk
                node_vectors[part] = out.node_vectors
                bar.update(index.numel())
        return cls(ids, stored, node_vectors, model_signature(model))

    def save(self, path: str | Path) -> None:
        """One safetensors file: the tensors, and the signature (base fingerprint, dtype, knobs) as metadata."""
        tensors = {"document_ids": self.document_ids, "node_vectors": self.lowered.node_vectors}
        n_layers = self.stored.shape[0] // 2
        for i in range(n_layers):
            tensors[f"keys.{i}"], tensors[f"values.{i}"] = self.stored[i], self.stored[n_layers + i]
        tensors = {name: t.contiguous() for name, t in tensors.items()}
        save_file(tensors, str(path), metadata={"format": FORMAT, "signature": json.dumps(self.signature)})

    @classmethod
    def load(cls, path: str | Path, model) -> "ContextCache":
        """Load a saved cache onto `model`'s device; refuses one made by another base, dtype or knobs."""
        from safetensors import safe_open

        with safe_open(str(path), framework="pt") as handle:
            metadata = handle.metadata() or {}
        if metadata.get("format") != FORMAT:
            raise ValueError(
                f"{path} is not a sharedllm context cache (format {metadata.get('format')!r}, expected {FORMAT!r})"
            )
        signature = json.loads(metadata["signature"])
        _check_signature(signature, model, f"the context cache {path}")
        tensors = load_file(str(path), device=str(model.device))
        n_layers = signature["n_injected_layers"]
        stored = torch.stack([tensors.pop(f"{kind}.{i}") for kind in ("keys", "values") for i in range(n_layers)])
        return cls(tensors["document_ids"], stored, tensors["node_vectors"], signature)

    # -- answering: called by SharedLLMForCausalLM.forward ---------------------------------------------------------

    def prepend_document(self, model, input_ids, attention_mask, labels, query_position):
        """Questions (B, L_q) -> the rows document + question, packed to the right (as generation packs them).

        labels get -100 over the document; a non-negative query_position counted in the question moves by L_doc."""
        _check_signature(self.signature, model, "this context cache")
        batch, n_doc = input_ids.shape[0], self.document_ids.shape[0]
        if attention_mask is None:
            attention_mask = torch.ones_like(input_ids)
        real_token_spans(attention_mask)  # a question row must be one run of real tokens, as any input row
        document = self.document_ids.to(input_ids.device)[None].expand(batch, -1)
        keep = torch.cat([torch.ones_like(document, dtype=torch.bool), attention_mask.bool()], dim=1)
        ids, mask = left_align(torch.cat([document, input_ids], dim=1), keep)
        if labels is not None:
            labels, _ = left_align(torch.cat([torch.full_like(document, -100), labels], dim=1), keep)
            labels = labels.masked_fill(mask == 0, -100)
        if query_position is not None:
            query_position = torch.as_tensor(query_position, device=input_ids.device).long()
            query_position = torch.where(query_position >= 0, query_position + n_doc, query_position)
        return ids, mask, labels, query_position

    def lower_chunks(self, model, chunk_ids, chunk_index, before) -> LowerChunks:
        """`lower` for `ContextEncoder.encode_by_chunk`: chunks 0..n-1 are the document's, read from the cache;
        later chunks (the document's last partial chunk with the question's start) are encoded now, with node
        vectors whatever this model's selection, as the stored chunks have them."""
        cached = chunk_index < self.n_chunks  # (N,)
        if bool(cached.all()):
            return self.lowered.select(chunk_index)
        fresh = model.context_encoder.lower_chunks(chunk_ids[~cached], chunk_index[~cached], before[~cached],
                                                   node_vectors=True)
        if not bool(cached.any()):
            return fresh
        out = self.lowered.select(chunk_index.clamp(max=self.n_chunks - 1))  # vectors a copy: fresh rows overwritten
        out.node_vectors[~cached] = fresh.node_vectors
        fresh_chunks = iter(fresh.chunks)
        out.chunks = [chunk if keep else next(fresh_chunks) for chunk, keep in zip(out.chunks, cached.tolist())]
        return out


def _empty_storage(model, n: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Room for n chunks, shaped as a context cache stores them: (2M, n, Hkv, C, hd) keys then values, and (n,
    2**(D-1), hidden) node vectors (none compared below tree depth 2)."""
    cfg, text = model.config, model.config.text_config
    head_dim = getattr(text, "head_dim", None) or text.hidden_size // text.num_attention_heads
    like = dict(dtype=model.base.dtype, device=model.device)
    n_vectors = 2 ** (cfg.tree_depth - 1) if cfg.tree_depth >= 2 else 0
    return (torch.empty(2 * cfg.n_injected_layers, n, text.num_key_value_heads, cfg.chunk_size, head_dim, **like),
            torch.empty(n, n_vectors, text.hidden_size, **like))


def _check_signature(signature: dict, model, what: str) -> None:
    check_chunk_encoding(model)
    expected = model_signature(model)
    differ = [name for name in expected if signature.get(name) != expected[name]]
    if "base_fingerprint" in differ:
        raise ValueError(
            f"{what} was encoded by a base model with weight fingerprint {signature.get('base_fingerprint')}, but "
            f"this model's base has fingerprint {expected['base_fingerprint']}; encode the document again with this "
            "model"
        )
    if differ:
        found = ", ".join(f"{name}={signature.get(name)!r} (model: {expected[name]!r})" for name in differ)
        raise ValueError(f"{what} was encoded with other settings: {found}; encode the document again with this model")
