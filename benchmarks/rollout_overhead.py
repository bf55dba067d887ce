"""What recording rollouts (RUN/rollouts/) costs a GRPO step: recording off vs on, side by side in one process.

    python benchmarks/rollout_overhead.py              # about 1 minute on 2 cores
    python benchmarks/rollout_overhead.py --rounds 8 --threads 2

The quickstart's RL stage (tiny Qwen2.5-VL S built into a temporary directory, the counting world, 16 prompts x
G = 8, 64 new tokens, beta = 0.04 with a reference model) runs `GRPOStep.run` step after step; each step is
taken in one of three modes, rotated so every mode sees early and late steps alike: off (no recorder), on
with the default `logging.rollouts.groups=2`, and on with every group of the step (16, the worst case). A
step's time is `run` plus, when on, the recorder's `after_rl_step` (building the records, decoding the
loss-mask segments, hashing and writing new images as PNG, writing the JSONL). Consecutive steps differ
(other prompts, other lengths), so the step times of the modes carry that noise; the recording time itself
is timed on its own in the same steps and its share of the step is the overhead reported. Results go to
benchmarks/results/rollout_overhead.json.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "src"))

MODES = ("off", "on (2 groups)", "on (all groups)")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rounds", type=int, default=6, help="timed steps per mode (default 6)")
    ap.add_argument("--threads", type=int, default=1, help="torch threads (default 1)")
    ap.add_argument("--prompts", type=int, default=16, help="prompts per step (default 16, the quickstart's)")
    ap.add_argument("--group", type=int, default=8, help="G (default 8)")
    ap.add_argument("--length", type=int, default=64, help="max new tokens (default 64)")
    ap.add_argument("--out", default=str(HERE / "results" / "rollout_overhead.json"))
    a = ap.parse_args()

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import torch

    torch.set_num_threads(a.threads)
    from mmr1.build import build_samples
    from mmr1.config import RolloutsLogConfig, load_config
    from mmr1.models.loading import load_model
    from mmr1.models.tiny import build_tiny_model
    from mmr1.recipes.quickstart.runner import RECIPE
    from mmr1.train.checkpoint import seed_everything
    from mmr1.train.grpo import GRPOStep
    from mmr1.train.rollouts import RolloutRecorder

    tmp = Path(tempfile.mkdtemp(prefix="mmr1-rollout-bench-"))
    cfg = load_config(RECIPE, [f"logging.run_dir={tmp}", f"rl.prompts_per_step={a.prompts}",
                               f"rollout.group_size={a.group}", f"rollout.max_new_tokens={a.length}",
                               "data.train_size=400", "algorithm.beta=0.04", "rl.steps=1000"])
    model_dir = build_tiny_model(tmp / "model", family=cfg.model.tiny_family, size=cfg.model.tiny_size, seed=0)
    seed_everything(0)
    lm = load_model(model_dir)
    train, _ = build_samples(cfg.data, "train")
    runner = GRPOStep(cfg, lm, train, ref_path=model_dir)
    recorders = {MODES[1]: RolloutRecorder(tmp / "on2", RolloutsLogConfig(groups=2), lm.tokenizer),
                 MODES[2]: RolloutRecorder(tmp / "onall", RolloutsLogConfig(groups=a.prompts), lm.tokenizer)}

    runner.run(0)  # warm-up (lazy initialisation)
    for rec in recorders.values():
        rec.after_rl_step(1, runner, {})
    times: dict[str, list[float]] = {m: [] for m in MODES}
    record: dict[str, list[float]] = {m: [] for m in MODES[1:]}
    step = 1
    for r in range(a.rounds):
        for k in range(len(MODES)):
            mode = MODES[(r + k) % len(MODES)]
            t0 = time.perf_counter()
            out = runner.run(step)
            t1 = time.perf_counter()
            if mode != "off":
                recorders[mode].after_rl_step(step + 1, runner, out.metrics)
                record[mode].append(time.perf_counter() - t1)
            times[mode].append(time.perf_counter() - t0)
            step += 1
            print(f"round {r + 1}/{a.rounds} {mode:>16}: {times[mode][-1]:.3f} s", flush=True)

    off = statistics.median(times["off"])
    res = {"setup": {"model": "tiny qwen2_5_vl S", "prompts": a.prompts, "group": a.group, "max_new_tokens": a.length,
                     "beta": 0.04, "threads": a.threads, "rounds": a.rounds, "machine": platform.processor() or
                     platform.machine(), "cpus": os.cpu_count(), "load_avg": os.getloadavg()},
           "step_s_median": {m: statistics.median(v) for m, v in times.items()},
           "step_s": times,
           "record_s_median": {m: statistics.median(v) for m, v in record.items()},
           "record_share_median": {m: statistics.median(x / t for x, t in zip(record[m], times[m])) for m in record},
           "record_share_max": {m: max(x / t for x, t in zip(record[m], times[m])) for m in record},
           "bytes_per_recorded_step": {m: _bytes(rec.root) / max(1, len(list(rec.root.glob("step-*.jsonl"))))
                                       for m, rec in recorders.items()}}
    print()
    print("| mode | step time (median) | vs off | recording alone (median) | recording / step (median, max) |")
    print("|---|---|---|---|---|")
    for m in MODES:
        st = res["step_s_median"][m]
        extra = ("", "") if m == "off" else (
            f"{res['record_s_median'][m] * 1000:.1f} ms",
            f"{100 * res['record_share_median'][m]:.2f}%, {100 * res['record_share_max'][m]:.2f}%")
        print(f"| {m} | {st:.3f} s | {100 * (st / off - 1):+.1f}% | {extra[0]} | {extra[1]} |")
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    Path(a.out).write_text(json.dumps(res, indent=1) + "\n")
    print(f"\nwrote {a.out}")


def _bytes(root: Path) -> int:
    return sum(p.stat().st_size for p in root.rglob("*") if p.is_file())


if __name__ == "__main__":
    main()
