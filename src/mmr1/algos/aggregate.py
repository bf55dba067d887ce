"""Reducing a per-token loss [B, T] under a 0/1 mask to a scalar.

The aggregation is a real algorithmic choice (METHODS §5.1 knob table):

- ``token-mean``: every masked token in the micro-batch weighs the same (verl default; MMSearch-R1, Vision-R1).
- ``seq-mean-token-mean``: mean over each sequence's tokens, then over sequences (GRPO paper, R1-V/OThink-MR1
  ``1/G sum_i 1/|o_i| sum_t``). Sequences with no masked token are left out of the outer mean.
- ``seq-mean-token-sum-norm``: Dr. GRPO, each sequence's token sum divided by a constant ``norm`` (default: T,
  the padded length), then the mean over all B rows. The divisor B*norm does not depend on the lengths,
  which removes GRPO's length bias.
"""

from __future__ import annotations

from typing import Callable

import torch


def at_least_fp32(x: torch.Tensor) -> torch.Tensor:
    """bf16/fp16 -> fp32 (a bf16 token count is exact only up to 256); fp32/fp64 unchanged."""
    return x.to(torch.promote_types(x.dtype, torch.float32)) if x.is_floating_point() else x.float()


def masked_sum(x: torch.Tensor, mask: torch.Tensor, dim: int | None = None) -> torch.Tensor:
    """Sum of ``x`` where ``mask`` is 1 (over everything, or along ``dim``)."""
    x = x * mask
    return x.sum() if dim is None else x.sum(dim)


def masked_mean(x: torch.Tensor, mask: torch.Tensor, dim: int | None = None) -> torch.Tensor:
    """Mean of ``x`` where ``mask`` is 1 (tiny-grpo style); an empty mask gives 0 rather than NaN.
    Computed in at least fp32."""
    x = at_least_fp32(x)
    mask = mask.to(x.dtype)
    count = mask.sum() if dim is None else mask.sum(dim)
    return masked_sum(x, mask, dim) / count.clamp(min=1)


def token_mean(loss: torch.Tensor, mask: torch.Tensor, norm: float | None = None) -> torch.Tensor:
    return masked_mean(loss, mask)


def seq_mean_token_mean(loss: torch.Tensor, mask: torch.Tensor, norm: float | None = None) -> torch.Tensor:
    mask = mask.to(loss.dtype)
    per_seq = masked_mean(loss, mask, dim=-1)
    has_tokens = (mask.sum(-1) > 0).to(loss.dtype)
    return masked_mean(per_seq, has_tokens)


def seq_mean_token_sum_norm(loss: torch.Tensor, mask: torch.Tensor, norm: float | None = None) -> torch.Tensor:
    norm = loss.shape[-1] if norm is None else norm
    per_seq = masked_sum(loss, mask.to(loss.dtype), dim=-1) / norm
    return per_seq.mean()


LOSS_AGG: dict[str, Callable[..., torch.Tensor]] = {
    "token-mean": token_mean,
    "seq-mean-token-mean": seq_mean_token_mean,
    "seq-mean-token-sum-norm": seq_mean_token_sum_norm,
}


def aggregate(loss: torch.Tensor, mask: torch.Tensor, mode: str = "token-mean",
              norm: float | None = None) -> torch.Tensor:
    """Reduce ``loss`` [B, T] under ``mask`` [B, T] with one of ``LOSS_AGG`` (in at least fp32);
    ``norm`` is for Dr. GRPO only."""
    if loss.shape != mask.shape:
        raise ValueError(f"loss {tuple(loss.shape)} and mask {tuple(mask.shape)} must have the same shape")
    try:
        fn = LOSS_AGG[mode]
    except KeyError:
        raise ValueError(f"unknown loss_agg {mode!r}; choose from {sorted(LOSS_AGG)}") from None
    return fn(at_least_fp32(loss), mask, norm)
