"""LoRA merged into whole weights held in a state dict (a sharded model cannot be deep-copied and merged)."""

from __future__ import annotations

import torch


def merged_weights(model, weights: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """What `merge_and_unload().state_dict()` gives, computed from a PEFT model's full state dict:
    W + scaling * B @ A for every LoRA linear layer, keys without the PEFT prefixes."""
    from peft.tuners.lora import LoraLayer

    adapter = model.active_adapter if isinstance(model.active_adapter, str) else model.active_adapter[0]
    out = dict(weights)
    for name, module in model.named_modules():
        if not isinstance(module, LoraLayer) or adapter not in module.lora_A:
            continue
        if getattr(module, "fan_in_fan_out", False) or not isinstance(module.base_layer, torch.nn.Linear):
            raise NotImplementedError(f"{name}: merging gathered LoRA weights supports nn.Linear layers only")
        a = out.pop(f"{name}.lora_A.{adapter}.weight").float()
        b = out.pop(f"{name}.lora_B.{adapter}.weight").float()
        base = out[f"{name}.base_layer.weight"]
        out[f"{name}.base_layer.weight"] = (base.float() + module.scaling[adapter] * (b @ a)).to(base.dtype)
    prefix = "base_model.model."
    return {k.removeprefix(prefix).replace(".base_layer.", "."): v for k, v in out.items() if ".lora_" not in k}
