"""Optional LoRA on the upper model, saved next to the adapter in `upper_lora/`.

Cross injection: on the upper-only layers M..N-1. The bottom M layers are both the lower model (the context
encoder) and the bottom of the upper model: adapting them would change the context encoding too, so LoRA never
goes there and the context encoder stays the frozen base.
Joint injection has no adapter module: the LoRA is what trains, on every layer (the window reads its context with
the layers' own attention, so that is where reading can be learned). The context is then encoded *with* the LoRA,
as at inference, but without gradient through the encoding (`ContextEncoder.run_lower` is gradient-free): the LoRA
learns from the window's side, through the queries, keys and values that read the context.
The LoRA is injected in place into the base (no PeftModel wrapper), so SharedLLM keeps calling the same modules.
`SharedLLMForCausalLM.save_pretrained` writes it when present and `from_pretrained` puts it back, so a LoRA-trained
adapter is never loaded without it. For inference `from_pretrained` also merges it into the base weights (W + s B A):
the same function without a second pair of matmuls per projection (unmerged, a forward pass over an 8K prompt took
1.34x as long: scripts/bench_lora_merge.py).
The LoRA weights stay beside the merged ones, so its fingerprint and `save_pretrained` do not change, and
`model.train()` unmerges it again (a merged LoRA would get no gradient).
"""

from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

LORA_DIR = "upper_lora"
LORA_WEIGHTS = "adapter_model.safetensors"
LORA_TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


def has_upper_lora(adapter: str | Path) -> bool:
    """Whether an adapter folder holds a LoRA (`upper_lora/`), which loading it injects into its base in place."""
    return (Path(adapter) / LORA_DIR).is_dir()


def upper_lora_rank(adapter: str | Path) -> int:
    """The rank of the LoRA an adapter folder holds (`has_upper_lora`)."""
    from peft import LoraConfig

    return LoraConfig.from_pretrained(str(Path(adapter) / LORA_DIR)).r


def first_lora_layer(injection: str, n_injected_layers: int) -> int:
    """A LoRA adapts layers first..N-1: M..N-1 under cross injection, all N under joint injection (module doc)."""
    return 0 if injection == "joint" else n_injected_layers


def lora_layers(config) -> list[int]:
    first = first_lora_layer(config.injection, config.n_injected_layers)
    return list(range(first, config.text_config.num_hidden_layers))


def upper_lora_config(model, rank: int):
    from peft import LoraConfig

    layers = lora_layers(model.config)
    if not layers:
        raise ValueError(f"cross injection into all {model.config.n_injected_layers} layers leaves no upper-only layer "
                         "for a LoRA: inject fewer layers, or use injection='joint'")
    return LoraConfig(
        r=rank,
        lora_alpha=2 * rank,
        lora_dropout=0.0,
        target_modules=LORA_TARGETS,
        layers_to_transform=layers,
        layers_pattern="layers",
    )


def add_upper_lora(model, rank: int) -> None:
    from peft import inject_adapter_in_model

    inject_adapter_in_model(upper_lora_config(model, rank), model.base)


def lora_modules(module: torch.nn.Module) -> list:
    """The LoRA'd layers peft injected into `module` in place."""
    from peft.tuners.tuners_utils import BaseTunerLayer

    return [m for m in module.modules() if isinstance(m, BaseTunerLayer)]


def merge_upper_lora(model) -> None:
    """Fold the injected LoRA into the base weights for inference (module doc)."""
    for layer in lora_modules(model.base):
        if not layer.merged:
            layer.merge()


def unmerge_upper_lora(model) -> None:
    """Undo `merge_upper_lora`, so that the LoRA computes beside the base weights again and can train."""
    for layer in lora_modules(model.base):
        if layer.merged:
            layer.unmerge()


def lora_state_dict(model) -> dict[str, torch.Tensor]:
    return {name: p.detach().contiguous() for name, p in model.base.named_parameters() if "lora_" in name}


def lora_fingerprint(model) -> str | None:
    """A digest of the injected LoRA's weights (None without one): part of what a context cache was encoded with,
    since under joint injection the LoRA changes the context's keys and values."""
    from sharedllm.loading import weights_fingerprint

    lora = lora_state_dict(model)
    return weights_fingerprint(lora) if lora else None


def save_upper_lora(model, directory: str | Path) -> None:
    """Write the base's injected LoRA (config + safetensors) into `directory`."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    model.base.peft_config["default"].save_pretrained(str(directory))
    save_file(lora_state_dict(model), str(directory / LORA_WEIGHTS))


def load_upper_lora(model, directory: str | Path, expected_sha256: str | None = None) -> None:
    """Put a trained upper-layer LoRA (`<adapter>/upper_lora`) onto a loaded SharedLLM model's base, after checking
    its weights file against the digest the adapter's config.json recorded (`lora_sha256`)."""
    from peft import LoraConfig, inject_adapter_in_model

    from sharedllm.loading import check_recorded_sha256

    directory = Path(directory)
    check_recorded_sha256(directory / LORA_WEIGHTS, expected_sha256)
    inject_adapter_in_model(LoraConfig.from_pretrained(str(directory)), model.base)
    weights = load_file(str(directory / LORA_WEIGHTS), device=str(model.base.device))
    missing, unexpected = model.base.load_state_dict(weights, strict=False)
    missing = [name for name in missing if "lora_" in name]
    if missing or unexpected:
        raise ValueError(f"LoRA weights in {directory} do not match: missing {missing}, unexpected {unexpected}")
