"""MMSearch-R1 recipe: agent GRPO on a tiny model over the entity world's local index (resumes exactly after a
crash, replaying the cut step's tool calls from the disk cache), no gradient from injected tokens, warm-up SFT
samples that encode exactly what the agent loop builds, and the experiment runner end to end."""

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

import mmr1.recipes.mmsearch_r1.runner as ms
from mmr1.config import load_config
from mmr1.data.encode import encode_for_sft
from mmr1.data.worlds import make_world
from mmr1.data.worlds.entities import teacher_trajectory
from mmr1.errors import ConfigError
from mmr1.recipes.common import derive_config
from mmr1.models.forward import completion_logprobs
from mmr1.models.loading import load_model
from mmr1.rollout.agent import AgentLoop, build_agent_batch
from mmr1.train.agent_grpo import AgentGRPOStep, agent_config, agent_loss, fit_agent
from mmr1.train.run_dir import RunDir

RECIPES = Path(__file__).parents[1] / "src" / "mmr1" / "recipes" / "mmsearch_r1"
CPU = RECIPES / "mmsearch_r1_cpu.yaml"
WORLD = "data.world_params={n_entities: 16, familiar_fraction: 0.5}"
SEARCH = "<reason>I will search.</reason><search><img></search>"


def _cfg(run_dir, *extra):
    return derive_config(load_config(CPU, [f"logging.run_dir={run_dir}", WORLD, "rl.prompts_per_step=2",
                                           "rollout.group_size=4", "agent.max_turn_tokens=24",
                                           "agent.max_total_tokens=480", "search.top_k=2", "search.max_chars=120",
                                           "rl.lr=1e-2", "algorithm.beta=0.01",
                                           "trainer.save_every=1", "logging.tensorboard=false",
                                           "logging.progress=false", "rl.micro_batch_size=4", *extra]), 0)


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """The entity world's index, shared; its train samples."""
    root = tmp_path_factory.mktemp("world")
    c = _cfg(root)
    index = ms.ensure_index(c, root)
    train = make_world("entities", "train", 12, 0, n_entities=16, instruction=c.data.instruction)
    return c, index, train


ANSWER = "<reason>I know it.</reason><answer>nothing</answer>"


def script(t, rnd):
    """Scripted turns a random tiny model would never write: per group, one trajectory searches then answers, one
    answers directly, one searches then rambles, one rambles (so rewards differ and advantages are not 0)."""
    k = t.sample_index % 4
    if rnd == 1:
        return SEARCH if k in (0, 2) else ANSWER if k == 1 else None
    return ANSWER if rnd == 2 and k == 0 else None


def _rows(run):
    return [json.loads(x) for x in (Path(run) / "metrics.jsonl").read_text().splitlines()]


def test_agent_grpo_resumes_exactly_replaying_tools_from_the_cache(tiny_dirs, world, tmp_path, monkeypatch):
    c0, index, train = world

    def go(run):
        c = _cfg(run, "rl.steps=3")
        tools = ms.make_tools(c, index, Path(run) / "cache")
        return fit_agent(c, load_model(tiny_dirs["qwen2_5_vl"]), train, tools, RunDir(run, tensorboard=False),
                         progress=False, script=script)

    straight = tmp_path / "straight"
    res = go(straight)
    assert res.steps == 3 and len(res.search_ratio_history) == 3
    rows = _rows(straight)
    assert [r["step"] for r in rows] == [1, 2, 3]
    for key in ("rl/reward/mean", "rl/accuracy", "rl/search_ratio", "rl/calls/image_search", "rl/calls/text_search",
                "rl/turns/mean", "rl/format_rate", "rl/tool/image_search/latency_mean_s", "rl/kl", "rl/grad_norm",
                "rl/injected_tokens/mean", "rl/search_penalty", "rl/search_ratio/familiar", "rl/time/rollout"):
        assert key in rows[-1], key
    assert rows[-1]["rl/search_ratio"] == 0.5 and rows[-1]["rl/injected_tokens/mean"] > 0
    assert rows[-1]["rl/format_rate"] == 0.5 and rows[-1]["rl/reward/std"] > 0
    assert rows[-1]["rl/tool/image_search/cache_misses"] > 0  # step 3 asks about new question images

    # A crash in step 3, after its rollout (tools called and cached), before its update.
    real = AgentGRPOStep.rollout

    def crashing(self, step):
        out = real(self, step)
        if step == 2:
            raise RuntimeError("power cut")
        return out

    cut = tmp_path / "cut"
    monkeypatch.setattr(AgentGRPOStep, "rollout", crashing)
    with pytest.raises(RuntimeError, match="power cut"):
        go(cut)
    monkeypatch.undo()
    assert (cut / "checkpoints" / "step-000002").exists() and not (cut / "final").exists()
    again = go(cut)
    assert again.steps == 3 and again.reward_history == res.reward_history
    step3 = _rows(cut)[-1]
    assert step3["step"] == 3 and [r["step"] for r in _rows(cut)] == [1, 2, 3]
    # the replayed step's tool results all came from the cache
    assert step3["rl/tool/image_search/cache_misses"] == 0
    assert step3["rl/tool/image_search/cache_hits"] == rows[-1]["rl/tool/image_search/cache_hits"] + \
        rows[-1]["rl/tool/image_search/cache_misses"]
    a, b = load_file(str(straight / "final" / "model.safetensors")), load_file(str(cut / "final" / "model.safetensors"))
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=0, atol=0, msg=k)
    init = load_file(str(tiny_dirs["qwen2_5_vl"] / "model.safetensors"))
    assert any(not torch.equal(init[k], a[k]) for k in a)  # training moved the weights


def test_mini_batches_take_several_updates_per_rollout(tiny_dirs, world, tmp_path):
    from mmr1.train.agent_grpo import _mini_batches

    assert _mini_batches(5, 4, 2) == [slice(0, 12), slice(12, 20)] and _mini_batches(2, 4, 8) == [slice(0, 4),
                                                                                                   slice(4, 8)]
    c0, index, train = world
    c = _cfg(tmp_path, "rl.steps=1", "agent.mini_batches=2", "rl.micro_batch_size=2", "rl.lr=5e-2")
    fit_agent(c, load_model(tiny_dirs["qwen2_5_vl"]), train, ms.make_tools(c, index, None),
              RunDir(tmp_path, tensorboard=False), progress=False, script=script)
    row = _rows(tmp_path)[-1]
    assert row["rl/updates"] == 2 and row["rl/ratio_max"] != 1.0  # the second mini-batch sees a moved policy


def test_injected_tokens_get_no_gradient(tiny_dirs, world):
    c, index, train = world
    lm = load_model(tiny_dirs["qwen2_5_vl"])
    tools = ms.make_tools(c, index, None)
    loop = AgentLoop(lm, tools, agent_config(c))
    prompts = [(s.prompt_messages(), s.load_images()) for s in train[:2]]
    groups = loop.run(prompts, n=2, generator=torch.Generator().manual_seed(0), script=script,
                      questions=[s.meta["question"] for s in train[:2]])
    trajs = [t for g in groups for t in g]
    assert any(t.tool_calls and t.tool_calls[0].n_images for t in trajs)  # thumbnails injected
    b = build_agent_batch(lm, trajs)
    mask = b["loss_mask"].float()
    injected = (b["token_mask"] == 1) & (b["loss_mask"] == 0)
    assert injected.sum() > 0
    logp = completion_logprobs(lm.model, b, 1.0)
    logp.retain_grad()
    ref = logp.detach() + 0.3
    ref[injected] = -1e4  # an absurd reference on injected tokens must not matter either
    adv = torch.tensor([1.0, -1.0, 0.5, -0.5])
    loss, stats = agent_loss(logp, mask, adv, None, ref, beta=0.5, cfg=c)
    loss.backward()
    assert torch.isfinite(loss)
    assert logp.grad[injected].abs().max() == 0
    assert logp.grad[b["loss_mask"] == 1].abs().max() > 0
    # the loss value does not depend on what the policy says about injected tokens
    other = torch.where(injected, torch.full_like(logp, -50.0), logp.detach())
    again, _ = agent_loss(other, mask, adv, None, ref, beta=0.5, cfg=c)
    assert again.item() == pytest.approx(loss.item(), abs=0, rel=0)


def test_warmup_samples_encode_what_the_loop_builds(tiny_dirs, world):
    """SFT on a search trajectory sees the same tokens (observation text and tool images) as a rollout."""
    c0, index, train = world
    c = derive_config(c0, 0, agent={"max_turn_tokens": 128, "max_total_tokens": 1024})  # room for the teacher
    lm = load_model(tiny_dirs["qwen2_5_vl"])
    tools = ms.make_tools(c, index, None)
    mix, dropped = ms.warmup_samples(c, tools)
    search = [s for s in mix if not s.meta["familiar"]]
    assert dropped == 0 and search and len(search) < len(mix)
    s = search[0]
    assert sum(m["role"] == "assistant" for m in s.messages) == 2 and len(s.images) == 1 + c.search.top_k
    turns = teacher_trajectory(s).turns
    loop = AgentLoop(lm, tools, agent_config(c, sample=False))
    t = loop.run([(s.prompt_messages()[:1], s.images[:1])], n=1, questions=[s.meta["question"]],
                 script={1: turns[0], 2: turns[1]})[0][0]
    assert t.finish_reason == "answer" and t.tool_calls[0].status == "ok"
    enc = encode_for_sft(s, lm.processor, lm.adapter, 4096)
    loop_ids = t.prompt_ids + t.token_ids
    assert enc.input_ids[:len(loop_ids)].tolist() == loop_ids
    # every sampled token is an SFT target; no injected token is, but for the end token closing the search turn
    # (SFT teaches it; the loop stops at </search> and injects it)
    targets = (enc.labels[:len(loop_ids)] >= 0).tolist()[len(t.prompt_ids):]
    im_end = lm.tokenizer.convert_tokens_to_ids("<|im_end|>")
    diff = [j for j, (a, m) in enumerate(zip(targets, t.response_mask)) if a != bool(m)]
    assert [t.token_ids[j] for j in diff] == [im_end] and diff[0] == t.turns[0].end


@pytest.mark.parametrize("override, message", [
    ("mmsearch.methods=[rl,dpo]", r"mmsearch.methods: unknown \['dpo'\]"),
    ("mmsearch.warmup_steps=0", "model.path is empty and mmsearch.warmup_steps is 0"),
    ("agent.max_rounds=0", "agent.max_rounds: 0 is out of range"),
    ("search.image_results=snippets", "search.image_results: 'snippets' is not allowed"),
])
def test_errors_name_the_key(override, message):
    with pytest.raises(ConfigError, match=message):
        ms.check_mmsearch(load_config(CPU, [override]))


def test_paper_recipe():
    cfg = load_config(RECIPES / "mmsearch_r1.yaml")
    with pytest.raises(ConfigError, match="model.path is empty"):
        ms.check_mmsearch(cfg)
    ag, sc = cfg.agent, cfg.search
    assert (cfg.rollout.group_size, ag.max_rounds, ag.image_search_rounds, ag.image_search_limit,
            ag.text_search_limit, sc.top_k) == (8, 3, [1], 1, 2, 5)
    assert (cfg.algorithm.beta, cfg.algorithm.kl_estimator, sc.penalty, sc.format_penalty, cfg.rl.lr) == \
        (0.001, "low_var_kl", 0.1, 0.1, 2e-6)
    assert (ag.max_turn_tokens, ag.max_total_tokens, cfg.rl.prompts_per_step // ag.mini_batches) == (2048, 8192, 128)


TINY = [WORLD, "mmsearch.warmup_steps=3", "mmsearch.warmup_size=24", "trainer.batch_size=4", "rl.steps=2",
        "rl.prompts_per_step=2", "rollout.group_size=2", "data.train_size=8", "data.eval_size=6",
        "agent.max_turn_tokens=48", "agent.max_total_tokens=400", "logging.progress=false", "logging.tensorboard=false"]


def test_experiment_end_to_end_and_resume(tmp_path, capsys):
    out = tmp_path / "ms"
    s = ms.run_mmsearch(CPU, out=str(out), seeds=[0], overrides=TINY)
    assert "familiar" in capsys.readouterr().out
    cols = s["table"]["columns"]
    assert cols[:7] == ["model", "accuracy", "acc. familiar", "acc. unfamiliar", "search ratio", "search familiar",
                        "search unfamiliar"]
    rows = s["table"]["rows"]
    assert [r[0] for r in rows] == ["warm-up SFT", "RL, no search penalty", "RL, search penalty",
                                    "always search (RAG)", "never search (direct)"]
    assert all("±" in cell for r in rows for cell in r[1:7])
    md = (out / "results.md").read_text()
    assert md.count("\n| ") == 1 + 5 and "acc. familiar | acc. unfamiliar" in md
    by = {r[0]: r for r in rows}
    assert by["always search (RAG)"][4] == "1.000 ± 0.000" and by["never search (direct)"][4] == "0.000 ± 0.000"
    seed = out / "seed0"
    warm = json.loads((seed / "warmup" / "result.json").read_text())
    assert 0 < warm["direct"] < warm["train_size"]  # direct and search trajectories
    conf = lambda p: load_config(seed / p / "config.yaml")  # noqa: E731
    assert conf("rl").search.penalty == 0.0 and conf("rl_penalty").search.penalty == 0.1
    assert json.loads((seed / "rl_penalty" / "result.json").read_text())["steps"] == 2
    assert (seed / "index" / "meta.json").exists() and any((seed / "tool_cache").rglob("*.json"))
    ev = json.loads((seed / "rl" / "eval" / "metrics.json").read_text())
    assert ev["n"] == 6 and ev["n_familiar"] + ev["n_unfamiliar"] == 6

    before = {p: p.stat().st_mtime_ns for p in out.rglob("result.json")}
    again = ms.run_mmsearch(CPU, out=str(out), seeds=[0], overrides=[*TINY, "mmsearch.methods=[warmup,rl]"])
    assert again["table"]["rows"] == rows[:2]
    assert {p: p.stat().st_mtime_ns for p in out.rglob("result.json")} == before
    with pytest.raises(ConfigError, match="finished with other settings"):
        ms.run_mmsearch(CPU, out=str(out), seeds=[0], overrides=[*TINY, "search.penalty=0.2"])
