"""Samples, loaders for the methods' public formats, and the synthetic worlds."""

from .schema import Sample, load_image

__all__ = ["Sample", "load_image"]
