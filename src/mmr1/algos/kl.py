"""Per-token KL estimators of KL[pi_theta || pi_ref] from sampled-token log-probs (Schulman's k1/k2/k3).

All four methods put the KL in the loss, not the reward (METHODS §5.1). Vision-R1, OThink-MR1 and Retrv-R1 use
k3 = pi_ref/pi - log(pi_ref/pi) - 1 (§2.4, §3.2); MMSearch-R1 uses verl's ``low_var_kl``, k3 clamped to
[-10, 10] (§4.4). k3 is unbiased and always >= 0; k1 is unbiased but can be negative; k2 is biased but low
variance.
"""

from __future__ import annotations

from typing import Callable

import torch


def kl_k1(logp: torch.Tensor, ref_logp: torch.Tensor) -> torch.Tensor:
    """k1 = log pi - log pi_ref."""
    return logp - ref_logp


def kl_k2(logp: torch.Tensor, ref_logp: torch.Tensor) -> torch.Tensor:
    """k2 = 1/2 (log pi - log pi_ref)^2."""
    return 0.5 * (logp - ref_logp).square()


def kl_k3(logp: torch.Tensor, ref_logp: torch.Tensor) -> torch.Tensor:
    """k3 = exp(ref - logp) - (ref - logp) - 1 (tiny-grpo ``approx_kl_divergence``)."""
    d = ref_logp - logp
    return d.exp() - d - 1


def kl_low_var(logp: torch.Tensor, ref_logp: torch.Tensor, clamp: float = 10.0) -> torch.Tensor:
    """verl ``low_var_kl``: k3 clamped to [-clamp, clamp].

    As in verl the log-ratio is first clamped to [-20, 20] so exp() cannot overflow; any point where that
    inner clamp bites already gives an output beyond +-10, so the values are the same as plain clamped k3.
    """
    d = (ref_logp - logp).clamp(-20.0, 20.0)
    return (d.exp() - d - 1).clamp(-clamp, clamp)


KL_ESTIMATORS: dict[str, Callable[[torch.Tensor, torch.Tensor], torch.Tensor]] = {
    "k1": kl_k1,
    "k2": kl_k2,
    "k3": kl_k3,
    "low_var_kl": kl_low_var,
}


def kl_penalty(logp: torch.Tensor, ref_logp: torch.Tensor, kind: str = "k3",
               clamp: float | None = None) -> torch.Tensor:
    """Per-token KL estimate of ``kind``; ``clamp`` bounds the result to [-clamp, clamp] (``low_var_kl``: 10)."""
    try:
        fn = KL_ESTIMATORS[kind]
    except KeyError:
        raise ValueError(f"unknown kl_estimator {kind!r}; choose from {sorted(KL_ESTIMATORS)}") from None
    if kind == "low_var_kl":
        return kl_low_var(logp, ref_logp, 10.0 if clamp is None else clamp)
    kl = fn(logp, ref_logp)
    return kl if clamp is None else kl.clamp(-clamp, clamp)
