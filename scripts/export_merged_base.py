"""Write the base model with an adapter's LoRA merged into its weights, as a plain transformers model folder.

    python scripts/export_merged_base.py ADAPTER OUT

What it is for: the baselines of `sharedllm eval` (window, full, streaming, ...) run on the plain base; given
`--base OUT` they run on the LoRA'd base instead, e.g. the window floor of the same weights the adapter reads its
context with, which separates what a LoRA gains by reading more context from what it gains on the window alone.
"""

import argparse
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM

from sharedllm import SharedLLMForCausalLM
from sharedllm.lora import LORA_DIR, has_upper_lora


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("adapter", type=Path, help="an adapter folder with an upper_lora/ (trained with --lora-rank)")
    parser.add_argument("out", type=Path, help="the folder to write (config, safetensors, tokenizer)")
    args = parser.parse_args()
    if not has_upper_lora(args.adapter):
        raise SystemExit(f"{args.adapter} has no {LORA_DIR}/: its base is the plain base")

    model = SharedLLMForCausalLM.from_pretrained(args.adapter)  # the LoRA merged into the base weights
    merged = {}  # peft keeps W in `<module>.base_layer` beside lora_A/lora_B: the plain model's names are without it
    for name, tensor in model.base.state_dict().items():
        if "lora_" not in name:
            merged[name.replace(".base_layer.", ".")] = tensor
    plain = AutoModelForCausalLM.from_config(model.base.config)
    plain.load_state_dict(merged, strict=True)
    ids = torch.arange(1, 65)[None]  # the exported model computes what the merged base computes
    with torch.no_grad():
        if not torch.allclose(plain.eval()(ids).logits, model.base(ids).logits, atol=1e-4):
            raise SystemExit("the exported model's logits differ from the merged base's: not written")
    plain.save_pretrained(args.out)
    if model.tokenizer is not None:
        model.tokenizer.save_pretrained(args.out)
    print(f"wrote {args.out}: the base of {args.adapter} with its LoRA merged")


if __name__ == "__main__":
    main()
