"""OThink-MR1 recipe: the R1-V accuracy check, few-shot subsets, the results table, config errors, and the
experiment runner end to end (tiny model, both synthetic worlds, every method, resume)."""

import json
import math
from xml.etree import ElementTree
from pathlib import Path

import pytest

from mmr1.algos import OThinkBeta
from mmr1.build import build_samples
from mmr1.config import load_config
from mmr1.errors import ConfigError
from mmr1.recipes.othink_mr1.runner import Experiment, parse_tasks, results_table, run_othink
from mmr1.rewards.checkers import check_answer
from mmr1.rewards.extract import extract_answer

RECIPES = Path(__file__).parents[1] / "src" / "mmr1" / "recipes" / "othink_mr1"
CPU = RECIPES / "othink_mr1_cpu.yaml"
REAL = Path(__file__).parents[2] / "shared" / "real-data"


@pytest.mark.parametrize("pred, gold, ok", [
    ("3", "3", True),
    (" 3 ", "3", True),  # stripped
    ("3.0", "3", True),  # math-verify: same number
    ("\\frac{1}{2}", "0.5", True),  # math-verify: same value
    ("5", "<answer> 5 </answer>", True),  # R1-V solutions carry the gold in answer tags
    ("C", "C", True),  # no maths in it: exact match decides
    ("B", "C", False),
    ("4", "3", False),
    ("three", "3", False),
])
def test_r1v_checker(pred, gold, ok):
    assert check_answer(pred, gold, "r1v") is ok


@pytest.mark.skipif(not REAL.is_dir(), reason="shared/real-data is not available")
@pytest.mark.parametrize("name, agree", [
    ("r1v_counting_results_superclevr_200_qwen2vl_2b_instruct_grpo100_legacy.json", 200),
    ("r1v_counting_results_superclevr_200_qwen2vl_2b_instruct_legacy.json", 197),
    ("r1v_geoqa_test_qwen2vl_7b_grpo_2epochs_legacy.json", 734),
    ("r1v_geoqa_test_qwen2vl_7b_instruct_legacy.json", 701),
])
def test_r1v_checker_against_recorded_verdicts(name, agree):
    # Measured agreement of the 'r1v' training checker (answer tag only, no fallback) with R1-V's own
    # verdicts: the rows test_r1v_agreement explains, plus the GeoQA outputs without an answer tag, which
    # R1-V's evaluation read from the prose and a training reward never does.
    rows = json.loads((REAL / name).read_text())["results"]
    recorded = [bool(r["is_correct"]) if "is_correct" in r else r["extracted_answer"] == r["ground_truth"]
                for r in rows]
    ours = [check_answer(extract_answer(r["model_output"]), r["ground_truth"], "r1v") for r in rows]
    assert sum(a == b for a, b in zip(ours, recorded)) == agree


def test_few_shot_subset_is_seeded_and_keeps_order():
    cfg = load_config(None, ["data.train_size=40", "data.train_limit=10", "data.world_seed=3"])
    a, _ = build_samples(cfg.data, "train")
    b, _ = build_samples(cfg.data, "train")
    full, _ = build_samples(load_config(None, ["data.train_size=40", "data.world_seed=3"]).data, "train")
    assert len(a) == 10 and [s.id for s in a] == [s.id for s in b]
    pos = [[s.id for s in full].index(s.id) for s in a]
    assert pos == sorted(pos) and pos != list(range(10))  # a random subset, in file order


def test_results_table_mean_and_sample_std():
    rec = [
        # base: evaluated once per seed on each task
        {"seed": 0, "method": "base", "train": "-", "eval": "a", "accuracy": 0.2, "format_rate": 1},
        {"seed": 1, "method": "base", "train": "-", "eval": "a", "accuracy": 0.4, "format_rate": 1},
        {"seed": 0, "method": "base", "train": "-", "eval": "b", "accuracy": 0.1, "format_rate": 1},
        {"seed": 1, "method": "base", "train": "-", "eval": "b", "accuracy": 0.1, "format_rate": 1},
        {"seed": 0, "method": "sft", "train": "a", "eval": "a", "accuracy": 0.5, "format_rate": 1},
        {"seed": 1, "method": "sft", "train": "a", "eval": "a", "accuracy": 0.7, "format_rate": 1},
        {"seed": 0, "method": "sft", "train": "a", "eval": "b", "accuracy": 0.0, "format_rate": 1},
        {"seed": 1, "method": "sft", "train": "a", "eval": "b", "accuracy": 0.2, "format_rate": 1},
    ]
    t = results_table(rec, ["a", "b"], ["base", "sft"])
    assert t["columns"] == ["method", "a→a", "a→b", "b→a", "b→b", "same-task", "cross-task"]
    # base on a: mean .3, sample std sqrt(((.2-.3)^2 + (.4-.3)^2) / 1) = .1414; the same in a->a and b->a
    assert t["rows"][0] == ["base", "0.300 ± 0.141", "0.100 ± 0.000", "0.300 ± 0.141", "0.100 ± 0.000",
                            "0.200", "0.200"]
    # sft trained on a only: a->a .6 ± .1414, a->b .1 ± .1414, nothing trained on b
    assert t["rows"][1] == ["SFT", "0.600 ± 0.141", "0.100 ± 0.141", "-", "-", "0.600", "0.100"]
    assert t["cells"]["sft|a|a"]["mean"] == pytest.approx(0.6)
    assert t["cells"]["sft|a|a"]["std"] == pytest.approx(math.sqrt(0.02))


@pytest.mark.parametrize("override, message", [
    ("othink.tasks={}", "othink.tasks is empty"),
    ("othink.methods=[sft,ppo]", r"othink.methods: unknown \['ppo'\]"),
    ("othink.tasks.counting.betta=0.1", "unknown key 'othink.tasks.counting.betta'; did you mean "
                                        "'othink.tasks.counting.beta'"),
    ("othink.tasks.counting.beta_max=-1", "othink.tasks.counting.beta_max: -1.0 is out of range"),
    ("othink.tasks.counting.data.trian=x", "unknown key 'data.trian'"),
    ("othink.tasks.counting.data.train=", "othink.tasks.counting.data.train is empty"),
    ("othink.base_sft_steps=0", "model.path is empty and othink.base_sft_steps is 0"),
])
def test_othink_config_errors_name_the_key(override, message):
    with pytest.raises(ConfigError, match=message):
        parse_tasks(load_config(CPU, [override]))


def test_paper_recipe_wants_paths():
    cfg = load_config(RECIPES / "othink_mr1.yaml", ["model.path=/ckpt/Qwen2-VL-2B-Instruct"])
    with pytest.raises(ConfigError, match="othink.tasks.counting.data.train is empty"):
        parse_tasks(cfg)
    cfg = load_config(RECIPES / "othink_mr1.yaml", [
        "model.path=/ckpt/Qwen2-VL-2B-Instruct", "othink.tasks.counting.data.train=/d/clevr",
        "othink.tasks.counting.data.eval=/d/superclevr", "othink.tasks.geometry.data.train=/d/geoqa",
        "othink.tasks.geometry.data.eval=/d/geoqa_test"])
    tasks = parse_tasks(cfg)
    assert (tasks["counting"].beta_min, tasks["counting"].beta_max) == (0.04, 0.10)
    assert (tasks["geometry"].beta_min, tasks["geometry"].beta_max, tasks["geometry"].beta) == (0.0, 0.02, 0.01)
    assert tasks["counting"].data["train_limit"] == 100 and cfg.rollout.group_size == 8
    assert cfg.rollout.max_new_tokens == 512 and cfg.rollout.temperature == 1.0 and cfg.rewards.checker == "r1v"


TINY = ["othink.base_sft_steps=3", "othink.base_sft_size=8", "trainer.max_steps=2", "rl.steps=4",
        "rl.prompts_per_step=2", "rollout.group_size=2", "data.eval_size=4", "data.train_size=16",
        "rollout.max_new_tokens=12", "logging.progress=false", "logging.tensorboard=false"]


def test_experiment_runs_every_method_on_every_task_and_resumes(tmp_path, capsys):
    out = tmp_path / "othink"
    summary = run_othink(CPU, out=str(out), seeds=[0], overrides=TINY)
    assert summary["tasks"] == ["counting", "reasoning"] and summary["seeds"] == [0]
    # base evaluated on both tasks; 3 methods x 2 train tasks x 2 eval tasks
    assert len(summary["records"]) == 2 + 3 * 2 * 2
    assert {(r["method"], r["train"], r["eval"]) for r in summary["records"]} >= {
        ("grpo_d", "counting", "reasoning"), ("sft", "reasoning", "counting"), ("base", "-", "counting")}
    assert [row[0] for row in summary["table"]["rows"]] == ["base", "SFT", "GRPO", "GRPO-D"]
    assert (out / "results.md").read_text().count("\n| ") == 5  # header + 4 methods
    assert json.loads((out / "results.json").read_text())["records"] == summary["records"]
    svg = (out / "curves.svg").read_text()
    ElementTree.fromstring(svg)  # well-formed
    assert svg.count("<polyline") >= 2 * 3 * 2 and "beta(s): train on reasoning" in svg

    # beta per step: GRPO-D follows the paper's schedule with each task's values, GRPO stays constant
    for task, (lo, hi, const) in {"counting": (0.04, 0.10, 0.04), "reasoning": (0.0, 0.02, 0.01)}.items():
        d = json.loads((out / "seed0" / task / "grpo_d" / "result.json").read_text())["curves"]
        assert d["beta"] == pytest.approx([OThinkBeta(lo, hi).value(s, 4) for s in range(4)])
        g = json.loads((out / "seed0" / task / "grpo" / "result.json").read_text())["curves"]
        assert g["beta"] == pytest.approx([const] * 4) and len(g["reward"]) == len(g["kl"]) == 4
    # the metrics log has beta at every step
    steps = [json.loads(line) for line in (out / "seed0" / "counting" / "grpo_d" / "metrics.jsonl").open()]
    assert [r["step"] for r in steps if "rl/beta" in r] == [1, 2, 3, 4]

    # a rerun finds every stage done and trains nothing
    before = {p: p.stat().st_mtime_ns for p in out.rglob("result.json")}
    again = run_othink(CPU, out=str(out), seeds=[0], overrides=TINY)
    assert again["records"] == summary["records"]
    assert {p: p.stat().st_mtime_ns for p in out.rglob("result.json")} == before


def test_a_stage_interrupted_before_its_result_is_redone(tmp_path):
    out = tmp_path / "othink"
    cfg = load_config(CPU, [*TINY, f"logging.run_dir={out}", "othink.seeds=[0]", "othink.methods=[sft]"])
    first = Experiment(cfg, out).run()
    (out / "seed0" / "counting" / "sft" / "result.json").unlink()  # as if killed during its evaluation
    second = Experiment(cfg, out).run()
    assert second["records"] == first["records"]
