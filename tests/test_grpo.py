"""The RL loop end to end on a tiny model: it learns a rule reward, survives bad rewards, resumes exactly."""

import json
import os
import signal

import pytest
import torch
from safetensors.torch import load_file

from mmr1.config import load_config
from mmr1.data.worlds import make_world
from mmr1.errors import ConfigError, MMR1Error
from mmr1.models.loading import load_model
from mmr1.rewards.functions import Reward, build_rewards, combine, score
from mmr1.train.grpo import PromptSampler, fit, mean_first_last
from mmr1.train.run_dir import RunDir


def letter_a(text, sample):
    """A rule reward a random policy can be taught fast: the share of 'a' characters."""
    return text.count("a") / max(1, len(text))


def broken(text, sample):
    if sample.id.endswith("1"):
        raise ValueError("boom")
    return 1.0


_calls = {"n": 0}


def interrupt_on_third_step(text, sample):
    """Sends the process a SIGINT during step 3's scoring (32 completions per step)."""
    _calls["n"] += 1
    if _calls["n"] == 2 * 32 + 1:
        os.kill(os.getpid(), signal.SIGINT)
    return letter_a(text, sample)


def _cfg(run_dir, *extra):
    return load_config(None, [f"logging.run_dir={run_dir}", "rl.prompts_per_step=4", "rollout.group_size=8",
                              "rollout.max_new_tokens=8", "rewards.accuracy_weight=0", "rewards.format_weight=0",
                              "trainer.save_every=0", "logging.log_every=1", "logging.tensorboard=false",
                              "logging.progress=false", *extra])


@pytest.fixture(scope="module")
def prompts():
    return make_world("counting", "train", 32, 0)


def _rows(run_dir):
    return [json.loads(line) for line in open(os.path.join(run_dir, "metrics.jsonl"))]


def test_twenty_steps_raise_a_rule_reward(tiny_dirs, prompts, tmp_path):
    cfg = _cfg(tmp_path, "rl.steps=20", "rl.lr=1e-2", "algorithm.beta=0.01",
               "rewards.custom={'tests.test_grpo:letter_a': 1.0}")
    res = fit(cfg, load_model(tiny_dirs["qwen2_5_vl"]), prompts, RunDir(tmp_path, tensorboard=False), progress=False)
    first, last = mean_first_last(res.reward_history, 5)
    assert res.steps == 20 and last > first + 0.1, res.reward_history
    rows = _rows(tmp_path)
    assert len(rows) == 20
    for key in ("rl/reward/letter_a/mean", "rl/kl", "rl/entropy", "rl/clip_fraction", "rl/completion_len/mean",
                "rl/tokens_per_s", "rl/time/rollout", "rl/time/reward", "rl/time/reference", "rl/time/policy",
                "rl/time/optimizer", "rl/beta", "rl/grad_norm"):
        assert key in rows[-1], key
    assert rows[-1]["rl/kl"] > 0  # the policy has moved away from the reference
    assert os.path.exists(tmp_path / "final" / "config.json")


def test_beta_zero_loads_no_reference(tiny_dirs, prompts, tmp_path, monkeypatch):
    import mmr1.models.loading as loading

    def no_load(*a, **k):
        raise AssertionError("beta=0 must not load a reference model")

    lm = load_model(tiny_dirs["qwen2_5_vl"])
    monkeypatch.setattr(loading, "load_model", no_load)
    fit(_cfg(tmp_path, "rl.steps=1", "algorithm.beta=0", "rewards.custom={'tests.test_grpo:letter_a': 1.0}"),
        lm, prompts, RunDir(tmp_path, tensorboard=False), progress=False)
    assert "rl/kl" not in _rows(tmp_path)[-1]


def test_clipping_is_active_only_with_several_passes(tiny_dirs, prompts, tmp_path):
    fracs = {}
    for mu in (1, 3):
        run = tmp_path / f"mu{mu}"
        fit(_cfg(run, "rl.steps=2", "rl.lr=2e-2", "algorithm.beta=0", f"algorithm.ppo_epochs={mu}",
                 "rewards.custom={'tests.test_grpo:letter_a': 1.0}"),
            load_model(tiny_dirs["qwen2_5_vl"]), prompts, RunDir(run, tensorboard=False), progress=False)
        fracs[mu] = max(r["rl/clip_fraction"] for r in _rows(run))
    assert fracs[1] == 0.0 and fracs[3] > 0.0, fracs


def test_gradient_checkpointing_gives_the_same_gradients(tiny_dirs, prompts, tmp_path):
    """Checkpointed layers (and a row per completion instead of the shared prefix) give the same loss and
    gradient norm; weights are not compared, since AdamW's first step turns float noise in near-zero
    gradients into full-size moves."""
    rows = {}
    for gc in (False, True):
        run = tmp_path / f"gc{gc}"
        fit(_cfg(run, "rl.steps=1", "algorithm.beta=0.04", f"trainer.gradient_checkpointing={gc}",
                 "rewards.custom={'tests.test_grpo:letter_a': 1.0}"),
            load_model(tiny_dirs["qwen2_5_vl"]), prompts, RunDir(run, tensorboard=False), progress=False)
        rows[gc] = _rows(run)[-1]
    assert rows[False]["rl/grad_norm"] > 0
    for key in ("rl/grad_norm", "rl/loss", "rl/reward/mean", "rl/entropy"):
        assert rows[True][key] == pytest.approx(rows[False][key], rel=1e-4, abs=1e-6), key


def test_per_prompt_streams_do_not_depend_on_the_rollout_batch_size(tiny_dirs, prompts):
    """With one generator per prompt, how prompts are batched does not change what is sampled."""
    from mmr1.rollout.hf import HFEngine

    lm = load_model(tiny_dirs["qwen2_5_vl"])
    engine = HFEngine(lm)
    ps = [(p.prompt_messages(), p.load_images()) for p in prompts[:4]]
    runs = [engine.sample(ps, n=3, max_new_tokens=12, batch_size=bs,
                          generator=[torch.Generator().manual_seed(100 + i) for i in range(4)]) for bs in (3, 12)]
    assert [[c.token_ids for c in g] for g in runs[0]] == [[c.token_ids for c in g] for g in runs[1]]
    alone = engine.sample(ps[2:3], n=3, max_new_tokens=12, generator=[torch.Generator().manual_seed(102)])
    assert [c.token_ids for c in alone[0]] == [c.token_ids for c in runs[0][2]]


def test_a_failing_reward_is_counted_not_fatal(tiny_dirs, prompts, tmp_path):
    cfg = _cfg(tmp_path, "rl.steps=1", "algorithm.beta=0", "rewards.custom={'tests.test_grpo:broken': 1.0}")
    res = fit(cfg, load_model(tiny_dirs["qwen2_5_vl"]), prompts, RunDir(tmp_path, tensorboard=False), progress=False)
    bad = sum(s.id.endswith("1") for s in (prompts[i] for i in PromptSampler(32, 4, 0).indices(0)))
    assert res.reward_errors == 8 * bad
    cfg = _cfg(tmp_path / "strict", "rl.steps=1", "algorithm.beta=0", "rewards.on_error=raise",
               "rewards.custom={'tests.test_grpo:broken': 1.0}")
    if bad:
        with pytest.raises(MMR1Error, match=r"reward 'broken' failed on sample counting-train-0-\d+1: ValueError"):
            fit(cfg, load_model(tiny_dirs["qwen2_5_vl"]), prompts, RunDir(tmp_path / "strict", tensorboard=False),
                progress=False)


def test_interrupted_run_resumes_to_the_same_weights(tiny_dirs, prompts, tmp_path):
    args = ("rl.steps=4", "rl.lr=1e-2", "algorithm.beta=0.01")
    straight = tmp_path / "straight"
    fit(_cfg(straight, *args, "rewards.custom={'tests.test_grpo:letter_a': 1.0}"),
        load_model(tiny_dirs["qwen2_5_vl"]), prompts, RunDir(straight, tensorboard=False), progress=False)
    cut = tmp_path / "cut"
    cfg = _cfg(cut, *args, "rewards.custom={'tests.test_grpo:interrupt_on_third_step': 1.0}")
    _calls["n"] = 0
    with pytest.raises(KeyboardInterrupt):
        fit(cfg, load_model(tiny_dirs["qwen2_5_vl"]), prompts, RunDir(cut, tensorboard=False), progress=False)
    assert (cut / "checkpoints" / "step-000003").exists()
    res = fit(cfg, load_model(tiny_dirs["qwen2_5_vl"]), prompts, RunDir(cut, tensorboard=False), progress=False)
    assert res.steps == 4
    a, b = load_file(str(straight / "final" / "model.safetensors")), load_file(str(cut / "final" / "model.safetensors"))
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=0, atol=0, msg=k)


def test_combine_and_score_golden():
    per = {"acc": torch.tensor([1.0, 0.0, 1.0]), "fmt": torch.tensor([1.0, 1.0, 0.0])}
    assert combine(per, {"acc": 1.0, "fmt": 0.5}, "sum").tolist() == [1.5, 0.5, 1.0]
    assert combine(per, {"acc": 1.0, "fmt": 1.0}, "product").tolist() == [1.0, 0.0, 0.0]
    s = make_world("counting", "test", 1, 0)[0]
    good = f"<think>count</think><answer>{s.answer}</answer>"
    rewards = [Reward("accuracy", 1.0, build_rewards(load_config(None, []).rewards)[0].fn),
               Reward("format", 0.5, build_rewards(load_config(None, []).rewards)[1].fn)]
    sc = score(rewards, [good, f"<answer>{s.answer}</answer>", "<think></think><answer>x</answer>"], [s, s, s])
    assert sc.per_fn["accuracy"].tolist() == [1.0, 1.0, 0.0]
    assert sc.per_fn["format"].tolist() == [1.0, 0.0, 0.0]
    assert sc.total.tolist() == [1.5, 1.0, 0.0]


def test_custom_reward_errors_name_the_key():
    with pytest.raises(ConfigError, match="rewards.custom: 'nomodule' is not 'module:function'"):
        build_rewards(load_config(None, ["rewards.custom={'nomodule': 1.0}"]).rewards)
    with pytest.raises(ConfigError, match="cannot import 'tests.test_grpo:nothing'"):
        build_rewards(load_config(None, ["rewards.custom={'tests.test_grpo:nothing': 1.0}"]).rewards)


def test_prompt_sampler_covers_each_epoch_once():
    s = PromptSampler(10, 4, seed=3)
    seen = [i for step in range(5) for i in s.indices(step)]
    assert sorted(seen[:10]) == list(range(10)) and sorted(seen[10:20]) == list(range(10))
    assert s.indices(2) == PromptSampler(10, 4, seed=3).indices(2)
