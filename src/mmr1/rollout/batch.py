"""Prompts and sampled completions as model batches.

The engine and the trainer must see exactly the same token ids: completions are
appended as ids (never re-tokenised from text) to the same rendered prompt.

Two layouts, both scored by `mmr1.models.forward.completion_logprobs`:
- `build_batch`: one row per (prompt, completion), the prompt repeated in every row;
- `build_grouped_batch`: each distinct prompt once (left-padded, with its images) plus
  one row of completion tokens per completion. The trainer uses this one: the prompt,
  images included, is run once per group and its keys/values are shared by the G
  completions (the prompt's share of the compute falls by a factor of G).
"""

from __future__ import annotations

import torch

from ..models.forward import rope_positions
from ..models.overrides import OVERRIDES_KEY, prompt_overrides

Prompt = tuple  # (messages, images[, EmbedOverrides]): chat messages in the repo's schema, PIL images, and
# optionally the input embeddings of placeholder tokens (models/overrides.py)


def encode_prompts(lm, prompts: list[Prompt], padding_side: str = "left") -> dict:
    """Render prompts with the generation header and encode them with their images."""
    texts = [lm.adapter.render(lm.processor, p[0], add_generation_prompt=True) for p in prompts]
    images = [list(p[1] or []) for p in prompts]
    return lm.adapter.encode(lm.processor, texts, images if any(images) else None, padding_side)


def _unique_prompts(prompts: list[Prompt]) -> tuple[list[Prompt], list[int]]:
    """Encode each prompt object once: a GRPO batch repeats every prompt G times."""
    index: dict[int, int] = {}
    uniq, which = [], []
    for p in prompts:
        if id(p) not in index:
            index[id(p)] = len(uniq)
            uniq.append(p)
        which.append(index[id(p)])
    return uniq, which


def _completion_ids(completions: list) -> list[list[int]]:
    return [list(getattr(c, "token_ids", c)) for c in completions]


def build_batch(lm, prompts: list[Prompt], completions: list, padding_side: str = "right") -> dict:
    """One row per (prompt, completion); completions are token-id lists or `Completion`s.

    Returns the model inputs (input_ids, attention_mask, mm_token_type_ids,
    position_ids, pixel_values, image_grid_thw) plus `completion_mask` [B, T]
    (1 on completion tokens) and `token_mask` [B, Tc] (1 where row b has a j-th
    completion token), as `completion_logprobs` expects. Tensors are on the CPU.
    """
    if len(prompts) != len(completions):
        raise ValueError(f"{len(prompts)} prompts but {len(completions)} completions")
    if padding_side not in ("left", "right"):
        raise ValueError(f"padding_side must be 'left' or 'right', not {padding_side!r}")
    comp = _completion_ids(completions)
    uniq, which = _unique_prompts(prompts)
    enc = encode_prompts(lm, uniq, "right")
    lens = enc["attention_mask"].sum(1).tolist()
    grid = enc.get("image_grid_thw")
    # Slices of pixel_values / image_grid_thw that belong to each unique prompt.
    img_counts = [len(p[1] or []) for p in uniq]
    img_start = [sum(img_counts[:i]) for i in range(len(uniq))]
    patches = grid.prod(-1).tolist() if grid is not None else []
    patch_start = [sum(patches[:i]) for i in range(len(patches) + 1)]

    B = len(prompts)
    T = max(lens[u] + len(c) for u, c in zip(which, comp))
    Tc = max(1, max(len(c) for c in comp))
    input_ids, attn, mm, cmask, token_mask = blank_rows(lm, B, T, Tc)
    pv, grids = [], []
    for b, (u, c) in enumerate(zip(which, comp)):
        n_p, n = lens[u], lens[u] + len(c)
        s = 0 if padding_side == "right" else T - n
        input_ids[b, s:s + n_p] = enc["input_ids"][u, :n_p]
        input_ids[b, s + n_p:s + n] = torch.tensor(c, dtype=torch.long)
        attn[b, s:s + n] = 1
        mm[b, s:s + n_p] = enc["mm_token_type_ids"][u, :n_p]
        cmask[b, s + n_p:s + n] = 1
        token_mask[b, :len(c)] = 1
        for i in range(img_start[u], img_start[u] + img_counts[u]):
            pv.append(enc["pixel_values"][patch_start[i]:patch_start[i + 1]])
            grids.append(grid[i])
    batch = vision_batch(lm, input_ids, attn, mm, pv, grids)
    batch["completion_mask"] = cmask
    batch["token_mask"] = token_mask
    if (ov := prompt_overrides(uniq)) is not None:
        batch[OVERRIDES_KEY] = [ov[u] for u in which]
    return batch


def blank_rows(lm, B: int, T: int, Tc: int):
    """Empty (input_ids, attention_mask, mm_token_type_ids, completion_mask) [B, T] and token_mask [B, Tc]."""
    pad = lm.tokenizer.pad_token_id
    input_ids = torch.full((B, T), pad if pad is not None else 0, dtype=torch.long)
    zeros = [torch.zeros((B, T), dtype=torch.long) for _ in range(3)]
    return input_ids, *zeros, torch.zeros((B, Tc), dtype=torch.long)


def vision_batch(lm, input_ids, attn, mm, pv: list, grids: list) -> dict:
    """Token rows plus every image's pixel values and grid, in order, with the model's rope positions."""
    batch = {"input_ids": input_ids, "attention_mask": attn, "mm_token_type_ids": mm}
    if pv:
        batch["pixel_values"] = torch.cat(pv)
        batch["image_grid_thw"] = torch.stack(grids)
    batch["position_ids"] = rope_positions(lm.model, batch)
    return batch


PROMPT_KEYS = ("input_ids", "attention_mask", "mm_token_type_ids", "position_ids")


def build_grouped_batch(lm, prompts: list[Prompt], completions: list) -> dict:
    """One prefix per distinct prompt object, one completion row per (prompt, completion).

    Returns `prompt_input_ids`, `prompt_attention_mask`, `prompt_mm_token_type_ids`,
    `prompt_position_ids` [3, U, P] (the U distinct prompts, left-padded as the rollout
    engine prefills them), `pixel_values` / `image_grid_thw` (each image once),
    `row_prompt` [B] (which prompt row b continues), `completion_ids` [B, Tc]
    (right-padded) and `token_mask` [B, Tc]. Tensors are on the CPU.
    """
    if len(prompts) != len(completions):
        raise ValueError(f"{len(prompts)} prompts but {len(completions)} completions")
    comp = _completion_ids(completions)
    uniq, which = _unique_prompts(prompts)
    enc = encode_prompts(lm, uniq, "left")
    enc["position_ids"] = rope_positions(lm.model, enc)
    B, Tc = len(comp), max(1, max((len(c) for c in comp), default=0))
    pad = lm.tokenizer.pad_token_id
    ids = torch.full((B, Tc), pad if pad is not None else 0, dtype=torch.long)
    token_mask = torch.zeros((B, Tc), dtype=torch.long)
    for b, c in enumerate(comp):
        ids[b, :len(c)] = torch.tensor(c, dtype=torch.long)
        token_mask[b, :len(c)] = 1
    batch = {f"prompt_{k}": enc[k] for k in PROMPT_KEYS}
    for k in ("pixel_values", "image_grid_thw"):
        if enc.get(k) is not None:
            batch[k] = enc[k]
    if (ov := prompt_overrides(uniq)) is not None:
        batch[OVERRIDES_KEY] = ov
    batch["row_prompt"] = torch.tensor(which, dtype=torch.long)
    batch["completion_ids"] = ids
    batch["token_mask"] = token_mask
    return batch
