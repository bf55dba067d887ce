"""Learning-rate schedules as plain multipliers of the peak LR."""

from __future__ import annotations

import math


def lr_multiplier(step: int, total: int, warmup_ratio: float, kind: str) -> float:
    warmup = int(round(warmup_ratio * total))
    if warmup and step < warmup:
        return (step + 1) / warmup
    if kind == "constant" or total <= warmup:
        return 1.0
    progress = min(1.0, (step - warmup) / max(1, total - warmup))
    if kind == "linear":
        return 1.0 - progress
    if kind == "cosine":
        return 0.5 * (1.0 + math.cos(math.pi * progress))
    raise ValueError(f"unknown lr schedule {kind!r}")
