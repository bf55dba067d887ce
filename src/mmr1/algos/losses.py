"""The clipped policy-gradient loss and the full GRPO objective (METHODS §5.1).

    L = agg_{i,t in mask}[ -min(rho*A, clip(rho, 1-eps_low, 1+eps_high)*A) ] + beta * agg(KL_t)

``rho = exp(logp - old_logp)`` per token (PPO/GRPO), or one ratio per sequence (GSPO). With one update per
rollout batch (mu = 1) and ``old_logp = logp.detach()``, rho is 1 in value, the clip never bites, and the
gradient is exactly the REINFORCE one ``-A * grad(logp)``; this is what R1-V (and so OThink-MR1) trains with
(§3.2 caveat).

All tensors are [B, T] over completion tokens; ``mask`` is 1 on tokens the model produced (0 on padding and
on tool output, §5.4). Stats are detached 0-d tensors, so logging them costs no device sync until ``.item()``.
"""

from __future__ import annotations

from typing import Sequence, Union

import torch

from .aggregate import aggregate, at_least_fp32, masked_mean
from .kl import kl_penalty

Truncated = Union[torch.Tensor, Sequence[bool], Sequence[str]]


def _token_advantages(advantages: torch.Tensor, logp: torch.Tensor) -> torch.Tensor:
    if advantages.dim() == 1:
        advantages = advantages[:, None]
    return advantages.to(logp.dtype).expand_as(logp)


def _masked_extreme(x: torch.Tensor, mask: torch.Tensor, largest: bool) -> torch.Tensor:
    fill = float("-inf") if largest else float("inf")
    x = x.masked_fill(mask == 0, fill)
    out = x.max() if largest else x.min()
    return torch.where(torch.isfinite(out), out, torch.ones_like(out))


def policy_loss(logp: torch.Tensor, old_logp: torch.Tensor, advantages: torch.Tensor, mask: torch.Tensor, *,
                clip_low: float = 0.2, clip_high: float = 0.2, ratio_level: str = "token",
                loss_agg: str = "token-mean", norm: float | None = None) -> tuple[torch.Tensor, dict]:
    """PPO-clip surrogate with separate eps_low / eps_high (DAPO's clip-higher when eps_high > eps_low).

    ``advantages`` is [B] (one per completion, broadcast over tokens) or [B, T].

    ``ratio_level="token"``: rho_t = exp(logp_t - old_logp_t), with the log-ratio clamped to [-20, 20] as in verl.

    ``ratio_level="sequence"`` (GSPO): s_i = exp(mean_t(logp - old_logp)) over the sequence's masked tokens.
    It is applied per token in the GSPO-token form ``s_i.detach() * exp(logp - logp.detach())``: the value is
    s_i on every token and the gradient is s_i * grad(logp_t). Aggregated with ``seq-mean-token-mean`` this is
    exactly grad(s_i) * A_i, GSPO's sequence objective (the pairing verl uses), and it also accepts per-token
    advantages. The log of s_i is clamped at 10 as in verl.

    Returns ``(loss, stats)``; stats: pg_loss, clip_fraction (tokens where the clip zeroes the gradient),
    clip_fraction_low / _high (rho < 1-eps_low with A < 0 / rho > 1+eps_high with A > 0), ratio_mean /
    ratio_min / ratio_max over masked tokens, approx_kl (k1 of old vs new, mean over masked tokens).
    """
    if not (logp.shape == old_logp.shape == mask.shape):
        raise ValueError(f"logp {tuple(logp.shape)}, old_logp {tuple(old_logp.shape)} and mask "
                         f"{tuple(mask.shape)} must have the same shape [B, T]")
    logp, old_logp = at_least_fp32(logp), at_least_fp32(old_logp)  # ratios in bf16 are too coarse
    mask = mask.to(logp.dtype)
    adv = _token_advantages(advantages, logp)
    log_ratio = logp - old_logp
    if ratio_level == "token":
        ratio = log_ratio.clamp(-20.0, 20.0).exp()
    elif ratio_level == "sequence":
        seq_log_ratio = masked_mean(log_ratio, mask, dim=-1).detach()
        ratio = (logp - logp.detach() + seq_log_ratio[:, None]).clamp(max=10.0).exp()
    else:
        raise ValueError(f"ratio_level must be 'token' or 'sequence', got {ratio_level!r}")

    unclipped = -adv * ratio
    clipped = -adv * ratio.clamp(1.0 - clip_low, 1.0 + clip_high)
    loss = aggregate(torch.maximum(unclipped, clipped), mask, loss_agg, norm)

    with torch.no_grad():
        r = ratio.detach()
        stats = {
            "pg_loss": loss.detach(),
            "clip_fraction": masked_mean((clipped > unclipped).to(logp.dtype), mask),
            "clip_fraction_low": masked_mean(((r < 1.0 - clip_low) & (adv < 0)).to(logp.dtype), mask),
            "clip_fraction_high": masked_mean(((r > 1.0 + clip_high) & (adv > 0)).to(logp.dtype), mask),
            "ratio_mean": masked_mean(r, mask),
            "ratio_min": _masked_extreme(r, mask, largest=False),
            "ratio_max": _masked_extreme(r, mask, largest=True),
            "approx_kl": masked_mean(-log_ratio.detach(), mask),
        }
    return loss, stats


def truncation_mask(truncated: Truncated, mask: torch.Tensor) -> torch.Tensor:
    """Zero the mask of completions that hit the length limit (DAPO's overlong masking, TRL's
    ``mask_truncated_completions``): a cut-off answer is neither right nor wrong, so it should not be trained on.

    ``truncated`` is a bool tensor/list [B], or finish reasons [B] where ``"length"`` means truncated
    (the vLLM / HF convention). The mask keeps its dtype.
    """
    if isinstance(truncated, torch.Tensor):
        cut = truncated.to(device=mask.device, dtype=torch.bool)
    else:
        items = list(truncated)
        cut = torch.tensor([(x == "length") if isinstance(x, str) else bool(x) for x in items],
                           dtype=torch.bool, device=mask.device)
    if cut.shape != mask.shape[:1]:
        raise ValueError(f"truncated has shape {tuple(cut.shape)}, expected ({mask.shape[0]},)")
    keep = ~cut[:, None]
    return mask & keep if mask.dtype == torch.bool else mask * keep.to(mask.dtype)


def grpo_loss(logp: torch.Tensor, old_logp: torch.Tensor | None, advantages: torch.Tensor, mask: torch.Tensor,
              ref_logp: torch.Tensor | None = None, *, beta: float = 0.0, kl_estimator: str = "k3",
              kl_clamp: float | None = None, clip_low: float = 0.2, clip_high: float = 0.2,
              ratio_level: str = "token", loss_agg: str = "token-mean",
              norm: float | None = None) -> tuple[torch.Tensor, dict]:
    """The GRPO objective the trainer calls: ``policy_loss + beta * aggregate(kl_penalty(logp, ref_logp))``.

    ``old_logp=None`` means on-policy (mu = 1): ``logp.detach()`` is used, so rho == 1 (R1-V, §3.2).
    ``beta=0`` needs no reference model; ``ref_logp`` may then be None, and if given the KL is only logged.
    The KL is aggregated with the same ``loss_agg`` as the policy term, as verl does.
    Stats: those of ``policy_loss`` plus ``loss`` and ``kl`` (when ``ref_logp`` is given).
    """
    if old_logp is None:
        old_logp = logp.detach()
    loss, stats = policy_loss(logp, old_logp, advantages, mask, clip_low=clip_low, clip_high=clip_high,
                              ratio_level=ratio_level, loss_agg=loss_agg, norm=norm)
    if beta != 0.0 and ref_logp is None:
        raise ValueError(f"beta={beta} needs ref_logp (reference-model log-probs); pass ref_logp or set beta=0")
    if ref_logp is not None:
        logp, ref_logp = at_least_fp32(logp), at_least_fp32(ref_logp)
        kl = aggregate(kl_penalty(logp, ref_logp, kl_estimator, kl_clamp), mask.to(logp.dtype), loss_agg, norm)
        stats["kl"] = kl.detach()
        if beta != 0.0:
            loss = loss + beta * kl
    stats["loss"] = loss.detach()
    return loss, stats
