"""Forward passes that compute logits only where they are needed.

A full-vocabulary projection over every prompt position is most of the memory
of a VLM training step; SFT and RL only need logits at target positions.
"""

from __future__ import annotations

import torch

MODEL_INPUT_KEYS = ("input_ids", "attention_mask", "pixel_values", "image_grid_thw", "mm_token_type_ids",
                    "position_ids")


def unwrap(model):
    """The HF ...ForConditionalGeneration under a peft wrapper (LoRA layers stay injected)."""
    inner = model
    while hasattr(inner, "base_model") and hasattr(inner, "peft_config"):
        inner = inner.base_model.model
    return inner


def hidden_states(model, batch: dict) -> torch.Tensor:
    """Last hidden states [B, T, H] of the language model for a batch of model inputs."""
    hf = unwrap(model)
    inputs = {k: batch[k] for k in MODEL_INPUT_KEYS if k in batch and batch[k] is not None}
    out = hf.model(**inputs, use_cache=False, return_dict=True)
    return out.last_hidden_state


def shift_labels(labels: torch.Tensor) -> torch.Tensor:
    """targets[t] = labels[t+1]; positions with no next-token label get -100."""
    targets = torch.full_like(labels, -100)
    targets[:, :-1] = labels[:, 1:]
    return targets
