"""SharedLLMConfig: the method's knobs (the `KNOBS` table of sharedllm.knobs), validated when the config is built
(the rules and the sizes they imply: `sharedllm.knob_rules`, which needs no model library)."""

from transformers import AutoConfig, PretrainedConfig

# the knob table lives in sharedllm.knobs (no torch: commands build their flags from it before any model library
# loads); its names stay importable from here
from sharedllm.knobs import (  # noqa: F401
    ADAPTER_SHAPE_KNOBS, ATTENTION_ONLY_KNOBS, CONTEXT_BIASES, INJECTIONS, KNOB_DEFAULTS, KNOBS, NODE_COMPRESSIONS,
    NODE_ENCODINGS, SELECTION_SCORES, TREE_SELECTIONS, Knob, recorded_knobs,
)
from sharedllm.knob_rules import MODEL_TYPE, KnobRules


class SharedLLMConfig(KnobRules, PretrainedConfig):
    r"""
    Configuration of a SharedLLM model: a base causal LM (`text_config`) used twice, as the lower model (its
    embedding and bottom `n_injected_layers` layers, which compress the context) and as the upper model (the whole
    LM, which reads the decoder window and cross-attends to the compressed context in its bottom layers).

    Args:
        text_config: config of the base causal LM (Llama, Mistral, Qwen2, ...).
        base_model: local path or hub id the base weights are loaded from by `from_pretrained`.
        base_fingerprint: digest of the base weights (see `loading.base_fingerprint`), checked at load time.
        **knobs: the method's knobs (`n_injected_layers` = M, `chunk_size` = C, `decoder_window` = Ld, `tree_depth`
            = D, `tokens_per_node` = P, ...): their types, defaults, valid values and meaning are the `KNOBS` table
            of sharedllm.knobs, the one place every command's flags are derived from (`sharedllm.flags`).
        adapter_sha256: digest of the saved adapter weights file, written by `save_pretrained`, checked at load.
        lora_sha256: digest of the saved LoRA's weights file (`upper_lora/`), likewise; None without a LoRA and in
            adapters saved before 2026-12-07, whose LoRA loads unchecked.
    """

    model_type = MODEL_TYPE
    sub_configs = {"text_config": AutoConfig}

    def __init__(
        self,
        text_config=None,
        base_model: str | None = None,
        base_fingerprint: str | None = None,
        adapter_sha256: str | None = None,
        lora_sha256: str | None = None,
        **kwargs,
    ):
        if isinstance(text_config, dict):
            text_config = AutoConfig.for_model(**text_config)
        self.text_config = text_config
        self.base_model = base_model
        self.base_fingerprint = base_fingerprint
        for name, knob in KNOBS.items():  # defaults come from the one table
            setattr(self, name, kwargs.pop(name, knob.default))
        self.adapter_sha256 = adapter_sha256
        self.lora_sha256 = lora_sha256
        if text_config is not None:
            # PretrainedConfig pushes its attention implementation down into text_config, which may be the base
            # model's own config object: default it to the base's so building this config never changes the base
            kwargs.setdefault("attn_implementation", text_config._attn_implementation)
        super().__init__(**kwargs)
        self.validate_knobs()

    def to_dict(self) -> dict:
        output = super().to_dict()
        # the base's own config records where this machine loaded it from (a cache path); a saved adapter names its
        # base by the portable `base_model` instead, so its config.json holds no machine path
        if output.get("text_config") is not None and self.base_model is not None:
            output["text_config"]["_name_or_path"] = self.base_model
        return output

    def get_text_config(self, decoder=None, encoder=None) -> PretrainedConfig:
        # The upper model's self-attention cache and generation settings are the base model's.
        return self.text_config


# when this module is the first to import transformers' auto classes, the import hook in sharedllm/__init__.py
# finds it half-initialised and leaves the registration to it
AutoConfig.register(MODEL_TYPE, SharedLLMConfig, exist_ok=True)
