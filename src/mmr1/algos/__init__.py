"""The RL maths as pure tensor functions: advantages, policy losses, loss aggregation, KL estimators, schedules.

No model and no config object here, only tensors in and tensors out (verl ``core_algos.py`` style), so every
piece is tested on CPU with hand-computed values (tests/test_algos.py). Each family has a small registry keyed
by the config names of ``AlgorithmConfig``: ``ADVANTAGES`` (adv_estimator), ``LOSS_AGG`` (loss_agg),
``KL_ESTIMATORS`` (kl_estimator), plus ``SCHEDULES`` for ``make_schedule``.
"""

from .advantages import ADVANTAGES, compute_advantages, group_index, grpo_advantages, rloo_advantages
from .aggregate import LOSS_AGG, aggregate, at_least_fp32, masked_mean, masked_sum
from .kl import KL_ESTIMATORS, kl_k1, kl_k2, kl_k3, kl_low_var, kl_penalty
from .losses import grpo_loss, policy_loss, truncation_mask
from .schedules import (
    SCHEDULES,
    Constant,
    Linear,
    OThinkBeta,
    PiecewiseLinear,
    RetrvLambda,
    Schedule,
    SearchPenaltyWarmup,
    SigmoidDecay,
    make_schedule,
)

__all__ = [
    "ADVANTAGES", "KL_ESTIMATORS", "LOSS_AGG", "SCHEDULES",
    "Constant", "Linear", "OThinkBeta", "PiecewiseLinear", "RetrvLambda", "Schedule", "SearchPenaltyWarmup",
    "SigmoidDecay",
    "aggregate", "at_least_fp32", "compute_advantages", "group_index", "grpo_advantages", "grpo_loss",
    "kl_k1", "kl_k2", "kl_k3", "kl_low_var", "kl_penalty", "make_schedule", "masked_mean", "masked_sum",
    "policy_loss", "rloo_advantages", "truncation_mask",
]
