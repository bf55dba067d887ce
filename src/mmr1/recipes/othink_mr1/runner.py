"""OThink-MR1 (METHODS §3): does GRPO-D's dynamic KL weight beat a constant one, and does RL carry
over to another task better than SFT does?

For every seed, start from one base model: an instruct checkpoint (``model.path``), or, on a CPU, a tiny
model briefly SFT'd on every task's data (``othink.base_sft_steps``), which stands in for one. From that
base, train each method on each task: SFT on the teacher's solutions, GRPO with a constant beta, and
GRPO-D, whose beta(s) falls from beta_mid to beta_min over the first w = 0.3 t steps and then rises to
beta_max. Evaluate every model on every task's held-out data: the diagonal is the same-task result, the
rest is cross-task generalisation (the paper's "reasoning -> understanding" and back).

Each stage writes ``OUT/seedS/TASK/METHOD/result.json`` when it ends, so a rerun of the same command
skips finished stages and resumes unfinished ones from their checkpoints. The whole experiment ends in
``OUT/results.json`` (every number), ``OUT/results.md`` (mean ± std over seeds) and ``OUT/curves.svg``
(beta, sampled reward and KL per step, GRPO vs GRPO-D).
"""

from __future__ import annotations

import json
import logging
import math
import statistics
import time
from pathlib import Path

from ...build import build_model, build_samples
from ...config import Config, OThinkTask, build_section
from ...errors import ConfigError
from ...eval.evaluate import evaluate
from ..common import check_experiment, derive_config, fingerprint, markdown_rows, mean_std, run_recipe, run_stage
from ...plots import write_line_charts
from ...train.grpo import fit
from ...train.sft import train_sft
from ...ui import print_table

log = logging.getLogger("mmr1")
METHODS = ("sft", "grpo", "grpo_d")
LABELS = {"base": "base", "sft": "SFT", "grpo": "GRPO", "grpo_d": "GRPO-D"}  # GRPO: constant beta


def parse_tasks(cfg: Config) -> dict[str, OThinkTask]:
    """The experiment's tasks, each checked like any config section."""
    oc = cfg.othink
    if not oc.tasks:
        raise ConfigError("othink.tasks is empty; give at least one task, e.g. the CPU recipe 'othink_mr1_cpu'")
    check_experiment(cfg, "othink", METHODS)
    tasks = {}
    for name, spec in oc.tasks.items():
        task = build_section(OThinkTask, spec, f"othink.tasks.{name}.")
        c = stage_config(cfg, 0, task)  # fail now, not after an hour, on a bad data key
        for split in ("train", "eval"):
            if not getattr(c.data, split):
                raise ConfigError(f"othink.tasks.{name}.data.{split} is empty: give a data path or world:NAME")
        tasks[name] = task
    return tasks


def stage_config(cfg: Config, seed: int, task: OThinkTask | None = None, world_seed_offset: int = 0,
                 **sections: dict) -> Config:
    """`cfg` for one stage: the seed, the task's data keys and `sections` merged in."""
    return derive_config(cfg, seed, task.data if task is not None else None, world_seed_offset, **sections)


def rl_sections(method: str, task: OThinkTask) -> dict:
    """GRPO: constant beta. GRPO-D: the paper's beta(s) schedule (§3.2)."""
    steps = {"steps": task.rl_steps} if task.rl_steps else {}
    if method == "grpo":
        return {"algorithm": {"beta": task.beta}, "rl": {"beta_schedule": {}, **steps}}
    return {"rl": {"beta_schedule": {"kind": "othink", "beta_min": task.beta_min, "beta_max": task.beta_max,
                                     "w_ratio": task.w_ratio}, **steps}}


class Experiment:
    def __init__(self, cfg: Config, out: str | Path):
        self.cfg, self.out = cfg, Path(out)
        self.tasks = parse_tasks(cfg)
        self.progress = cfg.logging.progress
        self.settings = fingerprint(cfg, "othink")
        self._tests: dict = {}

    # ------------------------------------------------------------------ stages

    def _evaluate(self, lm, seed: int, stage_dir: Path) -> dict:
        res = {}
        for name, task in self.tasks.items():
            c = stage_config(self.cfg, seed, task)
            if (seed, name) not in self._tests:
                self._tests[seed, name] = build_samples(c.data, "eval")[0]
            m = evaluate(lm, self._tests[seed, name], max_new_tokens=c.rollout.max_new_tokens,
                         batch_size=c.rollout.batch_size, checker=c.rewards.checker,
                         out_dir=stage_dir / "eval" / name, show_progress=self.progress)
            res[name] = {k: m[k] for k in ("accuracy", "format_rate", "mean_tokens", "n")}
        return res

    def _stage(self, stage_dir: Path, work) -> dict:
        """`work(run) -> (lm, extra, seed)`, then every task's evaluation, once (see run_stage)."""
        def full(run):
            lm, extra, seed = work(run)
            return {"evals": self._evaluate(lm, seed, stage_dir), **extra}
        return run_stage(stage_dir, full, self.cfg.logging.tensorboard, self.settings)

    def base(self, seed: int) -> tuple[str, dict]:
        """The base model's path and its evaluation."""
        cfg, oc = self.cfg, self.cfg.othink
        stage_dir = self.out / f"seed{seed}" / "base"

        def work(run):
            c = stage_config(cfg, seed)
            if not oc.base_sft_steps:
                return build_model(c, path=c.model.path), {"path": c.model.path}, seed
            c = stage_config(cfg, seed, trainer={"max_steps": oc.base_sft_steps})
            mix = []
            for task in self.tasks.values():  # other scenes than the tasks' own training data
                tc = stage_config(cfg, seed, task, world_seed_offset=10_000,
                                  data={"train_size": oc.base_sft_size, "train_limit": 0})
                mix += build_samples(tc.data, "train", with_solution=True)[0][:oc.base_sft_size]
            lm = build_model(c, run.path)
            res = train_sft(c, lm, mix, run, progress=self.progress)
            return lm, {"path": res.final_dir, "sft_steps": res.steps}, seed

        result = self._stage(stage_dir, work)
        return result["path"], result

    def train(self, seed: int, base_path: str, name: str, method: str) -> dict:
        task = self.tasks[name]
        stage_dir = self.out / f"seed{seed}" / name / method

        def work(run):
            if method == "sft":
                c = stage_config(self.cfg, seed, task)
                train, _ = build_samples(c.data, "train", with_solution=True)
                lm = build_model(c, path=base_path)
                res = train_sft(c, lm, train, run, progress=self.progress)
                return lm, {"steps": res.steps, "train_size": len(train)}, seed
            c = stage_config(self.cfg, seed, task, **rl_sections(method, task))
            train, _ = build_samples(c.data, "train")
            lm = build_model(c, path=base_path)
            res = fit(c, lm, train, run, progress=self.progress, ref_path=base_path)
            curves = {"beta": res.beta_history, "reward": res.reward_history, "kl": res.kl_history,
                      "accuracy": res.accuracy_history}
            return lm, {"steps": res.steps, "train_size": len(train), "curves": curves}, seed

        return self._stage(stage_dir, work)

    # ------------------------------------------------------------------ the whole experiment

    def run(self) -> dict:
        t0 = time.time()
        self.out.mkdir(parents=True, exist_ok=True)
        records, curves, seconds = [], {}, {}
        for seed in self.cfg.othink.seeds:
            ts = time.time()
            base_path, base = self.base(seed)
            records += [_record(seed, "base", "-", e, m) for e, m in base["evals"].items()]
            for name in self.tasks:
                for method in self.cfg.othink.methods:
                    r = self.train(seed, base_path, name, method)
                    records += [_record(seed, method, name, e, m) for e, m in r["evals"].items()]
                    if "curves" in r:
                        curves.setdefault((name, method), []).append(r["curves"])
            seconds[seed] = round(time.time() - ts, 1)
        table = results_table(records, list(self.tasks), ["base", *self.cfg.othink.methods])
        summary = {"records": records, "table": table, "seconds_per_seed": seconds,
                   "seconds": round(time.time() - t0, 1), "tasks": list(self.tasks),
                   "seeds": self.cfg.othink.seeds, "out": str(self.out)}
        (self.out / "results.json").write_text(json.dumps(summary, indent=1) + "\n")
        (self.out / "results.md").write_text(markdown(table, summary))
        if curves:
            write_line_charts(self.out / "curves.svg", curve_panels(curves))
        print_table(f"OThink-MR1: accuracy (train task→eval task), mean ± std over seeds {self.cfg.othink.seeds}; "
                    "GRPO: constant beta, GRPO-D: dynamic beta",
                    table["columns"], table["rows"])
        return summary


def _record(seed: int, method: str, train: str, eval_task: str, m: dict) -> dict:
    return {"seed": seed, "method": method, "train": train, "eval": eval_task,
            "accuracy": m["accuracy"], "format_rate": m["format_rate"]}


def results_table(records: list[dict], tasks: list[str], methods: list[str]) -> dict:
    """Rows = methods, columns = train task -> eval task, cells = mean ± std accuracy over seeds.
    The base model is untrained, so its cell in column T -> E is its accuracy on E."""
    pairs = [(t, e) for t in tasks for e in tasks]
    columns = ["method", *[f"{t}→{e}" for t, e in pairs], "same-task", "cross-task"]
    rows, cells = [], {}
    for method in methods:
        row, same, cross = [LABELS.get(method, method)], [], []
        for t, e in pairs:
            accs = [r["accuracy"] for r in records
                    if r["method"] == method and r["eval"] == e and (method == "base" or r["train"] == t)]
            if not accs:
                row.append("-")
                continue
            mu, sd = mean_std(accs)
            cells[f"{method}|{t}|{e}"] = {"mean": mu, "std": sd, "n": len(accs)}
            row.append(f"{mu:.3f} ± {sd:.3f}")
            (same if t == e else cross).append(mu)
        row += [f"{statistics.fmean(v):.3f}" if v else "-" for v in (same, cross)]
        rows.append(row)
    return {"columns": columns, "rows": rows, "cells": cells}


def markdown(table: dict, summary: dict) -> str:
    lines = [f"Accuracy on held-out data (train task→eval task), mean ± sample std over seeds {summary['seeds']} "
             f"({summary['seconds']:.0f} s in all). GRPO: constant beta; GRPO-D: dynamic beta; same-/cross-task: "
             "mean of the diagonal / off-diagonal cells.", ""]
    lines += markdown_rows(table)
    return "\n".join(lines) + "\n"


def curve_panels(curves: dict) -> list[tuple[str, dict]]:
    """Per training task: beta(s), sampled reward and KL, each the mean over seeds, GRPO vs GRPO-D."""
    panels = []
    for task in dict.fromkeys(t for t, _ in curves):
        for key, title in (("beta", "beta(s)"), ("reward", "sampled reward"), ("kl", "KL to reference")):
            series = {}
            for (t, method), runs in curves.items():
                if t == task:
                    series[LABELS[method]] = _mean_curve([r[key] for r in runs])
            panels.append((f"{title}: train on {task}", series))
    return panels


def _mean_curve(runs: list[list[float]]) -> list[float]:
    n = min(len(r) for r in runs)
    out = []
    for i in range(n):
        vals = [r[i] for r in runs if r[i] is not None and math.isfinite(r[i])]
        out.append(statistics.fmean(vals) if vals else math.nan)
    return out


def run_othink(recipe: str | Path, out: str | None = None, seeds: list[int] | None = None,
               overrides: list[str] | None = None) -> dict:
    return run_recipe(Experiment, "othink", recipe, out, seeds, overrides)
