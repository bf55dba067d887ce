"""Samples, loaders for the methods' public formats, and the synthetic worlds."""

from .check import CheckReport, check_dataset
from .formats import FORMATS, detect_format, parse_record
from .loaders import LoadResult, load_samples, save_jsonl
from .schema import Sample, load_image

__all__ = ["Sample", "load_image", "FORMATS", "detect_format", "parse_record", "LoadResult", "load_samples",
           "save_jsonl", "CheckReport", "check_dataset"]
