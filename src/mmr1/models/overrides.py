"""Input-embedding overrides: placeholder tokens whose input embeddings are given vectors.

Retrv-R1's compressed candidates (`mmr1.retrieval.compressed`) are 2 placeholder tokens each whose rows
of the LM's input embeddings are the compression module's outputs. This is the one mechanism every
forward that reads a prompt uses: the engine's prefill (`HFEngine`), the agent loop's prefills (shared
prompt or whole context) and the training forwards (`forward.hidden_states`,
`forward.shared_prefix_hidden_states`, so SFT and GRPO).

Why inputs_embeds *with* input_ids: Qwen2.5-VL's model forward (transformers 5.x) accepts both; it then
finds the image placeholders from the ids, scatters the image features into the given embeddings and
derives nothing else from them (positions are passed explicitly here), so images keep working and only
the placeholder rows change. Without overrides nothing is passed and the default path is untouched.

A prompt carries its overrides as a third element, ``(messages, images, EmbedOverrides)``. The values
may be a callable, evaluated at each forward: under ``torch.no_grad`` (rollouts) it costs one module
call, under grad (training) the LM loss reaches whatever produced them (the ICM).

Placeholder choice: ``<|vision_pad|>``, a special token every Qwen2/2.5/3-VL vocabulary (and the tiny
test tokenizer) already has and no processor emits; the adapters already forbid sampling it and the
agent loop strips special tokens from tool text, so it only ever appears where a prompt puts it, and no
embedding matrix has to grow.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Sequence, Union

import torch

PLACEHOLDER = "<|vision_pad|>"
OVERRIDES_KEY = "embed_overrides"  # batch key: one EmbedOverrides (or None) per batch row


@dataclass
class EmbedOverrides:
    """The input embeddings [N, H] of the N occurrences of `token_id` in one prompt, in order."""

    token_id: int
    values: Union[torch.Tensor, Callable[[], torch.Tensor]]

    def tensor(self) -> torch.Tensor:
        return self.values() if callable(self.values) else self.values


def prompt_overrides(prompts: Sequence) -> list | None:
    """Each prompt's EmbedOverrides (its third element) or None; None when no prompt has any."""
    out = [p[2] if len(p) > 2 else None for p in prompts]
    return out if any(o is not None for o in out) else None


def embed_inputs(model, input_ids: torch.Tensor, overrides: Sequence[EmbedOverrides | None]) -> torch.Tensor:
    """inputs_embeds [B, T, H] of `input_ids` with row b's placeholders replaced by ``overrides[b]``.

    `model` is the HF model (anything with get_input_embeddings). A row whose override is None must hold
    no placeholder of any override's token; counts must match exactly (a mismatch is a bug upstream)."""
    if len(overrides) != input_ids.shape[0]:
        raise ValueError(f"{len(overrides)} overrides for {input_ids.shape[0]} rows")
    emb = model.get_input_embeddings()(input_ids)
    ids = {o.token_id for o in overrides if o is not None}
    if not ids:
        return emb
    if len(ids) > 1:
        raise ValueError(f"overrides of one batch use several placeholder tokens: {sorted(ids)}")
    mask = input_ids == ids.pop()
    vals = []
    for b, o in enumerate(overrides):
        n = int(mask[b].sum())
        v = o.tensor() if o is not None else emb.new_zeros(0, emb.shape[-1])
        if v.dim() != 2 or v.shape[0] != n or v.shape[1] != emb.shape[-1]:
            raise ValueError(f"row {b}: {n} placeholder tokens but override values of shape {tuple(v.shape)} "
                             f"(hidden size {emb.shape[-1]})")
        vals.append(v.to(emb.device, emb.dtype))
    return emb.masked_scatter(mask.unsqueeze(-1), torch.cat(vals))


__all__ = ["EmbedOverrides", "OVERRIDES_KEY", "PLACEHOLDER", "embed_inputs", "prompt_overrides"]
