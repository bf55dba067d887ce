"""What recording rollouts (RUN/rollouts/) costs a GRPO step: recording off vs on, side by side in one process.

    python benchmarks/rollout_overhead.py              # about 3 minutes on 2 cores
    python benchmarks/rollout_overhead.py --steps 20 --threads 2

The quickstart's RL stage (tiny Qwen2.5-VL S built into a temporary directory, the counting world, 16 prompts x
G = 8, 64 new tokens, beta = 0.04 with a reference model) runs `GRPOStep.run` step after step. Each step is timed
as it runs without a recorder (off), then handed to two recorders, each timed: one with the default
`logging.rollouts.groups=2` and one recording every group of the step (16, the worst case). Recording is
`after_rl_step`: building the records, decoding the loss-mask segments, hashing the images and writing new
ones as PNG, writing the JSONL. "On" is the same step's time plus its recording, so the comparison is paired
step by step: consecutive steps sample other prompts and lengths, and a mode rotated over different steps would
measure that spread instead. Then `train_sft` runs --sft-steps steps of the quickstart's SFT (batch 16) with
recording off and then on, from the same start, and the recorder's own time is summed. Results go to
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

MODES = ("off", "on (2 groups)", "on (all groups)")  # on: the same step plus its recording


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--steps", type=int, default=10, help="timed GRPO steps (default 10)")
    ap.add_argument("--threads", type=int, default=1, help="torch threads (default 1)")
    ap.add_argument("--prompts", type=int, default=16, help="prompts per step (default 16, the quickstart's)")
    ap.add_argument("--group", type=int, default=8, help="G (default 8)")
    ap.add_argument("--length", type=int, default=64, help="max new tokens (default 64)")
    ap.add_argument("--sft-steps", type=int, default=100, help="SFT steps timed off and on (0: skip; default 100)")
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
    # Paired: every step is timed without recording (off) and then recorded by each recorder, so "on" is the
    # same step's work plus its recording, and the step-to-step spread (other prompts, lengths) cancels.
    times: dict[str, list[float]] = {m: [] for m in MODES}
    record: dict[str, list[float]] = {m: [] for m in MODES[1:]}
    load0 = os.getloadavg()
    for step in range(1, a.steps + 1):
        t0 = time.perf_counter()
        out = runner.run(step)
        run_s = time.perf_counter() - t0
        times["off"].append(run_s)
        for mode, rec in recorders.items():
            t = time.perf_counter()
            rec.after_rl_step(step + 1, runner, out.metrics)
            record[mode].append(time.perf_counter() - t)
            times[mode].append(run_s + record[mode][-1])
        print(f"step {step}/{a.steps}: " + ", ".join(f"{m} {times[m][-1]:.3f} s" for m in MODES), flush=True)

    sft = sft_overhead(cfg, model_dir, tmp, a.sft_steps) if a.sft_steps else None
    ratio = {m: [x / t for x, t in zip(times[m], times["off"])] for m in MODES[1:]}
    res = {"setup": {"model": "tiny qwen2_5_vl S", "prompts": a.prompts, "group": a.group, "max_new_tokens": a.length,
                     "beta": 0.04, "threads": a.threads, "steps": a.steps, "machine": platform.processor() or
                     platform.machine(), "cpus": os.cpu_count(), "load_avg_start": load0,
                     "load_avg_end": os.getloadavg()},
           "step_s_median": {m: statistics.median(v) for m, v in times.items()},
           "step_s": times,
           "record_s_median": {m: statistics.median(v) for m, v in record.items()},
           "overhead_median": {m: statistics.median(v) - 1 for m, v in ratio.items()},
           "overhead_max": {m: max(v) - 1 for m, v in ratio.items()},
           "bytes_per_recorded_step": {m: _bytes(rec.root) / max(1, len(list(rec.root.glob("step-*.jsonl"))))
                                       for m, rec in recorders.items()},
           "sft": sft}
    print()
    print("| mode | step time (median) | recording alone (median) | overhead per step (median, max) |")
    print("|---|---|---|---|")
    for m in MODES:
        extra = ("", "") if m == "off" else (
            f"{res['record_s_median'][m] * 1000:.1f} ms",
            f"{100 * res['overhead_median'][m]:.2f}%, {100 * res['overhead_max'][m]:.2f}%")
        print(f"| {m} | {res['step_s_median'][m]:.3f} s | {extra[0]} | {extra[1]} |")
    if sft:
        print(f"\nSFT, {sft['steps']} steps of the quickstart's batch 16, run off then on: off {sft['off_s']:.2f} s, "
              f"on {sft['on_s']:.2f} s; recording alone {sft['record_s']:.2f} s = {100 * sft['record_share']:.2f}% "
              f"of the recorded run ({1000 * sft['record_s'] / sft['steps']:.1f} ms a step)")
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    Path(a.out).write_text(json.dumps(res, indent=1) + "\n")
    print(f"\nwrote {a.out}")


def sft_overhead(cfg, model_dir: Path, tmp: Path, steps: int) -> dict:
    """`train_sft` for `steps` steps with recording off, then on (2 samples a step), from the same start; the
    recorder's own time is summed by wrapping its per-step hook."""
    from mmr1.build import build_samples
    from mmr1.config import load_config, to_dict
    from mmr1.models.loading import load_model
    from mmr1.train.rollouts import RolloutRecorder
    from mmr1.train.run_dir import RunDir
    from mmr1.train.sft import train_sft

    train, _ = build_samples(cfg.data, "train", with_solution=True)
    spent = [0.0]
    hook = RolloutRecorder.after_sft_step

    def timed(self, *args):
        t = time.perf_counter()
        hook(self, *args)
        spent[0] += time.perf_counter() - t

    RolloutRecorder.after_sft_step = timed
    wall = {}
    try:
        for mode in ("off", "on"):
            run = tmp / f"sft-{mode}"
            c = load_config(base=to_dict(cfg), overrides=[
                f"logging.run_dir={run}", f"trainer.max_steps={steps}", "trainer.save_every=0",
                "logging.tensorboard=false", "logging.progress=false", f"logging.rollouts.enabled={mode == 'on'}"])
            lm = load_model(model_dir)
            t = time.perf_counter()
            train_sft(c, lm, train, RunDir(run, tensorboard=False), progress=False)
            wall[mode] = time.perf_counter() - t
    finally:
        RolloutRecorder.after_sft_step = hook
    return {"steps": steps, "off_s": wall["off"], "on_s": wall["on"], "record_s": spent[0],
            "record_share": spent[0] / wall["on"]}


def _bytes(root: Path) -> int:
    return sum(p.stat().st_size for p in root.rglob("*") if p.is_file())


if __name__ == "__main__":
    main()
