"""A word-level tokenizer over the tiny models' 128-token vocabulary, built in code (no files, no hub)."""

from tokenizers import Tokenizer, models, pre_tokenizers
from transformers import PreTrainedTokenizerFast

SPECIAL = ["<pad>", "<s>", "</s>", "<unk>"]  # ids 0..3, matching the tiny models' pad/bos/eos ids


def tiny_tokenizer(vocab_size: int = 128) -> PreTrainedTokenizerFast:
    vocab = {token: i for i, token in enumerate(SPECIAL)}
    vocab.update({f"w{i}": i for i in range(len(SPECIAL), vocab_size)})
    backend = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    return PreTrainedTokenizerFast(
        tokenizer_object=backend, bos_token="<s>", eos_token="</s>", pad_token="<pad>", unk_token="<unk>"
    )


def words(ids) -> str:
    """Token ids (>= 4) -> the text that tokenizes back to them."""
    return " ".join(f"w{int(i)}" for i in ids)
