"""The main job on the built-in default: tiny model + synthetic world, offline, on a CPU.

Build the tiny model, generate the default world, evaluate the untrained model,
run cold-start SFT on the teacher's solutions, evaluate again, print the table
and write RUN/summary.json.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

from .build import build_model, build_samples
from .config import load_config
from .data.worlds import majority_baseline
from .eval.evaluate import evaluate
from .train.run_dir import RunDir
from .train.sft import train_sft
from .ui import print_table

RECIPE = Path(__file__).parent / "recipes" / "quickstart.yaml"


def run_quickstart(out: str = "runs/quickstart", seed: int = 0, overrides: list[str] | None = None) -> dict:
    t0 = time.time()
    cfg = load_config(RECIPE, [f"logging.run_dir={out}", f"trainer.seed={seed}", f"data.world_seed={seed}",
                               *(overrides or [])])
    run = RunDir(cfg.logging.run_dir, tensorboard=cfg.logging.tensorboard)
    lm = build_model(cfg, run.path)
    train, _ = build_samples(cfg.data, "train", with_solution=True)
    test, _ = build_samples(cfg.data, "eval")

    def ev(name):
        return evaluate(lm, test, max_new_tokens=cfg.rollout.max_new_tokens, batch_size=cfg.rollout.batch_size,
                        checker=cfg.rewards.checker, out_dir=run.sub("eval", name), show_progress=cfg.logging.progress)

    base = ev("base")
    sft_res = train_sft(cfg, lm, train, run, progress=cfg.logging.progress)
    sft = ev("sft")
    summary = {
        "seed": seed,
        "base": {k: base[k] for k in ("accuracy", "format_rate", "mean_tokens")},
        "sft": {k: sft[k] for k in ("accuracy", "format_rate", "mean_tokens")},
        "majority_baseline": majority_baseline(test, reference=train),
        "eval_size": len(test),
        "train_size": len(train),
        "sft_steps": sft_res.steps,
        "seconds": round(time.time() - t0, 1),
    }
    for name, m in (("base", base), ("sft", sft)):
        run.log_metrics(sft_res.steps if name == "sft" else 0,
                        {k: m[k] for k in ("accuracy", "format_rate", "mean_tokens")}, prefix=f"eval/{name}/")
    (run.path / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    print_table(f"quickstart ({cfg.data.train}, tiny {cfg.model.tiny_family} {cfg.model.tiny_size}, seed {seed})",
                ["model", "accuracy", "format rate", "mean tokens"],
                [["majority answer", summary["majority_baseline"], "-", "-"],
                 ["base (untrained)", base["accuracy"], base["format_rate"], f"{base['mean_tokens']:.1f}"],
                 ["SFT", sft["accuracy"], sft["format_rate"], f"{sft['mean_tokens']:.1f}"]])
    run.close()
    return summary
