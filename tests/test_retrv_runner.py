"""`mmr1 retrv` end to end on a tiny model and a tiny world (a few steps of every stage), then a rerun that
resumes from the finished stages instead of redoing them."""

import json
from pathlib import Path

from mmr1.cli import main
from mmr1.retrieval.compression import InformationCompressionModule
from mmr1.recipes.retrv_r1.runner import EVAL_MODES, RetrvReward, run_retrv

RECIPES = Path(__file__).parents[1] / "src" / "mmr1" / "recipes" / "retrv_r1"
CPU = RECIPES / "retrv_r1_cpu.yaml"
SMALL = ["retrv.world_size=6", "retrv.eval_size=3", "retrv.top_k=3", "retrv.max_inspections=1",
         "retrv.align_steps=2", "trainer.max_steps=2", "trainer.batch_size=2", "rl.steps=1", "rollout.group_size=2",
         "rl.prompts_per_step=2", "rl.micro_batch_size=4", "agent.max_turn_tokens=12", "agent.max_total_tokens=160",
         "logging.progress=false", "logging.tensorboard=false"]


def test_runner_end_to_end_and_resume(tmp_path):
    out = tmp_path / "retrv"
    s = run_retrv(CPU, out=str(out), seeds=[0], overrides=SMALL)
    res = json.loads((out / "results.json").read_text())
    assert res["seeds"] == [0] and set(res["results"]) == {"first_stage", "sft", "rl_curriculum", "rl_fixed"}
    assert {"R@1", "R@5"} <= set(res["results"]["first_stage"][0])
    for stage in ("sft", "rl_curriculum", "rl_fixed"):
        ev = res["results"][stage][0]
        assert set(ev) == set(EVAL_MODES)
        assert ev["compressed"]["inspections"] == 0 == ev["full"]["inspections"]
        assert ev["compressed"]["prompt_tokens"] < ev["full"]["prompt_tokens"]
        assert all(0 <= ev[m]["R@1"] <= 1 and ev[m]["time_s"] > 0 for m in EVAL_MODES)
    assert 0 <= res["results"]["first_stage"][0]["position_prior"]["R@1"] <= 1
    assert len(s["table"]["rows"]) == 2 + 3 * 3
    md = (out / "results.md").read_text()
    assert "| first stage (embedder) |" in md and "| position prior" in md and "compression + inspection" in md
    sft_dir = res["stages"]["sft"][0]["path"]
    assert InformationCompressionModule.from_pretrained(sft_dir).cfg.tokens_per_candidate == 2
    # rerun through the CLI: every stage is found finished, nothing is retrained
    marks = {p: p.stat().st_mtime for p in out.rglob("result.json")}
    assert len(marks) == 3
    assert main(["retrv", "retrv_r1_cpu", *SMALL, "--out", str(out), "--seeds", "0"]) == 0
    assert {p: p.stat().st_mtime for p in out.rglob("result.json")} == marks


def test_reward_curriculum_and_fixed_lambda():
    from types import SimpleNamespace

    from mmr1.config import load_config

    cfg = load_config(CPU, ["retrv.top_k=4"])
    traj = SimpleNamespace(text="<think>x</think><answer>2</answer>", tool_calls=[])
    sample = SimpleNamespace(meta={"k": 4, "gold": 1})
    cur, fixed = RetrvReward(cfg, "curriculum"), RetrvReward(cfg, "fixed")
    cur.total = fixed.total = 10
    cur.step = fixed.step = 5
    assert cur.penalty_at() == 0.5 and fixed.penalty_at() == cfg.retrv.lambda_fixed
    d = cur.details(traj, sample)
    assert d.correct and d.reward == cfg.retrv.format_weight * d.format + 1.0  # no inspection: no cost
    assert not cur.details(traj, SimpleNamespace(meta={"k": 4, "gold": 0})).correct


def test_paper_recipe():
    from mmr1.config import load_config

    cfg = load_config(RECIPES / "retrv_r1.yaml")
    assert cfg.retrv.top_k == 50 and cfg.model.lora.enabled and cfg.model.freeze_vision
    assert cfg.retrv.n_compress == 1 and cfg.retrv.lambda_schedule == "curriculum"


def test_icm_is_trained_with_the_model(lms):
    """attach_icm registers the ICM in the model, so SFT / GRPO optimizers (model params) include it."""
    from mmr1.config import load_config
    from mmr1.recipes.retrv_r1.runner import attach_icm

    lm = lms("qwen2_5_vl")
    rr = attach_icm(load_config(CPU), lm)
    trainable = {id(p) for p in lm.model.parameters() if p.requires_grad}
    assert all(id(p) in trainable for p in rr.icm.parameters())


def world_sft_samples(lms, *overrides):
    """(world, samples, teacher stats, prompts) of `sft_samples` on a 4-query world at K = 4."""
    from mmr1.config import load_config
    from mmr1.retrieval.world import make_cir_world
    from mmr1.recipes.retrv_r1.runner import attach_icm, first_stage, sft_samples

    cfg = load_config(CPU, ["retrv.top_k=4", *overrides])
    data = make_cir_world(4, "train", 0)
    ranking, _ = first_stage(cfg, data)
    return (data, *sft_samples(cfg, attach_icm(cfg, lms("qwen2_5_vl")), data, ranking))


def test_mixed_sft_trains_every_evaluated_mode(lms):
    """sft_mode=mixed: each teacher CoT three times, once per evaluated prompt kind, each on that kind's prompt;
    only the compression + inspection sample inspects, the others verify inline."""
    from mmr1.models.overrides import PLACEHOLDER
    from mmr1.retrieval.reward import INSPECT_START, check_format

    _, samples, stats, prompts = world_sft_samples(lms, "retrv.sft_mode=mixed")
    n = stats["kept"]
    assert n >= 2 and len(samples) == 3 * n and set(prompts) == {s.id for s in samples}
    by_kind = {}
    for s in samples:
        qid, kind = s.id.rsplit("/", 1)
        assert qid == s.meta["qid"]
        by_kind.setdefault(kind, []).append(s)
    assert {k: len(v) for k, v in by_kind.items()} == {"compressed_inspect": n, "compressed": n, "full": n}

    def first_turn(s):
        return "".join(p.get("text", "") for p in s.messages[0]["content"])

    def assistant(s):
        return "\n".join(p["text"] for m in s.messages if m["role"] == "assistant" for p in m["content"])

    for s in by_kind["compressed_inspect"]:
        assert first_turn(s).count(PLACEHOLDER) == 8 and "inspection-index-start>N" in first_turn(s)
    for s in by_kind["compressed"]:
        assert first_turn(s).count(PLACEHOLDER) == 8 and INSPECT_START not in first_turn(s)
        assert INSPECT_START not in assistant(s) and len(s.images) == 1  # the query image only
    for s in by_kind["full"]:
        assert PLACEHOLDER not in first_turn(s) and len(s.images) == 5  # query + 4 candidates inline
        assert INSPECT_START not in assistant(s)
    for kind, ss in by_kind.items():
        for s in ss:
            fmt = check_format(assistant(s), 4, 1)
            assert fmt.ok and fmt.answer == s.meta["gold"], (kind, s.id)


def test_scene_handle_setting_reaches_the_teacher(lms):
    """retrv.scene_handle=colour: the world teacher's phase 1 names the target's colour counts."""
    from mmr1.retrieval.prompts import scene_handle

    data, samples, _, _ = world_sft_samples(lms, "retrv.sft_mode=compressed", "retrv.scene_handle=colour")
    assert samples
    targets = {q.qid: q.meta["target"] for q in data.queries}
    for s in samples:
        first = s.messages[1]["content"][0]["text"]
        assert f"the ideal result has {scene_handle(targets[s.meta['qid']], 'colour')}." in first
