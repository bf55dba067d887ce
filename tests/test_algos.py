"""Golden tests for mmr1.algos: every expected number is worked out by hand in the comments."""

import math

import pytest
import torch
from torch.testing import assert_close

from mmr1.algos import (
    ADVANTAGES, KL_ESTIMATORS, LOSS_AGG, SCHEDULES, Constant, Linear, OThinkBeta, PiecewiseLinear, RetrvLambda,
    Schedule, SearchPenaltyWarmup, SigmoidDecay, aggregate, compute_advantages, grpo_advantages, grpo_loss,
    kl_penalty, make_schedule, masked_mean, policy_loss, rloo_advantages, truncation_mask,
)

F64 = torch.float64


def t(x):
    return torch.tensor(x, dtype=F64)


# ----------------------------------------------------------------------------- advantages

# Two contiguous groups of G = 4: [1, 0, 0, 1] and [1, 1, 1, 1].
REWARDS = [1.0, 0.0, 0.0, 1.0, 1.0, 1.0, 1.0, 1.0]


def test_grpo_unbiased_std_mmsearch_eps():
    # group 1: mean 0.5, deviations +-0.5, sum of squares 1, unbiased var 1/3, std 0.5773503
    # A = +-0.5 / (0.5773503 + 1e-6) = +-0.8660239; group 2 is constant -> 0 / (0 + eps) = 0
    a = 0.5 / (math.sqrt(1 / 3) + 1e-6)
    assert_close(grpo_advantages(t(REWARDS), 4, eps=1e-6), t([a, -a, -a, a, 0, 0, 0, 0]))
    assert abs(a - 0.8660239) < 1e-6


def test_grpo_r1v_eps_and_population_std_and_no_scaling():
    # R1-V: eps 1e-4 -> 0.5 / 0.5774503 = 0.8658754
    a = 0.5 / (math.sqrt(1 / 3) + 1e-4)
    assert abs(a - 0.8658754) < 1e-6
    assert_close(grpo_advantages(t(REWARDS), 4, eps=1e-4)[:4], t([a, -a, -a, a]))
    # population std of group 1 is 0.5 -> A = 0.5 / (0.5 + 1e-6) = 0.999998
    b = 0.5 / (0.5 + 1e-6)
    assert_close(grpo_advantages(t(REWARDS), 4, unbiased=False)[:4], t([b, -b, -b, b]))
    # Dr. GRPO (no std scaling): just r - mean
    assert_close(grpo_advantages(t(REWARDS), 4, scale_std=False), t([.5, -.5, -.5, .5, 0, 0, 0, 0]))


def test_grpo_group_ids_and_singletons():
    # group a = [2, 1, 4] (positions 0, 2, 3): mean 7/3, deviations [-1/3, -4/3, 5/3],
    # sum of squares (1 + 16 + 25)/9 = 14/3, unbiased var 7/3, std 1.5275252. b = [5] and c = [7] are singletons.
    r = t([2.0, 5.0, 1.0, 4.0, 7.0])
    std = math.sqrt(7 / 3)
    dev = [-1 / 3, -4 / 3, 5 / 3]
    exp_a = [d / (std + 1e-6) for d in dev]
    expected = t([exp_a[0], 0.0, exp_a[1], exp_a[2], 0.0])
    assert_close(grpo_advantages(r, ["a", "b", "a", "a", "c"]), expected)
    assert_close(grpo_advantages(r, torch.tensor([10, 20, 10, 10, 30])), expected)
    # verl / MMSearch-R1: a singleton gets mean 0, std 1 -> A = r / (1 + 1e-6)
    raw = grpo_advantages(r, ["a", "b", "a", "a", "c"], singleton="raw")
    assert_close(raw[[1, 4]], t([5 / (1 + 1e-6), 7 / (1 + 1e-6)]))
    assert_close(raw[[0, 2, 3]], expected[[0, 2, 3]])


def test_grpo_integer_rewards_and_bad_group_size():
    assert grpo_advantages(torch.tensor([1, 0, 1, 0]), 2).is_floating_point()
    with pytest.raises(ValueError, match="group_size 3"):
        grpo_advantages(t(REWARDS), 3)


def test_rloo():
    # group 1: 1 - mean(0, 0, 1) = 2/3 ; 0 - mean(1, 0, 1) = -2/3 ; group 2 is constant -> 0
    assert_close(rloo_advantages(t(REWARDS), 4), t([2 / 3, -2 / 3, -2 / 3, 2 / 3, 0, 0, 0, 0]))
    # group a = [2, 1, 4]: 2 - (1+4)/2 = -0.5 ; 1 - (2+4)/2 = -2 ; 4 - (2+1)/2 = 2.5 (= 3/2 * (r - 7/3));
    # singletons b, c -> 0
    r = t([2.0, 5.0, 1.0, 4.0, 7.0])
    assert_close(rloo_advantages(r, ["a", "b", "a", "a", "c"]), t([-0.5, 0.0, -2.0, 2.5, 0.0]))
    # with std scaling: divide by std 1.5275252 (+1e-6)
    s = math.sqrt(7 / 3) + 1e-6
    assert_close(rloo_advantages(r, ["a", "b", "a", "a", "c"], scale_std=True),
                 t([-0.5 / s, 0.0, -2 / s, 2.5 / s, 0.0]))


def test_advantage_registry():
    assert set(ADVANTAGES) == {"grpo", "rloo"}
    assert_close(compute_advantages("rloo", t(REWARDS), 4, scale_std=False), rloo_advantages(t(REWARDS), 4))
    with pytest.raises(ValueError, match="'ppo'"):
        compute_advantages("ppo", t(REWARDS), 4)


# ----------------------------------------------------------------------------- aggregation

# A ragged batch: 4 tokens, 2 tokens, and an empty row (e.g. a truncated completion).
LOSS = t([[1, 2, 3, 4], [5, 6, 7, 8], [9, 9, 9, 9]])
MASK = t([[1, 1, 1, 1], [1, 1, 0, 0], [0, 0, 0, 0]])


def test_aggregate_modes():
    # token-mean: (1+2+3+4+5+6) / 6 = 3.5
    assert_close(aggregate(LOSS, MASK, "token-mean"), t(3.5))
    # seq-mean-token-mean: row means 2.5 and 5.5, empty row skipped -> 4.0
    assert_close(aggregate(LOSS, MASK, "seq-mean-token-mean"), t(4.0))
    # Dr. GRPO: row sums 10, 11, 0 over T = 4 -> 2.5, 2.75, 0 -> mean over 3 rows = 1.75
    assert_close(aggregate(LOSS, MASK, "seq-mean-token-sum-norm"), t(1.75))
    # ... with norm 2: 5, 5.5, 0 -> 3.5
    assert_close(aggregate(LOSS, MASK, "seq-mean-token-sum-norm", norm=2), t(3.5))
    assert set(LOSS_AGG) == {"token-mean", "seq-mean-token-mean", "seq-mean-token-sum-norm"}
    with pytest.raises(ValueError, match="'sum'"):
        aggregate(LOSS, MASK, "sum")


def test_masked_mean_and_bool_mask():
    assert_close(masked_mean(LOSS, MASK, dim=-1), t([2.5, 5.5, 0.0]))  # empty row -> 0, not NaN
    assert_close(masked_mean(LOSS, torch.zeros_like(MASK)), t(0.0))
    assert_close(aggregate(LOSS, MASK.bool(), "token-mean"), t(3.5))


# ----------------------------------------------------------------------------- KL estimators


def test_kl_estimators_golden():
    # (logp, ref) = (log .5, log .25): logp - ref = log 2 = 0.6931472
    #   k1 = 0.6931472 ; k2 = 0.5 * 0.4804530 = 0.2402265
    #   k3 = exp(-log 2) + log 2 - 1 = 0.5 + 0.6931472 - 1 = 0.1931472
    # (logp, ref) = (log .1, log .9): ref - logp = log 9 = 2.1972246
    #   k1 = -2.1972246 ; k2 = 0.5 * 4.8277958 = 2.4138979 ; k3 = 9 - 2.1972246 - 1 = 5.8027754
    # (logp, ref) equal: all 0
    logp = t([math.log(.5), math.log(.1), -1.0])
    ref = t([math.log(.25), math.log(.9), -1.0])
    assert_close(kl_penalty(logp, ref, "k1"), t([0.6931472, -2.1972246, 0.0]), atol=1e-7, rtol=0)
    assert_close(kl_penalty(logp, ref, "k2"), t([0.2402265, 2.4138979, 0.0]), atol=1e-7, rtol=0)
    assert_close(kl_penalty(logp, ref, "k3"), t([0.1931472, 5.8027754, 0.0]), atol=1e-7, rtol=0)
    assert_close(kl_penalty(logp, ref, "low_var_kl"), t([0.1931472, 5.8027754, 0.0]), atol=1e-7, rtol=0)


def test_kl_clamping():
    # ref - logp = 15: k3 = exp(15) - 16 = 3269001.4 -> low_var_kl 10 ; ref - logp = -15: k3 = e^-15 + 14 -> 10
    logp, ref = t([-15.0, 0.0]), t([0.0, -15.0])
    assert_close(kl_penalty(logp, ref, "k3"), t([math.exp(15) - 16, math.exp(-15) + 14]))
    assert_close(kl_penalty(logp, ref, "low_var_kl"), t([10.0, 10.0]))
    assert_close(kl_penalty(logp, ref, "k3", clamp=10.0), t([10.0, 10.0]))
    # no overflow to inf/nan far out
    assert torch.isfinite(kl_penalty(t([-1000.0]), t([0.0]), "low_var_kl")).all()
    assert set(KL_ESTIMATORS) == {"k1", "k2", "k3", "low_var_kl"}
    with pytest.raises(ValueError, match="'k4'"):
        kl_penalty(logp, ref, "k4")


# ----------------------------------------------------------------------------- policy loss


def _clip_case():
    # old_logp = 0, so rho = exp(logp). Row 0 has A = +1, ratios [1.5, 1.1]; row 1 has A = -1, ratios [0.5, 1.3].
    ratios = t([[1.5, 1.1], [0.5, 1.3]])
    logp = ratios.log().requires_grad_(True)
    return logp, torch.zeros(2, 2, dtype=F64), t([1.0, -1.0]), torch.ones(2, 2, dtype=F64)


def test_ppo_clip_golden():
    logp, old, adv, mask = _clip_case()
    loss, st = policy_loss(logp, old, adv, mask, clip_low=0.2, clip_high=0.2)
    # token losses max(-A rho, -A clip(rho, .8, 1.2)):
    #   row 0 (A=+1): rho 1.5 -> max(-1.5, -1.2) = -1.2 (clipped) ; rho 1.1 -> -1.1
    #   row 1 (A=-1): rho 0.5 -> max(0.5, 0.8) = 0.8 (clipped) ;   rho 1.3 -> max(1.3, 1.2) = 1.3 (not clipped)
    # token-mean = (-1.2 - 1.1 + 0.8 + 1.3) / 4 = -0.05
    assert_close(loss, t(-0.05))
    assert_close(st["pg_loss"], t(-0.05))
    assert_close(st["clip_fraction"], t(0.5))        # 2 of 4 tokens have zero gradient
    assert_close(st["clip_fraction_high"], t(0.25))  # rho 1.5 with A > 0
    assert_close(st["clip_fraction_low"], t(0.25))   # rho 0.5 with A < 0
    assert_close(st["ratio_mean"], t(1.1))           # (1.5 + 1.1 + 0.5 + 1.3) / 4
    assert_close(st["ratio_min"], t(0.5))
    assert_close(st["ratio_max"], t(1.5))
    # approx_kl = mean(old - logp) = -log(1.5 * 1.1 * 0.5 * 1.3) / 4 = -log(1.0725) / 4 = -0.0174983
    assert_close(st["approx_kl"], t(-math.log(1.0725) / 4))
    # gradient: clipped tokens get 0; others -A * rho / 4: row 0 tok 1 -> -1.1/4 = -0.275, row 1 tok 1 -> +1.3/4
    loss.backward()
    assert_close(logp.grad, t([[0.0, -0.275], [0.0, 0.325]]))


def test_ppo_clip_higher_and_mask():
    logp, old, adv, mask = _clip_case()
    # DAPO clip-higher eps_high = 0.28: row 0 tok 0 -> -1.28 ; loss = (-1.28 - 1.1 + 0.8 + 1.3) / 4 = -0.07
    loss, _ = policy_loss(logp, old, adv, mask, clip_low=0.2, clip_high=0.28)
    assert_close(loss, t(-0.07))
    # masking row 1 tok 1 out: (-1.2 - 1.1 + 0.8) / 3 = -0.5 ; ratio stats ignore the masked 1.3
    mask = t([[1, 1], [1, 0]])
    loss, st = policy_loss(logp, old, adv, mask)
    assert_close(loss, t(-0.5))
    assert_close(st["ratio_max"], t(1.5))
    assert_close(st["ratio_mean"], t(3.1 / 3))
    assert_close(st["clip_fraction"], t(2 / 3))


@pytest.mark.parametrize("agg", ["token-mean", "seq-mean-token-mean"])
def test_on_policy_ratio_one_gives_reinforce_gradient(agg):
    # R1-V (mu = 1, old_logp = logp.detach()): rho == 1, the clip is inactive and
    # grad = -A * grad(logp), aggregated. A = [1, -0.5], mask lengths 3 and 2.
    #   token-mean: loss = -(1*3 - 0.5*2) / 5 = -0.4 ; d/dlogp = -A_i / 5 -> row 0: -0.2, row 1: +0.1
    #   seq-mean-token-mean: loss = -(1 - 0.5) / 2 = -0.25 ; d/dlogp = -A_i / (2 |o_i|) -> -1/6 and +0.125
    adv = t([1.0, -0.5])
    mask = t([[1, 1, 1], [1, 1, 0]])
    logp = t([[-0.3, -1.2, -2.0], [-0.7, -0.1, -5.0]]).requires_grad_(True)
    loss, st = grpo_loss(logp, None, adv, mask, loss_agg=agg)
    loss.backward()
    if agg == "token-mean":
        assert_close(loss, t(-0.4))
        assert_close(logp.grad, t([[-0.2, -0.2, -0.2], [0.1, 0.1, 0.0]]))
    else:
        assert_close(loss, t(-0.25))
        assert_close(logp.grad, t([[-1 / 6, -1 / 6, -1 / 6], [0.125, 0.125, 0.0]]))
    assert st["clip_fraction"] == 0 and st["ratio_min"] == 1 and st["ratio_max"] == 1

    # the same through a model: gradients of the parameters equal those of the REINFORCE surrogate -A*logp
    torch.manual_seed(0)
    logits = torch.randn(2, 3, 5, dtype=F64, requires_grad=True)
    tokens = torch.tensor([[1, 4, 2], [0, 3, 3]])

    def lp():
        return logits.log_softmax(-1).gather(-1, tokens[..., None]).squeeze(-1)

    loss, _ = grpo_loss(lp(), lp().detach(), adv, mask, loss_agg=agg)
    (g_loss,) = torch.autograd.grad(loss, logits)
    (g_ref,) = torch.autograd.grad(aggregate(-adv[:, None] * lp(), mask, agg), logits)
    assert_close(g_loss, g_ref)


def test_gspo_sequence_ratio():
    # old_logp = 0. Row 0: logp - old = [.1, .3, .2], mean .2 -> s0 = e^.2 = 1.2214028 > 1.2 ; A = +1 -> clipped,
    # loss -1.2 per token, no gradient. Row 1: [-.1, .1, (masked)] mean 0 -> s1 = 1 ; A = -1 -> loss +1 per token.
    # seq-mean-token-mean: (-1.2 + 1) / 2 = -0.1 ; grad row 1 = -A * s1 / (2 rows * 2 tokens) = +0.25
    logp = t([[0.1, 0.3, 0.2], [-0.1, 0.1, 9.0]]).requires_grad_(True)
    old = torch.zeros(2, 3, dtype=F64)
    adv, mask = t([1.0, -1.0]), t([[1, 1, 1], [1, 1, 0]])
    loss, st = policy_loss(logp, old, adv, mask, ratio_level="sequence", loss_agg="seq-mean-token-mean")
    assert_close(loss, t(-0.1))
    assert_close(st["clip_fraction"], t(0.6))  # the 3 tokens of row 0, of 5
    assert_close(st["ratio_mean"], t((3 * math.exp(0.2) + 2) / 5))  # 1.1328417
    assert_close(st["ratio_max"], t(math.exp(0.2)))
    loss.backward()
    assert_close(logp.grad, t([[0, 0, 0], [0.25, 0.25, 0]]))


def test_gspo_trick_matches_direct_sequence_objective():
    # the detach trick gives the gradient of the plain GSPO objective mean_i max(-A s_i, -A clip(s_i))
    torch.manual_seed(1)
    logp0 = (torch.randn(4, 6, dtype=F64) * 0.1)
    old = logp0 + torch.randn(4, 6, dtype=F64) * 0.05
    mask = t([[1] * 6, [1] * 4 + [0] * 2, [1] * 2 + [0] * 4, [1] * 5 + [0]])
    adv = t([1.0, -1.0, 0.5, -2.0])
    logp = logp0.clone().requires_grad_(True)
    loss, _ = policy_loss(logp, old, adv, mask, ratio_level="sequence", loss_agg="seq-mean-token-mean")
    (g,) = torch.autograd.grad(loss, logp)
    logp2 = logp0.clone().requires_grad_(True)
    s = (((logp2 - old) * mask).sum(-1) / mask.sum(-1)).exp()
    direct = torch.maximum(-adv * s, -adv * s.clamp(0.8, 1.2)).mean()
    (g2,) = torch.autograd.grad(direct, logp2)
    assert_close(loss, direct)
    assert_close(g, g2)


def test_policy_loss_token_advantages_and_bad_level():
    logp, old, _, mask = _clip_case()
    # per-token advantages [B, T] equal to the broadcast [B] ones give the same loss
    a, _ = policy_loss(logp, old, t([1.0, -1.0]), mask)
    b, _ = policy_loss(logp, old, t([[1.0, 1.0], [-1.0, -1.0]]), mask)
    assert_close(a, b)
    with pytest.raises(ValueError, match="ratio_level"):
        policy_loss(logp, old, t([1.0, -1.0]), mask, ratio_level="turn")


def test_bf16_inputs_are_reduced_in_fp32():
    # 1000 tokens: a bf16 count would round 1000 to 1000 but 1001 to 1000; fp32 keeps it exact.
    # A = 1, on-policy, token-mean -> loss exactly -1 ; gradient flows back to the bf16 log-probs
    logp = torch.full((1, 1001), -0.5, dtype=torch.bfloat16, requires_grad=True)
    loss, st = grpo_loss(logp, None, torch.ones(1), torch.ones(1, 1001), logp.detach() - 0.1, beta=0.1)
    assert loss.dtype == torch.float32 and torch.isfinite(loss)
    assert_close(st["pg_loss"], torch.tensor(-1.0))
    loss.backward()
    assert logp.grad.dtype == torch.bfloat16


def test_truncation_mask():
    mask = t([[1, 1], [1, 0], [1, 1]])
    expected = t([[1, 1], [0, 0], [1, 1]])
    assert_close(truncation_mask(["stop", "length", "eos"], mask), expected)
    assert_close(truncation_mask(torch.tensor([False, True, False]), mask), expected)
    assert_close(truncation_mask([0, 1, 0], mask), expected)
    assert truncation_mask([False, True, False], mask.bool()).tolist() == expected.bool().tolist()
    with pytest.raises(ValueError, match="truncated"):
        truncation_mask([True], mask)


# ----------------------------------------------------------------------------- grpo_loss (the trainer's entry point)


def test_grpo_loss_beta_zero_needs_no_reference():
    logp, old, adv, mask = _clip_case()
    loss, st = grpo_loss(logp, old, adv, mask, None, beta=0.0)
    assert_close(loss, t(-0.05))
    assert "kl" not in st
    with pytest.raises(ValueError, match="ref_logp"):
        grpo_loss(logp, old, adv, mask, None, beta=0.04)


def test_grpo_loss_with_k3_kl():
    # logp = [log .5, log .5], ref = [log .25, log .5], A = 2, on-policy, beta = 0.1
    # pg = -2 (ratio 1) ; k3 per token [0.1931472, 0] -> token-mean 0.0965736 ; loss = -2 + 0.00965736
    # grad: pg -A/2 = -1 per token ; d k3/d logp = 1 - exp(ref - logp) = 0.5 at tok 0 -> + 0.1 * 0.5 / 2 = 0.025
    logp = t([[math.log(.5), math.log(.5)]]).requires_grad_(True)
    ref = t([[math.log(.25), math.log(.5)]])
    loss, st = grpo_loss(logp, None, t([2.0]), torch.ones(1, 2, dtype=F64), ref, beta=0.1, kl_estimator="k3")
    assert_close(loss, t(-2 + 0.1 * 0.1931472 / 2), atol=1e-8, rtol=0)
    assert_close(st["kl"], t(0.1931472 / 2), atol=1e-7, rtol=0)
    assert_close(st["pg_loss"], t(-2.0))
    loss.backward()
    assert_close(logp.grad, t([[-0.975, -1.0]]))
    # beta = 0 with a reference given: KL is logged but not added
    loss0, st0 = grpo_loss(logp, None, t([2.0]), torch.ones(1, 2, dtype=F64), ref, beta=0.0)
    assert_close(loss0, t(-2.0))
    assert_close(st0["kl"], st["kl"])


# ----------------------------------------------------------------------------- schedules


def test_othink_beta_counting_and_geometry():
    # t = 100, w = 30. counting: beta_min .04, beta_max .10, beta_mid .07
    #   s=0: .07 ; s=15: .07 - .03 * 15/30 = .055 ; s=30: .04 ; s=65: .04 + .06 * 35/70 = .07 ; s=100: .10
    count = OThinkBeta(0.04, 0.10)
    got = [count.value(s, 100) for s in (0, 15, 30, 65, 100, 130)]
    assert_close(got, [0.07, 0.055, 0.04, 0.07, 0.10, 0.10])
    # geometry: .00 -> .02, mid .01: s=0: .01 ; s=15: .005 ; s=30: 0 ; s=65: .01 ; s=100: .02
    geo = OThinkBeta(0.0, 0.02, w_ratio=0.3)
    assert_close([geo(s, 100) for s in (0, 15, 30, 65, 100)], [0.01, 0.005, 0.0, 0.01, 0.02])
    # w_ratio 0: no exploration phase, linear from beta_min: s=50 -> .04 + .06/2 = .07
    assert_close([OThinkBeta(0.04, 0.10, 0.0)(s, 100) for s in (0, 50, 100)], [0.04, 0.07, 0.10])
    with pytest.raises(ValueError, match="w_ratio"):
        OThinkBeta(0.0, 0.02, w_ratio=1.5)


def test_linear_piecewise_constant_retrv():
    assert Constant(0.04).value(7, 100) == 0.04
    assert_close(Linear(1.0, 0.0)(25, 100), 0.75)
    pw = PiecewiseLinear([(0.2, 0.0), (0.5, 1.0), (1.0, 1.0)])
    # before 0.2 -> 0 ; at 0.35 -> halfway = 0.5 ; after 0.5 -> 1
    assert_close([pw(s, 100) for s in (0, 35, 75, 100)], [0.0, 0.5, 1.0, 1.0])
    # Retrv-R1 lambda_i = i / N_iter
    assert_close([RetrvLambda()(i, 200) for i in (0, 50, 200)], [0.0, 0.25, 1.0])
    with pytest.raises(ValueError, match="total"):
        Linear(0, 1)(1, 0)


def test_search_penalty_warmup():
    # p = 0.1, W = 10: p_step = -0.1 + min((step-1)/10, 1) * 0.2
    #   step 1: -0.1 ; 3: -0.1 + 0.2*0.2 = -0.06 ; 6: 0.0 ; 11: 0.1 ; 50: 0.1
    sched = SearchPenaltyWarmup(0.1, 10)
    assert_close([sched.value(s, 100) for s in (1, 3, 6, 11, 50)], [-0.1, -0.06, 0.0, 0.1, 0.1])
    assert SearchPenaltyWarmup(0.1, 0)(1, 100) == 0.1


def test_sigmoid_decay():
    # W = 45, decay 0.95: low = 0.05, k = 1/4.5
    #   s=0:  z=-10 -> 0.95 / (1 + e^-10) + 0.05 = 0.9999569
    #   s=45: z=0   -> 0.95 / 2 + 0.05 = 0.525
    #   s=90: z=10  -> 0.95 / (1 + e^10) + 0.05 = 0.0500431
    sched = SigmoidDecay(45, 0.95)
    assert_close([sched(s, 0) for s in (0, 45, 90)], [0.9999569, 0.525, 0.0500431], atol=1e-7, rtol=0)
    assert_close(sched(10**6, 0), 0.05)  # no overflow


def test_make_schedule():
    assert make_schedule({"kind": "othink", "beta_min": 0.04, "beta_max": 0.10}) == OThinkBeta(0.04, 0.10, 0.3)
    assert make_schedule({"kind": "constant", "value": 0.01}) == Constant(0.01)
    assert make_schedule(0.04) == Constant(0.04)
    pw = make_schedule({"kind": "piecewise", "points": [[0, 1.0], [1, 0.0]]})
    assert_close(pw(50, 100), 0.5)
    assert make_schedule({"kind": "sigmoid_decay", "warmup_steps": 45, "decay_ratio": 0.95}) == SigmoidDecay(45, 0.95)
    sched = OThinkBeta(0.0, 0.02)
    assert make_schedule(sched) is sched and isinstance(sched, Schedule)
    assert set(SCHEDULES) >= {"constant", "linear", "piecewise", "othink", "retrv_lambda",
                              "search_penalty_warmup", "sigmoid_decay"}
    with pytest.raises(ValueError, match="'othnk'.*did you mean 'othink'"):
        make_schedule({"kind": "othnk"})
    with pytest.raises(ValueError, match="'beta_mn'.*did you mean 'beta_min'"):
        make_schedule({"kind": "othink", "beta_mn": 0.04, "beta_max": 0.1})
    with pytest.raises(ValueError, match="missing key.*beta_max"):
        make_schedule({"kind": "othink", "beta_min": 0.04})
    with pytest.raises(ValueError, match="'kind'"):
        make_schedule({"beta_min": 0.04})
