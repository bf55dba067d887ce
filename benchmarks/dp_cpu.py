"""The data-parallel GRPO step on the CPU: 1 process vs 2 ranks (torchrun, gloo, FSDP2), same global batch.

    python benchmarks/dp_cpu.py                 # about 4 minutes on 2 cores
    python benchmarks/dp_cpu.py --rounds 3 --size M

Both layouts train the same saved tiny Qwen2.5-VL (built once into --model-dir) with `mmr1 grpo` on the
same global batch: --prompts prompts x G = 8 completions of exactly --length tokens (min = max new tokens),
beta = 0.04 with a reference model, the counting world's images. On a 2-core machine the fair comparison
is one process with 2 threads against 2 ranks with 1 thread each (the same cores); both are run, in
alternation, --rounds times. A run's step time is the median of its steps after the first (which pays
for lazy initialisation); the time split comes from the same steps' `rl/time/*` metrics. Peak memory is
the highest summed resident set size of the launcher's process tree (all ranks), sampled every 20 ms.
Results go to benchmarks/results/dp_cpu.json.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import psutil

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
SPLIT = ("rollout", "reward", "reference", "policy", "optimizer")


def tree_rss(proc: psutil.Process) -> int:
    try:
        procs = [proc, *proc.children(recursive=True)]
    except psutil.Error:  # the launcher has just exited
        return 0
    total = 0
    for p in procs:
        try:
            total += p.memory_info().rss
        except psutil.Error:
            pass
    return total


def run_layout(ranks: int, threads: int, args: list[str], run_dir: Path) -> dict:
    env = dict(os.environ, OMP_NUM_THREADS=str(threads), PYTHONPATH=str(REPO))
    env.pop("WORLD_SIZE", None)
    launch = ([sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={ranks}"]
              if ranks > 1 else [sys.executable])
    cmd = [*launch, "-m", "mmr1.cli", "grpo", *args, f"logging.run_dir={run_dir}"]
    proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    ps, peak, done = psutil.Process(proc.pid), [0], threading.Event()

    def sample():
        while not done.is_set():
            peak[0] = max(peak[0], tree_rss(ps))
            time.sleep(0.02)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    _, err = proc.communicate()
    done.set()
    sampler.join()
    if proc.returncode != 0:
        raise SystemExit(f"{ranks}-rank run failed:\n{err[-3000:]}")
    rows = [json.loads(line) for line in open(run_dir / "metrics.jsonl")][1:]  # the first step warms up
    out = {"step_s": statistics.median(r["rl/step_s"] for r in rows),
           "tokens_per_s": statistics.median(r["rl/tokens_per_s"] for r in rows) * ranks,  # per rank -> total
           "peak_rss_mib": peak[0] / 2**20}
    out.update({f"time_{k}_s": statistics.median(r[f"rl/time/{k}"] for r in rows) for k in SPLIT})
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--size", default="M", help="tiny model size (S, M, L, XL)")
    ap.add_argument("--model-dir", default=str(Path(tempfile.gettempdir()) / "mmr1-bench-dp"),
                    help="where the tiny model is built once and reused")
    ap.add_argument("--prompts", type=int, default=8, help="prompts per step (global batch; G = 8 each)")
    ap.add_argument("--length", type=int, default=32, help="completion length in tokens (fixed)")
    ap.add_argument("--steps", type=int, default=4, help="GRPO steps per run (the first is not timed)")
    ap.add_argument("--rounds", type=int, default=2, help="alternating rounds of (1 process, 2 ranks)")
    ap.add_argument("--out", default=str(HERE / "results" / "dp_cpu.json"))
    a = ap.parse_args()

    model_dir = Path(a.model_dir) / a.size
    if not (model_dir / "config.json").exists():
        from mmr1.models.tiny import build_tiny_model

        build_tiny_model(model_dir, size=a.size)
    args = [f"model.path={model_dir}", "data.train_size=256", "data.eval_size=8", f"rl.steps={a.steps}",
            f"rl.prompts_per_step={a.prompts}", "rollout.group_size=8", f"rollout.max_new_tokens={a.length}",
            f"rollout.min_new_tokens={a.length}", "rl.micro_batch_size=16", "algorithm.beta=0.04",
            "trainer.save_every=0", "logging.log_every=1", "logging.progress=false", "logging.tensorboard=false"]
    layouts = {"1 process x 2 threads": (1, 2), "2 ranks x 1 thread": (2, 1)}
    runs: dict[str, list[dict]] = {k: [] for k in layouts}
    with tempfile.TemporaryDirectory() as tmp:
        for r in range(a.rounds):
            for name, (ranks, threads) in layouts.items():
                res = run_layout(ranks, threads, args, Path(tmp) / f"{r}-{ranks}")
                runs[name].append(res)
                print(f"round {r + 1}: {name}: step {res['step_s']:.2f} s, peak RSS {res['peak_rss_mib']:.0f} MiB",
                      flush=True)
    summary = {name: {k: statistics.median(x[k] for x in rs) for k in rs[0]} for name, rs in runs.items()}
    one, two = summary["1 process x 2 threads"], summary["2 ranks x 1 thread"]
    print(f"\n| | {' | '.join(summary)} |\n|---|---|---|")
    print(f"| step time (median) | {one['step_s']:.2f} s | {two['step_s']:.2f} s |")
    print(f"| sampled tokens/s | {one['tokens_per_s']:.0f} | {two['tokens_per_s']:.0f} |")
    print(f"| peak RSS, all ranks | {one['peak_rss_mib']:.0f} MiB | {two['peak_rss_mib']:.0f} MiB |")
    for k in SPLIT:
        print(f"| time: {k} | {one[f'time_{k}_s']:.2f} s | {two[f'time_{k}_s']:.2f} s |")
    print(f"\n2 ranks / 1 process step time: {two['step_s'] / one['step_s']:.2f}")
    result = {"model_size": a.size, "prompts_per_step": a.prompts, "group_size": 8, "length": a.length,
              "rounds": a.rounds, "machine": platform.processor() or platform.machine(),
              "cpus": os.cpu_count(), "layouts": summary, "runs": runs,
              "two_ranks_over_one_step_time": two["step_s"] / one["step_s"]}
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    Path(a.out).write_text(json.dumps(result, indent=2))
    print(f"wrote {a.out}")


if __name__ == "__main__":
    main()
