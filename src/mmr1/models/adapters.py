"""Per-family adapters: the only place that knows a model family's quirks.

The trainer, the rollout engine and evaluation talk to an adapter; they never
branch on the model family themselves.
"""

from __future__ import annotations

from dataclasses import dataclass

VISION_SPECIAL_TOKENS = ("<|vision_start|>", "<|vision_end|>", "<|vision_pad|>", "<|image_pad|>",
                         "<|video_pad|>", "<|object_ref_start|>", "<|object_ref_end|>", "<|box_start|>",
                         "<|box_end|>", "<|quad_start|>", "<|quad_end|>")


@dataclass(frozen=True)
class QwenVLAdapter:
    family: str
    model_class_name: str
    patch_size: int = 14
    merge_size: int = 2

    def model_class(self):
        import transformers

        return getattr(transformers, self.model_class_name)

    @staticmethod
    def vision_prefixes() -> tuple[str, ...]:
        """Module-name prefixes of the vision tower (the merger/projector included)."""
        return ("model.visual.", "visual.")

    def is_vision_param(self, name: str) -> bool:
        return name.startswith(self.vision_prefixes())

    @staticmethod
    def end_tokens() -> tuple[str, ...]:
        return ("<|im_end|>", "<|endoftext|>")

    def suppressed_token_ids(self, tokenizer) -> list[int]:
        """Tokens a policy must never sample: re-feeding them breaks image-feature alignment."""
        ids = [tokenizer.convert_tokens_to_ids(t) for t in VISION_SPECIAL_TOKENS]
        unk = tokenizer.unk_token_id
        return sorted({i for i in ids if i is not None and i != unk and i >= 0})

    def render(self, processor, messages: list[dict], add_generation_prompt: bool) -> str:
        return processor.apply_chat_template(messages, tokenize=False,
                                             add_generation_prompt=add_generation_prompt)

    def encode(self, processor, texts: list[str], images: list[list] | None, padding_side: str = "left"):
        """Tokenise rendered prompts with their images; returns the model's input dict."""
        flat = [im for per in (images or []) for im in per]
        kwargs = dict(text=texts, return_tensors="pt", padding=True, padding_side=padding_side)
        if flat:
            kwargs["images"] = flat
        batch = processor(**kwargs)
        if "mm_token_type_ids" not in batch:
            import torch

            batch["mm_token_type_ids"] = torch.zeros_like(batch["input_ids"])
        return batch


ADAPTERS = {
    "qwen2_vl": QwenVLAdapter("qwen2_vl", "Qwen2VLForConditionalGeneration"),
    "qwen2_5_vl": QwenVLAdapter("qwen2_5_vl", "Qwen2_5_VLForConditionalGeneration"),
    "qwen3_vl": QwenVLAdapter("qwen3_vl", "Qwen3VLForConditionalGeneration", patch_size=16),
}


def adapter_for_family(family: str) -> QwenVLAdapter:
    try:
        return ADAPTERS[family]
    except KeyError:
        raise ValueError(f"unsupported model family {family!r}; supported: {', '.join(ADAPTERS)}") from None
