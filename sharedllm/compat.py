"""What differs between the transformers 5.x releases that sharedllm supports (pyproject: transformers>=5.0,<6)."""

from transformers.modeling_outputs import CausalLMOutputWithPast

# transformers 5.24 renamed the cache argument of every forward, of generate() and of the model outputs from
# `past_key_values` to `cache`; the old name still works there but warns (and goes in 5.40)
CACHE_ARGUMENT = "cache" if "cache" in CausalLMOutputWithPast.__dataclass_fields__ else "past_key_values"


def cache_argument(cache) -> dict:
    """{name: cache} under the installed transformers' name, for `**` into a forward, generate() or an output."""
    return {CACHE_ARGUMENT: cache}


def output_cache(output):
    """The cache a model output carries, under either name."""
    return getattr(output, CACHE_ARGUMENT)
