"""Data parallelism on the CPU: 2 ranks under torchrun (gloo, FSDP2) against one process over the same
global batch, and a checkpoint written by 2 ranks resumed by 1.

Tolerance: 1e-4 absolute on every weight after the run (the runs here move weights by ~1e-3; the two
layouts differ only in float summation order, ~1e-6)."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from safetensors.torch import load_file

REPO = Path(__file__).resolve().parents[1]
TOL = 1e-4

RL = ["data.train_size=64", "data.eval_size=8", "rl.steps=3", "rl.prompts_per_step=4", "rollout.group_size=4",
      "rollout.max_new_tokens=16", "rl.micro_batch_size=8", "rl.lr=1e-3", "algorithm.beta=0.04",
      "trainer.save_every=2", "logging.log_every=1", "logging.progress=false", "logging.tensorboard=false",
      "rewards.accuracy_weight=0", "rewards.format_weight=0", "rewards.custom={'tests.test_grpo:letter_a':1.0}"]
SFT = ["data.train_size=40", "data.eval_size=8", "trainer.max_steps=4", "trainer.batch_size=5",
       "trainer.lr=1e-3", "trainer.save_every=0", "logging.progress=false", "logging.tensorboard=false"]


def _mmr1(args: list[str], ranks: int) -> None:
    """Run `mmr1 ARGS` in one process or under torchrun. A 2-rank launch is tried twice (from a clean run
    directory): once in CI a rank aborted (SIGABRT) inside gloo and could not be reproduced in 6 reruns."""
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(REPO))
    env.pop("WORLD_SIZE", None)
    launch = ([sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={ranks}"]
              if ranks > 1 else [sys.executable])
    run_dir = Path(next(a for a in args if a.startswith("logging.run_dir=")).split("=", 1)[1])
    for attempt in range(2 if ranks > 1 else 1):
        if attempt:
            shutil.rmtree(run_dir, ignore_errors=True)
        out = subprocess.run([*launch, "-m", "mmr1.cli", *args], cwd=REPO, env=env, capture_output=True, text=True,
                             timeout=600)
        if out.returncode == 0:
            return
        first = [line for line in out.stderr.splitlines() if "Error" in line or "rank0" in line or "terminate" in line]
        print(f"attempt {attempt + 1} failed (exit {out.returncode}):\n" + "\n".join(first[:40]), file=sys.stderr)
    assert out.returncode == 0, "\n".join(first[:40]) + "\n...\n" + out.stderr[-3000:]


def _max_diff(a: Path, b: Path) -> float:
    wa, wb = load_file(str(a / "model.safetensors")), load_file(str(b / "model.safetensors"))
    assert set(wa) == set(wb)
    return max(float((wa[k] - wb[k]).abs().max()) for k in wa)


def _metrics(run: Path) -> list[dict]:
    return [json.loads(line) for line in open(run / "metrics.jsonl")]


@pytest.fixture(scope="module")
def grpo_runs(tiny_dirs, tmp_path_factory):
    root = tmp_path_factory.mktemp("dp")
    model = f"model.path={tiny_dirs['qwen2_5_vl']}"
    _mmr1(["grpo", model, *RL, f"logging.run_dir={root / 'two'}"], ranks=2)
    _mmr1(["grpo", model, *RL, "rollout.seed_per_prompt=true", f"logging.run_dir={root / 'one'}"], ranks=1)
    return root, Path(tiny_dirs["qwen2_5_vl"])


def test_two_ranks_match_one_process_over_the_same_global_batch(grpo_runs):
    root, base = grpo_runs
    two, one = root / "two", root / "one"
    moved = _max_diff(one / "final", base)
    assert moved > 10 * TOL  # the run did update the weights
    assert _max_diff(two / "final", one / "final") < TOL
    m2, m1 = _metrics(two), _metrics(one)
    assert [r["step"] for r in m2] == [1, 2, 3]
    for a, b in zip(m2, m1):
        for key in ("rl/reward/mean", "rl/kl", "rl/grad_norm", "rl/completion_len/mean"):
            assert a[key] == pytest.approx(b[key], abs=1e-4), key
    assert m2[-1]["rl/kl"] > 0  # beta > 0: the reference pass ran on both layouts
    assert (two / "log.rank0.txt").exists() and (two / "log.rank1.txt").exists()


def test_a_checkpoint_saved_by_two_ranks_resumes_in_one_process(grpo_runs, tiny_dirs, tmp_path):
    root, _ = grpo_runs
    run = tmp_path / "resumed"
    shutil.copytree(root / "two" / "checkpoints" / "step-000002", run / "checkpoints" / "step-000002")
    assert json.loads((run / "checkpoints" / "step-000002" / "state.json").read_text())["step"] == 2
    _mmr1(["grpo", f"model.path={tiny_dirs['qwen2_5_vl']}", *RL, "rollout.seed_per_prompt=true",
           f"logging.run_dir={run}"], ranks=1)
    assert [r["step"] for r in _metrics(run)] == [3]  # resumed at step 2, ran only step 3
    assert _max_diff(run / "final", root / "two" / "final") < TOL


def test_sft_on_two_ranks_matches_one_process(tiny_dirs, tmp_path):
    model = f"model.path={tiny_dirs['qwen2_5_vl']}"
    # batch 5 over 2 ranks: unequal shares (3 + 2 rows), still the same global loss
    _mmr1(["sft", model, *SFT, f"logging.run_dir={tmp_path / 'two'}"], ranks=2)
    _mmr1(["sft", model, *SFT, f"logging.run_dir={tmp_path / 'one'}"], ranks=1)
    assert _max_diff(tmp_path / "one" / "final", Path(tiny_dirs["qwen2_5_vl"])) > 10 * TOL
    assert _max_diff(tmp_path / "two" / "final", tmp_path / "one" / "final") < TOL


def test_single_process_commands_refuse_torchrun_with_one_line(monkeypatch, capsys):
    from mmr1.cli import main

    monkeypatch.setenv("WORLD_SIZE", "2")
    assert main(["eval", "logging.run_dir=/nonexistent"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "`mmr1 eval` runs in one process" in err[0] and "mmr1 grpo" in err[0]
