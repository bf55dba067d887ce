"""Outcome advantages: one scalar reward per completion in, one advantage per completion out.

GRPO (METHODS §5.1) centres each reward on its group mean and, optionally, divides by the group std.
The methods differ only in the std estimator and epsilon:

- R1-V / OThink-MR1 (§3.1): ``(r - mean) / (std + 1e-4)`` with torch's unbiased std;
- MMSearch-R1 / verl (§4.4): ``(r - mean) / (std + 1e-6)``, unbiased std.

RLOO uses a leave-one-out baseline: ``r_i - mean_{j != i} r_j``.

``groups`` is either an int G (the batch is laid out contiguously as P prompts x G completions, N = P*G)
or one group id per sample (a tensor, or any sequence of hashables such as prompt uids).
"""

from __future__ import annotations

from typing import Callable, Hashable, Sequence, Union

import torch

Groups = Union[int, torch.Tensor, Sequence[Hashable]]


def group_index(groups: Groups, n: int, device: torch.device | None = None) -> tuple[torch.Tensor, int]:
    """Map ``groups`` to (a LongTensor [n] of group indices 0..K-1, K)."""
    if isinstance(groups, bool):
        raise TypeError("groups must be a group size (int) or per-sample group ids, not a bool")
    if isinstance(groups, int):
        if groups < 1 or n % groups:
            raise ValueError(f"group_size {groups} does not divide the batch of {n} rewards")
        return torch.arange(n, device=device) // groups, n // groups
    if isinstance(groups, torch.Tensor):
        if groups.shape != (n,):
            raise ValueError(f"group ids have shape {tuple(groups.shape)}, expected ({n},)")
        uniq, idx = torch.unique(groups, return_inverse=True)
        return idx.to(device), int(uniq.numel())
    ids = list(groups)
    if len(ids) != n:
        raise ValueError(f"got {len(ids)} group ids for {n} rewards")
    first: dict = {}
    idx = [first.setdefault(g, len(first)) for g in ids]
    return torch.tensor(idx, dtype=torch.long, device=device), len(first)


def _group_sums(values: torch.Tensor, idx: torch.Tensor, k: int) -> torch.Tensor:
    return torch.zeros(k, dtype=values.dtype, device=values.device).index_add_(0, idx, values)


def _as_float(rewards: torch.Tensor) -> torch.Tensor:
    rewards = torch.as_tensor(rewards)
    if rewards.dim() != 1:
        raise ValueError(f"rewards must be 1-D [N], got shape {tuple(rewards.shape)}")
    return rewards if rewards.is_floating_point() else rewards.to(torch.get_default_dtype())


def _group_std(rewards, idx, k, count, mean, unbiased: bool) -> torch.Tensor:
    dev = rewards - mean[idx]
    ss = _group_sums(dev * dev, idx, k)
    denom = (count - 1).clamp(min=1) if unbiased else count
    return (ss / denom).sqrt()


@torch.no_grad()
def grpo_advantages(rewards: torch.Tensor, groups: Groups, *, scale_std: bool = True, eps: float = 1e-6,
                    unbiased: bool = True, singleton: str = "zero") -> torch.Tensor:
    """GRPO group-normalised advantages ``(r - mean_g) / (std_g + eps)`` (METHODS §5.1, §3.1, §4.4).

    ``scale_std=False`` keeps only the centring (Dr. GRPO). A group whose rewards are all equal gets 0.
    A singleton group has no baseline: ``singleton="zero"`` gives it advantage 0 (no signal), while
    ``singleton="raw"`` reproduces verl/MMSearch-R1, which sets mean 0 and std 1 (so A = r / (1 + eps)).
    """
    rewards = _as_float(rewards)
    idx, k = group_index(groups, rewards.numel(), rewards.device)
    count = _group_sums(torch.ones_like(rewards), idx, k)
    mean = _group_sums(rewards, idx, k) / count
    std = _group_std(rewards, idx, k, count, mean, unbiased)
    alone = count == 1
    if singleton == "raw":
        mean = torch.where(alone, torch.zeros_like(mean), mean)
        std = torch.where(alone, torch.ones_like(std), std)
    elif singleton != "zero":
        raise ValueError(f"singleton must be 'zero' or 'raw', got {singleton!r}")
    adv = rewards - mean[idx]
    if scale_std:
        adv = adv / (std[idx] + eps)
    return adv


@torch.no_grad()
def rloo_advantages(rewards: torch.Tensor, groups: Groups, *, scale_std: bool = False, eps: float = 1e-6,
                    unbiased: bool = True) -> torch.Tensor:
    """REINFORCE leave-one-out: ``r_i - mean of the other G-1 rewards`` (equals ``G/(G-1) * (r_i - mean)``).

    A singleton group gets 0. ``scale_std=True`` additionally divides by ``std_g + eps`` so the same
    config knob means the same thing for both estimators.
    """
    rewards = _as_float(rewards)
    idx, k = group_index(groups, rewards.numel(), rewards.device)
    count = _group_sums(torch.ones_like(rewards), idx, k)
    total = _group_sums(rewards, idx, k)
    others = (count[idx] - 1).clamp(min=1)
    adv = rewards - (total[idx] - rewards) / others
    adv = torch.where(count[idx] > 1, adv, torch.zeros_like(adv))
    if scale_std:
        std = _group_std(rewards, idx, k, count, total / count, unbiased)
        adv = adv / (std[idx] + eps)
    return adv


ADVANTAGES: dict[str, Callable[..., torch.Tensor]] = {
    "grpo": grpo_advantages,
    "rloo": rloo_advantages,
}


def compute_advantages(estimator: str, rewards: torch.Tensor, groups: Groups, **kwargs) -> torch.Tensor:
    """Look up ``estimator`` in ``ADVANTAGES`` and call it (``scale_std``, ``eps``, ``unbiased`` pass through)."""
    try:
        fn = ADVANTAGES[estimator]
    except KeyError:
        raise ValueError(f"unknown advantage estimator {estimator!r}; choose from {sorted(ADVANTAGES)}") from None
    return fn(rewards, groups, **kwargs)
