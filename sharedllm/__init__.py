"""SharedLLM: context window extension by multi-scale self-injection, on transformers 5."""

from sharedllm.config import SharedLLMConfig
from sharedllm.modeling import SharedLLMCache, SharedLLMForCausalLM, base_fingerprint, load_causal_lm, register_auto_classes

register_auto_classes()

__all__ = ["SharedLLMConfig", "SharedLLMForCausalLM", "SharedLLMCache", "base_fingerprint", "load_causal_lm"]
__version__ = "0.1.0"
