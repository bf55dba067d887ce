import json
import os
import signal
import subprocess
import sys
import time


def test_ctrl_c_leaves_a_resumable_checkpoint(tmp_path):
    """SIGINT mid-run: the CLI checkpoints the current step, exits 130, and a rerun resumes to the end."""
    run = tmp_path / "run"
    args = [sys.executable, "-m", "mmr1.cli", "sft", "quickstart", f"logging.run_dir={run}", "model.tiny_size=S",
            "data.train_size=64", "trainer.max_steps=200", "trainer.batch_size=4", "trainer.save_every=0",
            "logging.progress=false", "logging.tensorboard=false", "logging.log_every=1"]
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env)
    metrics = run / "metrics.jsonl"
    deadline = time.time() + 120
    while time.time() < deadline and not (metrics.exists() and len(metrics.read_text().splitlines()) >= 3):
        time.sleep(0.2)
    proc.send_signal(signal.SIGINT)
    out, _ = proc.communicate(timeout=120)
    assert proc.returncode == 130, out.decode()[-2000:]
    assert b"rerun the same command to resume" in out
    ckpts = sorted((run / "checkpoints").glob("step-*"))
    assert len(ckpts) == 1
    stopped_at = json.loads((ckpts[0] / "state.json").read_text())["step"]
    assert 3 <= stopped_at < 200
    assert not (run / "final").exists()
    # the same command resumes from that step (a rerun with other settings is refused: tests/test_faults.py)
    res = subprocess.run(args, capture_output=True, env=env, timeout=300)
    assert res.returncode == 0, res.stderr.decode()[-2000:]
    assert f"(step {stopped_at})".encode() in res.stderr
    assert (run / "final" / "model.safetensors").exists()
    steps = [json.loads(line)["step"] for line in metrics.read_text().splitlines()]
    assert steps == list(range(1, 201))  # every step logged once, none twice
