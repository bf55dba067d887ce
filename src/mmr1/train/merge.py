"""LoRA merged into whole weights, by name, without `merge_and_unload` (a sharded model cannot be deep-copied and
merged): the one formula behind the saved final checkpoint and the weights pushed to a vLLM engine."""

from __future__ import annotations

import torch

PEFT_PREFIX = "base_model.model."


def lora_layers(model) -> tuple[str | None, dict]:
    """(active adapter, {"<layer>.base_layer.weight": its LoRA layer}) of a PEFT model; (None, {}) otherwise."""
    from peft import PeftModel

    if not isinstance(model, PeftModel):
        return None, {}
    from peft.tuners.lora import LoraLayer

    adapter = model.active_adapter if isinstance(model.active_adapter, str) else model.active_adapter[0]
    layers = {}
    for name, module in model.named_modules():
        if not isinstance(module, LoraLayer) or adapter not in module.lora_A:
            continue
        if getattr(module, "fan_in_fan_out", False) or not isinstance(module.base_layer, torch.nn.Linear):
            raise NotImplementedError(f"{name}: merging LoRA weights supports nn.Linear layers only")
        layers[f"{name}.base_layer.weight"] = module
    return adapter, layers


def merge_lora(base: torch.Tensor, a: torch.Tensor, b: torch.Tensor, scaling: float) -> torch.Tensor:
    """W + scaling * B @ A, computed in float32, in W's dtype."""
    return (base.float() + scaling * (b.float() @ a.float())).to(base.dtype)


def hf_name(key: str) -> str:
    """A PEFT model's state-dict key as the plain model's (what `save_pretrained` writes)."""
    return key.removeprefix(PEFT_PREFIX).replace(".base_layer.", ".")


def merged_weights(model, weights: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """What `merge_and_unload().state_dict()` gives, computed from a PEFT model's full state dict."""
    adapter, layers = lora_layers(model)
    out = dict(weights)
    for key, module in layers.items():
        name = key.removesuffix(".base_layer.weight")
        a, b = out.pop(f"{name}.lora_A.{adapter}.weight"), out.pop(f"{name}.lora_B.{adapter}.weight")
        out[key] = merge_lora(out[key], a, b, module.scaling[adapter])
    return {hf_name(k): v for k, v in out.items() if ".lora_" not in k}
