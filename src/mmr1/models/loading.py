"""Load a supported VLM from a local checkpoint directory (tiny or real)."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import torch

from ..errors import ModelError
from .adapters import ADAPTERS, QwenVLAdapter, adapter_for_family
from .processor import load_processor


@dataclass
class LoadedModel:
    model: torch.nn.Module
    processor: object
    adapter: QwenVLAdapter
    path: Path

    @property
    def tokenizer(self):
        return self.processor.tokenizer


def detect_family(path: Path) -> str:
    cfg = path / "config.json"
    if not cfg.exists():
        raise ModelError(f"{path}: no config.json; model.path must be a local checkpoint directory "
                         "(build one with `mmr1 tiny-model --out DIR`)")
    model_type = json.loads(cfg.read_text()).get("model_type", "")
    if model_type not in ADAPTERS:
        raise ModelError(f"{cfg}: model_type {model_type!r} is not supported; supported: {', '.join(ADAPTERS)}")
    return model_type


def check_torchvision() -> None:
    """Fail loudly on an importable-but-broken torchvision: it silently breaks Qwen VL imports."""
    import importlib.util

    if importlib.util.find_spec("torchvision") is None:
        return
    try:
        import torchvision  # noqa: F401
        from torchvision.ops import nms  # noqa: F401
    except Exception as e:  # pragma: no cover - depends on the environment
        raise ModelError(f"torchvision is installed but broken ({type(e).__name__}: {e}); "
                         "run `pip uninstall -y torchvision` (mmr1 does not need it)") from None


def load_model(path: str | Path, *, dtype: str = "float32", device: str = "cpu",
               freeze_vision: bool = False, lora: dict | None = None, attn_implementation: str = "sdpa",
               min_pixels: int | None = None, max_pixels: int | None = None) -> LoadedModel:
    check_torchvision()
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()  # per-shard bars drown the run's own progress
    path = Path(path)
    family = detect_family(path)
    adapter = adapter_for_family(family)
    torch_dtype = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}[dtype]
    try:
        model = adapter.model_class().from_pretrained(path, dtype=torch_dtype,
                                                      attn_implementation=attn_implementation)
    except OSError as e:
        raise ModelError(f"{path}: cannot load weights ({e})") from None
    model.to(device)
    processor = load_processor(path, family, min_pixels=min_pixels, max_pixels=max_pixels)
    if freeze_vision:
        for name, p in model.named_parameters():
            if adapter.is_vision_param(name):
                p.requires_grad_(False)
    if lora:
        model = apply_lora(model, adapter, **lora)
    return LoadedModel(model=model, processor=processor, adapter=adapter, path=path)


def apply_lora(model, adapter: QwenVLAdapter, r: int = 16, alpha: int = 32, dropout: float = 0.0,
               target_modules: list[str] | None = None):
    """Wrap the language model's linear layers in LoRA; the vision tower stays as configured."""
    from peft import LoraConfig, get_peft_model

    targets = target_modules or ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
    # A regex keeps LoRA off the vision tower, whose blocks reuse some of these names.
    pattern = r"^(?!.*visual).*\.(" + "|".join(targets) + r")$"
    return get_peft_model(model, LoraConfig(r=r, lora_alpha=alpha, lora_dropout=dropout,
                                            target_modules=pattern, bias="none"))
