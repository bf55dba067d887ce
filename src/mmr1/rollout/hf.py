"""Batched generation with HF `generate` (the reference engine; CPU and GPU)."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..data.encode import to_device


@dataclass
class Completion:
    token_ids: list[int]
    text: str
    finish_reason: str  # "stop" (an end token was sampled) or "length"


@torch.no_grad()
def generate(lm, prompts: list[tuple[list[dict], list]], *, max_new_tokens: int, do_sample: bool = False,
             temperature: float = 1.0, top_p: float = 1.0, batch_size: int = 32, progress=None,
             device=None) -> list[Completion]:
    """Generate one completion per (messages, images) prompt, in order."""
    model, processor, adapter = lm.model, lm.processor, lm.adapter
    tok = processor.tokenizer
    device = device or next(model.parameters()).device
    end_ids = [tok.convert_tokens_to_ids(t) for t in adapter.end_tokens()]
    suppress = adapter.suppressed_token_ids(tok)
    was_training = model.training
    model.eval()
    out: list[Completion] = []
    for start in range(0, len(prompts), batch_size):
        chunk = prompts[start:start + batch_size]
        texts = [adapter.render(processor, msgs, add_generation_prompt=True) for msgs, _ in chunk]
        images = [ims for _, ims in chunk]
        batch = to_device(adapter.encode(processor, texts, images if any(images) else None, "left"), device)
        gen_kwargs = dict(max_new_tokens=max_new_tokens, do_sample=do_sample, eos_token_id=end_ids,
                          pad_token_id=tok.pad_token_id, suppress_tokens=suppress)
        if do_sample:
            gen_kwargs.update(temperature=temperature, top_p=top_p, top_k=0)
        seqs = model.generate(**batch, **gen_kwargs)
        new = seqs[:, batch["input_ids"].shape[1]:].tolist()
        for ids in new:
            stop = next((i for i, t in enumerate(ids) if t in end_ids), None)
            kept = ids[: stop + 1] if stop is not None else ids
            text = tok.decode([t for t in kept if t not in end_ids], skip_special_tokens=False)
            out.append(Completion(kept, text, "stop" if stop is not None else "length"))
        if progress is not None:
            progress(len(chunk))
    if was_training:
        model.train()
    return out
