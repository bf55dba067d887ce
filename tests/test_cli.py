import json

import pytest

from mmr1.cli import build_parser, main


def test_help_lists_every_command_and_config_key(capsys):
    with pytest.raises(SystemExit):
        main(["--help"])
    out = capsys.readouterr().out
    for cmd in ("tiny-model", "data", "sft", "grpo", "eval", "quickstart", "config"):
        assert cmd in out
    with pytest.raises(SystemExit):
        main(["grpo", "--help"])
    assert "rl.prompts_per_step (int, default 8)" in capsys.readouterr().out
    with pytest.raises(SystemExit):
        main(["sft", "--help"])
    out = capsys.readouterr().out
    assert "trainer.lr (float, default 0.001): peak learning rate" in out
    assert "data.on_error (one of 'raise', 'skip'" in out


def test_every_option_has_help():
    parser = build_parser()
    stack = [parser]
    while stack:
        p = stack.pop()
        for action in p._actions:
            if action.__class__.__name__ == "_SubParsersAction":
                stack += list(action.choices.values())
            elif action.dest != "help":
                assert action.help, f"{p.prog}: option {action.dest} has no help"


def test_tiny_model_and_config_commands(tmp_path, capsys):
    assert main(["tiny-model", "--family", "qwen2_vl", "--size", "S", "--out", str(tmp_path / "m")]) == 0
    assert json.loads((tmp_path / "m" / "config.json").read_text())["model_type"] == "qwen2_vl"
    assert main(["config", "quickstart", "trainer.lr=0.5"]) == 0
    assert "lr: 0.5" in capsys.readouterr().out


def test_config_error_is_one_line(capsys):
    assert main(["config", "quickstart", "trainer.lrr=1"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["error: unknown key 'trainer.lrr'; did you mean 'trainer.lr'? (known: lr, lr_scheduler, "
                   "warmup_ratio, weight_decay, max_grad_norm, batch_size, grad_accum, epochs, max_steps, "
                   "max_length, seed, eval_every, save_every, keep_checkpoints, resume, overwrite, gradient_checkpointing)"]


def test_data_world_imperfect_teacher(tmp_path, capsys):
    from mmr1.data.worlds import make_world

    out = tmp_path / "w.jsonl"
    assert main(["data", "world", "counting", "--n", "40", "--with-solution", "--teacher-miss", "0.3",
                 "--out", str(out)]) == 0
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    want = make_world("counting", n=40, seed=0, with_solution=True, teacher_miss=0.3)
    assert [r["messages"][-1]["content"][0]["text"] for r in rows] == [s.target() for s in want]
    perfect = make_world("counting", n=40, seed=0, with_solution=True)
    assert any(a.target() != b.target() for a, b in zip(want, perfect))
    capsys.readouterr()
    assert main(["data", "world", "counting", "--n", "2", "--with-solution", "--teacher-miss", "1.5",
                 "--out", str(out)]) == 2
    assert "teacher_miss" in capsys.readouterr().err


def test_data_world_then_check(tmp_path, capsys):
    out = tmp_path / "w.jsonl"
    assert main(["data", "world", "counting", "--n", "5", "--with-solution", "--out", str(out)]) == 0
    assert main(["data", "check", str(out)]) == 0
    capsys.readouterr()
    # break one image and one record: check reports both, exit code 1
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    img = out.parent / rows[1]["images"][0]
    img.write_bytes(img.read_bytes()[:60])
    del rows[3]["answers"]
    rows[3]["messages"] = "not a list"
    out.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    assert main(["data", "check", str(out)]) == 1
    text = capsys.readouterr().out
    assert f"{out}:2" in text and "images[0]" in text
    assert f"{out}:4" in text and "messages" in text


def test_grpo_command_runs(tmp_path, capsys):
    """`mmr1 grpo` end to end on the quickstart recipe, cut down: metrics per step and a final model."""
    args = ["grpo", "quickstart", f"logging.run_dir={tmp_path / 'rl'}", "data.train_size=8", "data.eval_size=4",
            "rl.steps=2", "rl.prompts_per_step=2", "rollout.group_size=2", "rollout.max_new_tokens=6",
            "logging.progress=false", "logging.tensorboard=false"]
    assert main(args) == 0
    out = capsys.readouterr().out
    assert "GRPO" in out
    rows = [json.loads(x) for x in (tmp_path / "rl" / "metrics.jsonl").read_text().splitlines()]
    steps = [r for r in rows if "rl/reward/mean" in r]
    assert [r["step"] for r in steps] == [1, 2]
    assert {"rl/kl", "rl/time/rollout", "rl/completion_len/mean"} <= set(steps[0])
    assert (tmp_path / "rl" / "final" / "model.safetensors").exists()


@pytest.mark.parametrize("cmd, override, message", [
    ("othink", "othink.tasks={}", "othink.tasks is empty"),
    ("vision-r1", "vision_r1.stages=[]", "vision_r1.stages is empty"),
    ("mmsearch", "mmsearch.methods=[warmup,dpo]", "mmsearch.methods: unknown"),
])
def test_experiment_commands_check_their_settings_first(cmd, override, message, capsys, tmp_path):
    from mmr1.cli import main

    assert main([cmd, override, "--out", str(tmp_path / "x")]) == 2
    assert message in capsys.readouterr().err
