"""Reward functions for RL: a weighted list, each logged on its own, combined by sum or product.

A reward function is `fn(completion_text, sample) -> float`. The built-ins are `accuracy`
(the answer checker) and `format` (strict `<think>…</think><answer>…</answer>`); recipes add
their own by import path (`"my_pkg.rewards:length_penalty": 0.1`). A function that raises
scores 0 for that completion and is counted and reported with the sample id, not a crash.
"""

from __future__ import annotations

import importlib
import logging
from dataclasses import dataclass
from typing import Callable

import torch

from ..errors import ConfigError, MMR1Error
from .checkers import check_answer
from .extract import extract_answer
from .format import think_answer_format

log = logging.getLogger("mmr1")

RewardFn = Callable[[str, object], float]


@dataclass(frozen=True)
class Reward:
    name: str
    weight: float
    fn: RewardFn


def accuracy_reward(checker: str = "auto") -> RewardFn:
    def accuracy(text: str, sample) -> float:
        return float(check_answer(extract_answer(text), sample, checker))
    return accuracy


def format_reward(text: str, sample) -> float:
    return float(think_answer_format(text))


def import_reward(path: str) -> RewardFn:
    """'package.module:function' -> the function; a clear ConfigError when it is not there."""
    module, _, name = path.partition(":")
    if not module or not name:
        raise ConfigError(f"rewards.custom: {path!r} is not 'module:function'")
    try:
        fn = getattr(importlib.import_module(module), name)
    except (ImportError, AttributeError) as e:
        raise ConfigError(f"rewards.custom: cannot import {path!r}: {e}") from None
    if not callable(fn):
        raise ConfigError(f"rewards.custom: {path!r} is not callable")
    return fn


def build_rewards(rcfg) -> list[Reward]:
    """The weighted reward list of a `RewardsConfig`; zero weights are left out."""
    rewards = [Reward("accuracy", rcfg.accuracy_weight, accuracy_reward(rcfg.checker)),
               Reward("format", rcfg.format_weight, format_reward)]
    for path, weight in rcfg.custom.items():
        if not isinstance(weight, (int, float)) or isinstance(weight, bool):
            raise ConfigError(f"rewards.custom.{path}: weight must be a number, got {weight!r}")
        rewards.append(Reward(path.rpartition(":")[2] or path, float(weight), import_reward(path)))
    return [r for r in rewards if r.weight != 0.0]


@dataclass
class Scores:
    total: torch.Tensor  # [N] combined reward
    per_fn: dict[str, torch.Tensor]  # name -> [N] raw (unweighted) reward
    errors: dict[str, int]  # name -> completions whose reward function raised


def combine(per_fn: dict[str, torch.Tensor], weights: dict[str, float], how: str = "sum") -> torch.Tensor:
    """sum: Σ w_i r_i. product: Π w_i r_i (e.g. Vision-R1's 'format and answer both right')."""
    terms = [weights[k] * v for k, v in per_fn.items()]
    if not terms:
        raise ConfigError("no reward functions: set rewards.accuracy_weight, format_weight or custom")
    out = terms[0].clone()
    for t in terms[1:]:
        out = out + t if how == "sum" else out * t
    return out


def score(rewards: list[Reward], texts: list[str], samples: list, how: str = "sum",
          on_error: str = "zero") -> Scores:
    """Score completion i against samples[i] with every reward function."""
    per_fn, errors = {}, {}
    for r in rewards:
        vals = []
        for text, sample in zip(texts, samples):
            try:
                vals.append(float(r.fn(text, sample)))
            except Exception as e:  # noqa: BLE001 - any user reward failure is reported, not fatal
                sid = getattr(sample, "id", "?")
                if on_error == "raise":
                    raise MMR1Error(f"reward {r.name!r} failed on sample {sid}: {type(e).__name__}: {e}") from e
                errors[r.name] = errors.get(r.name, 0) + 1
                log.warning("reward %r failed on sample %s: %s: %s (scored 0)", r.name, sid, type(e).__name__, e)
                vals.append(0.0)
        per_fn[r.name] = torch.tensor(vals, dtype=torch.float32)
    total = combine(per_fn, {r.name: r.weight for r in rewards}, how)
    return Scores(total, per_fn, errors)
