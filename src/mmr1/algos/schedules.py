"""Scalars that change over training, behind one interface: ``value(step, total) -> float`` (METHODS §5.3).

- ``OThinkBeta``: OThink-MR1's GRPO-D KL weight beta(s) (§3.2).
- ``RetrvLambda``: Retrv-R1's efficiency-penalty curriculum lambda_i = i / N_iter (§1.5).
- ``SearchPenaltyWarmup``: MMSearch-R1's search penalty ramp from -p (a bonus) to +p (§4.3).
- ``SigmoidDecay``: MMSearch-R1's sigmoid LR multiplier (§4.4).
- ``Constant``, ``Linear``, ``PiecewiseLinear`` for everything else.

``step`` is the number of optimizer steps done so far and ``total`` the planned number, except where a
method's code counts differently (noted on the class). ``make_schedule`` builds any of them from a config dict.
"""

from __future__ import annotations

import dataclasses
import difflib
import math
from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable


@runtime_checkable
class Schedule(Protocol):
    def value(self, step: int, total: int) -> float: ...


def _frac(step: float, total: float) -> float:
    """step / total clamped to [0, 1]."""
    if total <= 0:
        raise ValueError(f"total steps must be positive, got {total}")
    return min(max(step / total, 0.0), 1.0)


class _Base:
    def __call__(self, step: int, total: int) -> float:
        return self.value(step, total)


@dataclass(frozen=True)
class Constant(_Base):
    value_: float

    def value(self, step: int, total: int) -> float:
        return float(self.value_)


@dataclass(frozen=True)
class Linear(_Base):
    """start at step 0, end at step total, held at the ends."""
    start: float
    end: float

    def value(self, step: int, total: int) -> float:
        return self.start + (self.end - self.start) * _frac(step, total)


@dataclass(frozen=True)
class PiecewiseLinear(_Base):
    """Linear interpolation through ``points`` = ((fraction of total, value), ...), held flat outside them."""
    points: tuple

    def __post_init__(self):
        pts = tuple(sorted((float(f), float(v)) for f, v in self.points))
        if not pts:
            raise ValueError("PiecewiseLinear needs at least one (fraction, value) point")
        object.__setattr__(self, "points", pts)

    def value(self, step: int, total: int) -> float:
        x = _frac(step, total)
        pts = self.points
        if x <= pts[0][0]:
            return pts[0][1]
        for (x0, y0), (x1, y1) in zip(pts, pts[1:]):
            if x <= x1:
                return y0 if x1 == x0 else y0 + (y1 - y0) * (x - x0) / (x1 - x0)
        return pts[-1][1]


@dataclass(frozen=True)
class OThinkBeta(_Base):
    """GRPO-D's dynamic KL weight, exactly METHODS §3.2 (paper Eq. 5), with w = w_ratio * t:

        beta(s) = beta_mid - (beta_mid - beta_min) * s / w             if s <= w
        beta(s) = beta_min + (beta_max - beta_min) * (s - w) / (t - w)  if w < s <= t

    i.e. beta_mid at s = 0, beta_min at s = w (exploration), beta_max at s = t. The paper's prose says
    "starts small"; the formula starts at beta_mid, and this follows the formula. Steps beyond [0, t] are
    clamped; with w_ratio = 0 there is no exploration phase and s = 0 gives beta_min.
    Paper settings: counting 0.04 -> 0.10, geometry 0.00 -> 0.02, w_ratio 0.3.
    """
    beta_min: float
    beta_max: float
    w_ratio: float = 0.3

    def __post_init__(self):
        if not 0.0 <= self.w_ratio <= 1.0:
            raise ValueError(f"w_ratio must be in [0, 1], got {self.w_ratio}")

    def value(self, step: int, total: int) -> float:
        s = _frac(step, total) * total
        w = self.w_ratio * total
        mid = (self.beta_min + self.beta_max) / 2
        if s <= w:
            return mid - (mid - self.beta_min) * s / w if w > 0 else self.beta_min
        return self.beta_min + (self.beta_max - self.beta_min) * (s - w) / (total - w)


@dataclass(frozen=True)
class RetrvLambda(_Base):
    """Retrv-R1's curriculum lambda_i = i / N_iter (§1.5): inspection is free at first and costs up to 1/K of
    the reward per inspected candidate by the end."""

    def value(self, step: int, total: int) -> float:
        return _frac(step, total)


@dataclass(frozen=True)
class SearchPenaltyWarmup(_Base):
    """MMSearch-R1 ``search_penalty_warmup_steps`` (§4.3, ``ray_trainer.py``):

        p_step = -p + min((step - 1) / W, 1) * 2p

    ``step`` is verl's 1-based global step: step 1 gives -p (searching earns a bonus), step W + 1 gives +p.
    ``total`` is unused. Steps below 1 are held at -p; W = 0 means no warm-up (+p throughout).
    """
    p: float
    warmup_steps: int

    def __post_init__(self):
        if self.warmup_steps < 0:
            raise ValueError(f"warmup_steps must be >= 0, got {self.warmup_steps}")

    def value(self, step: int, total: int = 0) -> float:
        if self.warmup_steps == 0:
            return float(self.p)
        ramp = min(max((step - 1) / self.warmup_steps, 0.0), 1.0)
        return -self.p + ramp * 2 * self.p


@dataclass(frozen=True)
class SigmoidDecay(_Base):
    """MMSearch-R1's LR multiplier (§4.4, ``get_sigmoid_decay_schedule``), W = ``warmup_steps``:

        mult(s) = (1 - low) / (1 + exp(k * (s - W))) + low,   k = 1 / (0.1 * W),   low = 1 - decay_ratio

    About 1 before W, (1 + low) / 2 at W, and ``low`` after; the repo uses W = 45, decay_ratio = 0.95.
    ``step`` is the 0-based LambdaLR step; ``total`` is unused. Written to avoid exp() overflow.
    """
    warmup_steps: float
    decay_ratio: float

    def __post_init__(self):
        if self.warmup_steps <= 0:
            raise ValueError(f"warmup_steps must be > 0, got {self.warmup_steps}")
        if not 0.0 <= self.decay_ratio <= 1.0:
            raise ValueError(f"decay_ratio must be in [0, 1], got {self.decay_ratio}")

    def value(self, step: int, total: int = 0) -> float:
        low = 1.0 - self.decay_ratio
        z = (step - self.warmup_steps) / (0.1 * self.warmup_steps)
        sig = 1.0 / (1.0 + math.exp(z)) if z <= 0 else math.exp(-z) / (1.0 + math.exp(-z))
        return (1.0 - low) * sig + low


SCHEDULES: dict[str, type] = {
    "constant": Constant,
    "linear": Linear,
    "piecewise": PiecewiseLinear,
    "othink": OThinkBeta,
    "retrv_lambda": RetrvLambda,
    "search_penalty_warmup": SearchPenaltyWarmup,
    "sigmoid_decay": SigmoidDecay,
}


def _params(cls) -> dict[str, dataclasses.Field]:
    """Public dict key -> dataclass field (Constant's field is ``value_`` because ``value`` is the method)."""
    return {("value" if f.name == "value_" else f.name): f for f in dataclasses.fields(cls)}


def make_schedule(spec: Any) -> Schedule:
    """Build a schedule from ``{"kind": NAME, **params}`` (e.g. ``{"kind": "othink", "beta_min": 0.04,
    "beta_max": 0.10}``, ``{"kind": "constant", "value": 0.01}``), a plain number (a constant), or an existing
    schedule (returned as is). Raises ValueError naming the unknown kind, unknown key or missing key.
    """
    if isinstance(spec, (int, float)) and not isinstance(spec, bool):
        return Constant(float(spec))
    if not isinstance(spec, dict) and isinstance(spec, Schedule):
        return spec
    if not isinstance(spec, dict):
        raise ValueError(f"a schedule is a number or a dict with a 'kind' key, got {type(spec).__name__}")
    if "kind" not in spec:
        raise ValueError(f"schedule {spec!r} has no 'kind' key; choose a kind from {sorted(SCHEDULES)}")
    kind = spec["kind"]
    if kind not in SCHEDULES:
        hint = difflib.get_close_matches(str(kind), SCHEDULES, n=1)
        raise ValueError(f"unknown schedule kind {kind!r}" + (f" (did you mean {hint[0]!r}?)" if hint else "")
                         + f"; choose from {sorted(SCHEDULES)}")
    params = _params(SCHEDULES[kind])
    kwargs = {}
    for key, val in spec.items():
        if key == "kind":
            continue
        if key not in params:
            hint = difflib.get_close_matches(key, params, n=1)
            raise ValueError(f"schedule key {key!r} is not a parameter of {kind!r}"
                             + (f" (did you mean {hint[0]!r}?)" if hint else "") + f"; allowed: {sorted(params)}")
        kwargs[params[key].name] = val
    missing = [k for k, f in params.items() if f.name not in kwargs and f.default is dataclasses.MISSING]
    if missing:
        raise ValueError(f"schedule {kind!r} is missing key(s) {missing}")
    return SCHEDULES[kind](**kwargs)
