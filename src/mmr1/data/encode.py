"""Chat templating and tokenisation of samples, with assistant-only loss masks."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..errors import DataError
from .schema import Sample, count_image_parts


@dataclass
class Encoded:
    """One tokenised sample; tensors are 1-D (pixel_values/image_grid_thw per image)."""

    input_ids: torch.Tensor
    labels: torch.Tensor  # -100 outside assistant turns
    mm_token_type_ids: torch.Tensor
    pixel_values: torch.Tensor | None
    image_grid_thw: torch.Tensor | None
    source: str

    def __len__(self) -> int:
        return int(self.input_ids.shape[0])


def with_system(msgs: list[dict], system_prompt: str | None = None) -> list[dict]:
    """Prepend a system message unless the conversation already has one."""
    if system_prompt and not (msgs and msgs[0]["role"] == "system"):
        msgs = [{"role": "system", "content": system_prompt}] + msgs
    return msgs


def assistant_mask(input_ids: list[int], im_start: int, im_end: int, assistant_header: list[int]) -> list[int]:
    """1 on every assistant turn's tokens (its closing <|im_end|> included), 0 elsewhere.

    Works on the token ids after image expansion, so it is multi-turn aware and never
    depends on character offsets.
    """
    mask = [0] * len(input_ids)
    n, h = len(input_ids), len(assistant_header)
    i = 0
    while i < n:
        if input_ids[i] == im_start and input_ids[i + 1:i + 1 + h] == assistant_header:
            j = i + 1 + h
            while j < n and input_ids[j] != im_end:
                mask[j] = 1
                j += 1
            if j < n:
                mask[j] = 1  # learn to stop
            i = j
        i += 1
    return mask


def encode_for_sft(sample: Sample, processor, adapter, max_length: int,
                   system_prompt: str | None = None) -> Encoded:
    msgs = with_system(sample.messages, system_prompt)
    if count_image_parts(msgs) != len(sample.images):
        raise DataError(f"{count_image_parts(msgs)} image placeholders but {len(sample.images)} images",
                        file=sample.source or sample.id, field="images")
    if not any(m["role"] == "assistant" for m in msgs):
        raise DataError("no assistant turn to learn from", file=sample.source or sample.id, field="messages")
    text = adapter.render(processor, msgs, add_generation_prompt=False)
    images = sample.load_images()
    batch = adapter.encode(processor, [text], [images] if images else None, padding_side="right")
    ids = batch["input_ids"][0]
    tok = processor.tokenizer
    header = tok.encode("assistant\n", add_special_tokens=False)
    mask = assistant_mask(ids.tolist(), tok.convert_tokens_to_ids("<|im_start|>"),
                          tok.convert_tokens_to_ids("<|im_end|>"), header)
    labels = torch.where(torch.tensor(mask, dtype=torch.bool), ids, torch.full_like(ids, -100))
    mm = batch["mm_token_type_ids"][0]
    if len(ids) > max_length:
        if bool(mm[max_length:].any()):
            raise DataError(f"{len(ids)} tokens exceed trainer.max_length={max_length} inside the image tokens",
                            file=sample.source or sample.id)
        ids, labels, mm = ids[:max_length], labels[:max_length], mm[:max_length]
    return Encoded(ids, labels, mm, batch.get("pixel_values"), batch.get("image_grid_thw"),
                   sample.source or sample.id)


def collate(items: list[Encoded], pad_id: int) -> dict:
    """Right-pad a list of encoded samples into one model batch."""
    T = max(len(x) for x in items)
    B = len(items)
    input_ids = torch.full((B, T), pad_id, dtype=torch.long)
    labels = torch.full((B, T), -100, dtype=torch.long)
    attn = torch.zeros((B, T), dtype=torch.long)
    mm = torch.zeros((B, T), dtype=torch.long)
    for b, x in enumerate(items):
        n = len(x)
        input_ids[b, :n], labels[b, :n], attn[b, :n], mm[b, :n] = x.input_ids, x.labels, 1, x.mm_token_type_ids
    batch = {"input_ids": input_ids, "attention_mask": attn, "labels": labels, "mm_token_type_ids": mm}
    pv = [x.pixel_values for x in items if x.pixel_values is not None]
    if pv:
        batch["pixel_values"] = torch.cat(pv)
        batch["image_grid_thw"] = torch.cat([x.image_grid_thw for x in items if x.image_grid_thw is not None])
    return batch


def to_device(batch: dict, device) -> dict:
    return {k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in batch.items()}
