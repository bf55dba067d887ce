"""The quickstart end to end, cut down: every stage runs and the summary carries what the README reports."""

import json

from mmr1.data.worlds import make_world
from mmr1.recipes.quickstart.runner import accuracy_by_answer, run_quickstart


def test_accuracy_by_answer():
    samples = make_world("counting", n=6, seed=0)
    correct = [True, False, True, True, False, False]
    want = {}
    for s, ok in zip(samples, correct):
        want.setdefault(s.answer, []).append(ok)
    got = accuracy_by_answer(samples, correct)
    assert got == {a: round(sum(v) / len(v), 3) for a, v in sorted(want.items())}
    assert list(got) == sorted(got)


def test_quickstart_runs_every_stage(tmp_path, capsys):
    out = tmp_path / "qs"
    summary = run_quickstart(str(out), seed=0, overrides=[
        "data.train_size=24", "data.eval_size=6", "trainer.epochs=1", "trainer.batch_size=8", "rl.steps=2",
        "rl.prompts_per_step=2", "rollout.group_size=2", "rollout.max_new_tokens=8", "logging.progress=false",
        "logging.tensorboard=false"])
    assert json.loads((out / "summary.json").read_text()) == summary
    assert summary["eval_size"] == 6 and summary["sft_steps"] == 3 and summary["rl_steps"] == 2
    # the imperfect teacher: its train solutions are scored against the gold answers
    world = {"variants": ["count_colour"], "object_size": [0.5, 0.5]}  # quickstart.yaml's
    train = make_world("counting", n=24, seed=0, with_solution=True, teacher_miss=0.2, **world)
    said = [s.target().split("<answer>")[1].split("</answer>")[0] for s in train]
    assert summary["teacher"] == {"miss": 0.2, "accuracy": sum(a == s.answer for a, s in zip(said, train)) / 24}
    assert summary["teacher"]["accuracy"] < 1.0
    by = summary["accuracy_by_answer"]
    assert set(by) == {"teacher", "sft", "rl"}
    rows = [json.loads(x) for x in (out / "eval" / "rl" / "predictions.jsonl").read_text().splitlines()]
    test = make_world("counting", "test", n=6, seed=0, **world)
    assert by["rl"] == accuracy_by_answer(test, [r["correct"] for r in rows])
    text = capsys.readouterr().out
    assert "SFT + GRPO" in text and "accuracy by gold answer" in text
