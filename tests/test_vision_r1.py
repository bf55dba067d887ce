"""Vision-R1 experiment: stage settings, the results table, and the whole runner end to end on a tiny model
(base -> Zero; cold start -> CI -> PTST stage 1 -> stage 2; CI -> Long), resumable."""

import json
from pathlib import Path

import pytest
import yaml

import mmr1.recipes.vision_r1.runner as vr
from mmr1.config import R1_ZERO_PROMPT, load_config
from mmr1.errors import ConfigError

RECIPES = Path(__file__).parents[1] / "src" / "mmr1" / "recipes" / "vision_r1"
CPU = RECIPES / "vision_r1_cpu.yaml"


@pytest.mark.parametrize("override, message", [
    ("vision_r1.stages=[]", "vision_r1.stages is empty"),
    ("vision_r1.stages=[{max_new_tokens: 8, group_sise: 2, steps: 1}]",
     r"unknown key 'vision_r1.stages\[0\].group_sise'; did you mean 'vision_r1.stages\[0\].group_size'"),
    ("vision_r1.stages=[{max_new_tokens: 0, group_size: 2, steps: 1}]",
     r"vision_r1.stages\[0\].max_new_tokens: 0 is out of range"),
    ("vision_r1.methods=[zero,dpo]", r"vision_r1.methods: unknown \['dpo'\]"),
    ("vision_r1.base_sft_steps=0", "model.path is empty and vision_r1.base_sft_steps is 0"),
])
def test_stage_errors_name_the_key(override, message):
    with pytest.raises(ConfigError, match=message):
        vr.parse_stages(load_config(CPU, [override]))


def test_paper_recipe():
    cfg = load_config(RECIPES / "vision_r1.yaml")
    stages = vr.parse_stages(load_config(RECIPES / "vision_r1.yaml", ["model.path=/ckpt/qwen"]))
    assert [(s.max_new_tokens, s.group_size, s.steps) for s in stages] == [(4096, 16, 100), (8192, 8, 100)]
    assert (cfg.algorithm.beta, cfg.algorithm.clip_low, cfg.algorithm.clip_high) == (0.01, 0.2, 0.2)
    assert (cfg.eval.temperature, cfg.eval.top_p, cfg.eval.retries_missing_answer) == (0.6, 0.95, 4)
    assert (cfg.trainer.lr, cfg.trainer.epochs, cfg.trainer.batch_size * cfg.trainer.grad_accum) == (5e-6, 2, 32)


def test_results_table():
    ev = lambda a, t: {"accuracy": a, "format_rate": 1.0, "mean_tokens": t, "truncation_rate": 0.0, "n": 10}  # noqa
    t = vr.results_table({"base": [ev(0.1, 20), ev(0.3, 40)], "zero": [], "ci": [ev(0.5, 90)]})
    assert t["columns"] == ["model", "accuracy", "format rate", "mean output tokens", "truncated"]
    # mean .2, sample std sqrt(.02) = .141; tokens 30 ± 14.1
    assert t["rows"] == [["base (Zero prompt)", "0.200 ± 0.141", "1.000 ± 0.000", "30.0 ± 14.1", "0.000 ± 0.000"],
                         ["CI", "0.500 ± 0.000", "1.000 ± 0.000", "90.0 ± 0.0", "0.000 ± 0.000"]]


TINY = ["vision_r1.base_sft_steps=4", "vision_r1.base_sft_size=16", "trainer.max_steps=3", "rl.prompts_per_step=2",
        "vision_r1.stages=[{max_new_tokens: 8, group_size: 2, steps: 2}, {max_new_tokens: 12, group_size: 2, "
        "steps: 3}]", "data.train_size=16", "data.eval_size=4", "vision_r1.coldstart_size=16",
        "logging.progress=false", "logging.tensorboard=false"]


def test_experiment_end_to_end_and_resume(tmp_path, monkeypatch):
    loads = []
    real_build = vr.build_model

    def recording_build(cfg, run_path=None, path=None):
        loads.append(str(path) if path else None)
        return real_build(cfg, run_path, path=path)

    monkeypatch.setattr(vr, "build_model", recording_build)
    out = tmp_path / "vr"
    s = vr.run_vision_r1(CPU, out=str(out), seeds=[0], overrides=TINY)
    seed = out / "seed0"
    labels = [row[0] for row in s["table"]["rows"]]
    assert labels == ["base (Zero prompt)", "Zero", "CI", "CI + PTST", "CI + Long"]
    assert (out / "results.md").read_text().count("\n| ") == 6 + 3  # header + 5 rows; PTST: header + 2 stages

    res = lambda p: json.loads((seed / p / "result.json").read_text())  # noqa: E731
    conf = lambda p: yaml.safe_load((seed / p / "config.yaml").read_text())  # noqa: E731
    base, ci, st1, st2 = res("base"), res("ci"), res("ci_ptst/stage1"), res("ci_ptst/stage2")
    # each model starts where the method says: Zero and CI from the base, PTST stage 2 from stage 1, Long from CI
    assert loads[1:] == [base["path"], base["path"], ci["path"], st1["path"], ci["path"]]
    # Zero: the R1-Zero prompt, format + result rewards summed, first stage's length and group, all steps
    z = conf("zero")
    assert z["data"]["system_prompt"] == R1_ZERO_PROMPT and z["rewards"]["combine"] == "sum"
    assert (z["rollout"]["max_new_tokens"], z["rollout"]["group_size"], z["rl"]["steps"]) == (8, 2, 5)
    # PTST stages and Long: HFRRF (format x result), no system prompt, their own lengths
    for p, length, steps in (("ci_ptst/stage1", 8, 2), ("ci_ptst/stage2", 12, 3), ("ci_long", 12, 5)):
        c = conf(p)
        assert c["rewards"]["combine"] == "product" and c["data"]["system_prompt"] is None
        assert (c["rollout"]["max_new_tokens"], c["rl"]["steps"]) == (length, steps)
    assert st1["eval_stage"]["mean_tokens"] <= 8 and st2["eval"]["mean_tokens"] <= 12
    assert s["coldstart"][0]["samples"] == 16 and s["coldstart"][0]["kept"] > 0
    # the cold start is the SFT data of CI
    assert ci["train_size"] == s["coldstart"][0]["kept"]

    before = {p: p.stat().st_mtime_ns for p in out.rglob("result.json")}
    again = vr.run_vision_r1(CPU, out=str(out), seeds=[0], overrides=TINY)
    assert again["table"] == s["table"]
    assert {p: p.stat().st_mtime_ns for p in out.rglob("result.json")} == before
    # other settings in the same directory are refused, not mixed with the finished stages
    with pytest.raises(ConfigError, match="finished with other settings"):
        vr.run_vision_r1(CPU, out=str(out), seeds=[0], overrides=[*TINY, "rl.lr=1e-4"])
