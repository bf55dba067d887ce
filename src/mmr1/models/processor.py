"""Processors for the Qwen VL families without the video processor.

transformers 5 type-checks every sub-processor and Qwen's video processor needs
torchvision, which must not be installed on CPU machines. mmr1 trains on images
only, so it builds the processor from the tokenizer and the PIL image processor
itself; the same path serves tiny checkpoints and real ones.
"""

from __future__ import annotations

from pathlib import Path

from transformers import AutoTokenizer
from transformers.models.qwen2_5_vl.processing_qwen2_5_vl import Qwen2_5_VLProcessor
from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil
from transformers.models.qwen2_vl.processing_qwen2_vl import Qwen2VLProcessor
from transformers.models.qwen3_vl.processing_qwen3_vl import Qwen3VLProcessor


class ImageOnlyQwen2VLProcessor(Qwen2VLProcessor):
    def __init__(self, image_processor=None, tokenizer=None, chat_template=None, **kwargs):
        super().__init__(image_processor, tokenizer, None, chat_template=chat_template, **kwargs)


class ImageOnlyQwen2_5_VLProcessor(Qwen2_5_VLProcessor):
    def __init__(self, image_processor=None, tokenizer=None, chat_template=None, **kwargs):
        super().__init__(image_processor, tokenizer, None, chat_template=chat_template, **kwargs)


class ImageOnlyQwen3VLProcessor(Qwen3VLProcessor):
    def __init__(self, image_processor=None, tokenizer=None, chat_template=None, **kwargs):
        super().__init__(image_processor, tokenizer, None, chat_template=chat_template, **kwargs)


PROCESSOR_CLASSES = {
    "qwen2_vl": ImageOnlyQwen2VLProcessor,
    "qwen2_5_vl": ImageOnlyQwen2_5_VLProcessor,
    "qwen3_vl": ImageOnlyQwen3VLProcessor,
}


def chat_template_of(path: Path, tokenizer) -> str | None:
    """The processor's chat template if the checkpoint ships one, else the tokenizer's."""
    for name in ("chat_template.jinja", "chat_template.json"):
        f = path / name
        if f.exists():
            text = f.read_text()
            if name.endswith(".json"):
                import json

                return json.loads(text)["chat_template"]
            return text
    return getattr(tokenizer, "chat_template", None)


def size_dict(size) -> dict:
    """An image processor's `size` as a plain dict (transformers 5 holds a SizeDict, older ones a mapping)."""
    if size is None:
        return {}
    if isinstance(size, dict):
        return dict(size)
    return {k: getattr(size, k) for k in ("shortest_edge", "longest_edge") if getattr(size, k, None) is not None}


def load_processor(path: str | Path, family: str, min_pixels: int | None = None,
                   max_pixels: int | None = None):
    path = Path(path)
    tokenizer = AutoTokenizer.from_pretrained(path, padding_side="left")
    image_processor = Qwen2VLImageProcessorPil.from_pretrained(path)
    if min_pixels is not None or max_pixels is not None:
        size = size_dict(image_processor.size)
        if min_pixels is not None:
            size["shortest_edge"] = min_pixels
        if max_pixels is not None:
            size["longest_edge"] = max_pixels
        image_processor.size = size
    cls = PROCESSOR_CLASSES[family]
    return cls(image_processor=image_processor, tokenizer=tokenizer,
               chat_template=chat_template_of(path, tokenizer))
