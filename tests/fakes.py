"""Stand-ins shared by the command-line and evaluation tests (no weights): prose, a real one-token-per-character
tokenizer, and a base model that loads nothing."""

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
