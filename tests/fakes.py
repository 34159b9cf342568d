"""Stand-ins shared by the command-line and evaluation tests (no weights): prose, a real one-token-per-character
tokenizer, and a base model that loads nothing."""

import re

import pytest
import torch

PROSE = " ".join(
    f"Sentence number {i} tells of a quiet village by the sea. Was the miller happy? He was, mostly!"
    for i in range(400)
)


def char_tokenizer():
    """A real HF fast tokenizer with one token per character (and a BOS), built in memory."""
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    chars = [chr(i) for i in range(32, 127)] + ["\n"]
    vocab = {"<unk>": 0, "<s>": 1, **{c: i + 2 for i, c in enumerate(chars)}}
    backend = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.Split(Regex(r"[\s\S]"), behavior="isolated")
    backend.decoder = decoders.Fuse()
    return PreTrainedTokenizerFast(tokenizer_object=backend, bos_token="<s>", unk_token="<unk>")


class FakeBase:
    device = torch.device("cpu")

    class config:  # noqa: N801
        max_position_embeddings = 1024
        _attn_implementation = "sdpa"

    def to(self, device):
        return self


class FakeMethod:
    """NLL 1.0 per token (PPL e) for 'full', 2.0 otherwise; generation reads the pass key from the prompt."""

    def __init__(self, name, tokenizer, **knobs):
        self.name, self.tokenizer, self.knobs = name, tokenizer, knobs

    def describe(self):
        return {"method": self.name, **self.knobs}

    def same_as_another(self, n_tokens):
        return None

    def token_nll(self, input_ids, score_start):
        return torch.full((len(input_ids) - score_start,), 1.0 if self.name == "full" else 2.0)

    def generate(self, input_ids, max_new_tokens):
        text = self.tokenizer.decode(input_ids.tolist())
        key = re.search(r"The pass key is (\d+)\.", text).group(1) if self.name != "window" else "none"
        return torch.tensor(self.tokenizer.encode(f" {key}.", add_special_tokens=False)[:max_new_tokens])


@pytest.fixture
def fake_stack(monkeypatch, tmp_path):
    import sharedllm.loading
    import sharedllm.methods

    tokenizer = char_tokenizer()
    monkeypatch.setenv("SHAREDLLM_HOME", str(tmp_path / "home"))  # token cache: never the real home
    monkeypatch.setattr(sharedllm.loading, "load_causal_lm", lambda path, dtype=None: (FakeBase(), tokenizer))
    monkeypatch.setattr(sharedllm.methods, "load_method", lambda name, base, tok, shared=None, **options: FakeMethod(
        name, tok, **sharedllm.methods.METHOD_CLASSES[name].settings(shared, **options)))
    (tmp_path / "book.txt").write_text(PROSE)
    return tmp_path
