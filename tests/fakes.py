"""Stand-ins shared by the tests (no weights): prose, a real one-token-per-character tokenizer, and a base model
that loads nothing."""

import contextlib
import re

import pytest
import torch

PROSE = " ".join(
    f"Sentence number {i} tells of a quiet village by the sea. Was the miller happy? He was, mostly!"
    for i in range(400)
)


def char_tokenizer(chat_template=False):
    """A real HF fast tokenizer built in memory, one token per character: token i is chr(i) for i < 128, except that
    0-2 are the specials <pad>, <s>, </s>.

    Why this layout: every id fits the tiny test models' 128-token vocabulary and every random id below 128 decodes
    (random-weight models generate any of them); text tokenizes the same whole or in parts, and its token count is
    its character count. A character beyond the 128 (say "\u00e9") is one token too: "?". Nothing is added on encode
    (no BOS). With `chat_template`, a small chat template for the code that formats chat prompts (`sharedllm ask`).
    """
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    specials = {0: "<pad>", 1: "<s>", 2: "</s>"}
    backend = Tokenizer(models.WordLevel({specials.get(i, chr(i)): i for i in range(128)}, unk_token="?"))
    backend.pre_tokenizer = pre_tokenizers.Split(Regex(r"[\s\S]"), behavior="isolated")
    backend.decoder = decoders.Fuse()
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=backend, pad_token="<pad>", bos_token="<s>", eos_token="</s>")
    if chat_template:
        tokenizer.chat_template = (
            "{% for m in messages %}<u>{{ m['content'] }}</u>{% endfor %}{% if add_generation_prompt %}<a>{% endif %}"
        )
    return tokenizer


class FakeBase:
    device = torch.device("cpu")

    class config:  # noqa: N801
        max_position_embeddings = 1024
        _attn_implementation = "sdpa"

    def to(self, device):
        return self


class FakeMethod:
    """NLL 1.0 per token (PPL e) for 'full', 2.0 otherwise; generation reads the pass key from the prompt."""

    reads_adapter = False  # no weights of an adapter to tag its journaled trials with

    def __init__(self, name, tokenizer, **knobs):
        self.name, self.tokenizer, self.knobs = name, tokenizer, knobs

    def describe(self):
        return {"method": self.name, **self.knobs}

    def same_as_another(self, n_tokens):
        return None

    def reusing_encodings(self):  # Method's: nothing to reuse
        return contextlib.nullcontext()

    def window_order(self, windows):  # Method's: nothing shared between windows
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
    monkeypatch.setattr(sharedllm.loading, "load_tokenizer", lambda path, required=True: tokenizer)  # eval's checks
    monkeypatch.setattr(sharedllm.methods, "load_method", lambda name, base, tok, shared=None, **options: FakeMethod(
        name, tok, **sharedllm.methods.METHOD_CLASSES[name].settings(shared, **options)))
    (tmp_path / "book.txt").write_text(PROSE)
    return tmp_path
