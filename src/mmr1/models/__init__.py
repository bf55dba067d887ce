"""Model loading, per-family adapters and the tiny-model builder."""

from .adapters import ADAPTERS, QwenVLAdapter, adapter_for_family
from .loading import LoadedModel, load_model
from .tiny import FAMILIES, SIZES, build_tiny_model

__all__ = ["ADAPTERS", "FAMILIES", "SIZES", "LoadedModel", "QwenVLAdapter", "adapter_for_family",
           "build_tiny_model", "load_model"]
