"""The main job on the built-in default: tiny model + synthetic world, offline, on a CPU.

Build the tiny model, generate the default world, evaluate the untrained model,
run cold-start SFT on the teacher's solutions, evaluate, run GRPO from the SFT
checkpoint, evaluate again, print the before/after table and write RUN/summary.json.
"""

from __future__ import annotations

import json
import time
from collections import defaultdict
from pathlib import Path

from ...build import build_model, build_samples
from ...config import load_config
from ...data.worlds import majority_baseline
from ...eval.evaluate import evaluate
from ...rewards.checkers import score_completion
from ...train.grpo import fit, mean_first_last
from ...train.run_dir import RunDir
from ...train.sft import train_sft
from ...ui import print_table

RECIPE = Path(__file__).parent / "quickstart.yaml"


def run_quickstart(out: str = "runs/quickstart", seed: int = 0, overrides: list[str] | None = None) -> dict:
    t0 = time.time()
    cfg = load_config(RECIPE, [f"logging.run_dir={out}", f"trainer.seed={seed}", f"data.world_seed={seed}",
                               *(overrides or [])])
    run = RunDir(cfg.logging.run_dir, tensorboard=cfg.logging.tensorboard)
    lm = build_model(cfg, run.path)
    train, _ = build_samples(cfg.data, "train", with_solution=True)
    test, _ = build_samples(cfg.data, "eval")

    def ev(name, lm):
        return evaluate(lm, test, max_new_tokens=cfg.rollout.max_new_tokens, batch_size=cfg.rollout.batch_size,
                        checker=cfg.rewards.checker, out_dir=run.sub("eval", name), show_progress=cfg.logging.progress)

    base = ev("base", lm)
    sft_res = train_sft(cfg, lm, train, run, progress=cfg.logging.progress)
    sft = ev("sft", lm)
    policy = build_model(cfg, path=sft_res.final_dir)  # RL starts from the saved SFT checkpoint, as a user's would
    rl_run = RunDir(run.path / "rl", tensorboard=cfg.logging.tensorboard)
    rl_res = fit(cfg, policy, train, rl_run, progress=cfg.logging.progress,
                 ref_path=sft_res.final_dir)
    rl_run.close()
    rl = ev("rl", policy)
    first, last = mean_first_last(rl_res.reward_history)
    teacher = [score_completion(s.target(), s, kind=cfg.rewards.checker)["correct"] for s in train]
    by_answer = {"teacher": accuracy_by_answer(train, teacher),
                 **{name: accuracy_by_answer(test, predictions(run.sub("eval", name))) for name in ("sft", "rl")}}
    summary = {
        "seed": seed,
        "base": {k: base[k] for k in ("accuracy", "format_rate", "mean_tokens")},
        "sft": {k: sft[k] for k in ("accuracy", "format_rate", "mean_tokens")},
        "rl": {k: rl[k] for k in ("accuracy", "format_rate", "mean_tokens")},
        "rl_sampled_reward": {"first": first, "last": last},
        "teacher": {"miss": cfg.data.teacher_miss, "accuracy": sum(teacher) / len(teacher)},
        "accuracy_by_answer": by_answer,
        "majority_baseline": majority_baseline(test, reference=train),
        "eval_size": len(test),
        "train_size": len(train),
        "sft_steps": sft_res.steps,
        "rl_steps": rl_res.steps,
        "rl_seconds": round(rl_res.seconds, 1),
        "seconds": round(time.time() - t0, 1),
    }
    for name, m in (("base", base), ("sft", sft), ("rl", rl)):
        run.log_metrics({"base": 0, "sft": sft_res.steps, "rl": sft_res.steps + rl_res.steps}[name],
                        {k: m[k] for k in ("accuracy", "format_rate", "mean_tokens")}, prefix=f"eval/{name}/")
    (run.path / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    print_table(f"quickstart ({cfg.data.train}, tiny {cfg.model.tiny_family} {cfg.model.tiny_size}, seed {seed})",
                ["model", "accuracy", "format rate", "mean tokens"],
                [["majority answer", summary["majority_baseline"], "-", "-"],
                 ["base (untrained)", base["accuracy"], base["format_rate"], f"{base['mean_tokens']:.1f}"],
                 ["SFT", sft["accuracy"], sft["format_rate"], f"{sft['mean_tokens']:.1f}"],
                 ["SFT + GRPO", rl["accuracy"], rl["format_rate"], f"{rl['mean_tokens']:.1f}"]])
    answers = sorted(by_answer["teacher"], key=lambda a: (not a.isdigit(), int(a) if a.isdigit() else 0, a))
    if len(answers) <= 12:  # the default world's counts 0-5; free-text answers would make a useless table
        print_table("accuracy by gold answer", ["model", *answers],
                    [[label, *(by_answer[key].get(a, "-") for a in answers)]
                     for label, key in (("teacher (train data)", "teacher"), ("SFT", "sft"), ("SFT + GRPO", "rl"))])
    run.close()
    return summary


def predictions(eval_dir: Path) -> list[bool]:
    with open(eval_dir / "predictions.jsonl") as f:
        return [json.loads(line)["correct"] for line in f]


def accuracy_by_answer(samples, correct: list[bool]) -> dict[str, float]:
    """Accuracy per gold answer: shows which counts a model gets right, e.g. whether RL fixed the
    teacher's undercounts or just moved mass onto one answer."""
    hits = defaultdict(list)
    for s, ok in zip(samples, correct, strict=True):
        hits[s.answer].append(ok)
    return {a: round(sum(v) / len(v), 3) for a, v in sorted(hits.items())}
