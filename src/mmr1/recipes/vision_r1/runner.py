"""Vision-R1 (METHODS §2): cold start by modality bridging, then GRPO with Progressive Thinking Suppression
Training (PTST) and the hard formatting result reward (HFRRF), against the paper's baselines.

Per seed, from one base model (an instruct checkpoint, or on a CPU a tiny model SFT'd into one):

- **Zero**: GRPO from the base with DeepSeek-R1-Zero's format prompt, format and result rewards 1 : 1, at
  the first stage's length and group size for all the stages' steps (Vision-R1-Zero).
- **CI**: SFT of the base on the cold-start CoT data (Vision-R1-CI).
- **CI + PTST**: GRPO from CI with HFRRF (1 only when the whole output has the format and the answer is
  right), stage by stage: a short length with a large group first, so over-long thinking is cut off and
  scores 0, then longer lengths with smaller groups; each stage continues from the previous one.
- **CI + Long**: GRPO from CI with HFRRF at the longest length for the same number of steps, no PTST
  (Vision-R1-Long).

Every model is evaluated on data.eval at the longest length (with eval.* sampling); PTST stages are also
evaluated at their own length. Stages write their result.json when done, so a rerun resumes. The run ends in
OUT/results.json and OUT/results.md: accuracy and mean output length, mean ± std over seeds.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

from ...build import build_model, build_samples
from ...config import Config, PTSTStage, build_section
from ...data.coldstart import build_coldstart, make_teacher
from ...data.loaders import load_samples
from ...data.schema import assistant_turn
from ...errors import ConfigError
from ...eval.evaluate import evaluate
from ..common import check_experiment, derive_config, fingerprint, fmt_mean_std, markdown_rows, run_recipe, run_stage
from ...train.grpo import fit, mean_first_last
from ...train.sft import train_sft
from ...ui import print_table

METHODS = ("zero", "ci", "ci_ptst", "ci_long")
LABELS = {"base": "base (Zero prompt)", "zero": "Zero", "ci": "CI", "ci_ptst": "CI + PTST", "ci_long": "CI + Long"}
HFRRF = {"combine": "product", "format_weight": 1.0, "accuracy_weight": 1.0}
ZERO_REWARD = {"combine": "sum", "format_weight": 1.0, "accuracy_weight": 1.0}


def parse_stages(cfg: Config) -> list[PTSTStage]:
    vc = cfg.vision_r1
    if not vc.stages:
        raise ConfigError("vision_r1.stages is empty; give at least one {max_new_tokens, group_size, steps}")
    check_experiment(cfg, "vision_r1", METHODS)
    return [build_section(PTSTStage, st, f"vision_r1.stages[{i}].") for i, st in enumerate(vc.stages)]


class VisionR1Experiment:
    def __init__(self, cfg: Config, out: str | Path):
        self.cfg, self.out = cfg, Path(out)
        self.stages = parse_stages(cfg)
        self.longest = max(st.max_new_tokens for st in self.stages)
        self.total_steps = sum(st.steps for st in self.stages)
        self.progress = cfg.logging.progress
        self.settings = fingerprint(cfg, "vision_r1")
        self._tests: dict = {}

    def _eval(self, lm, seed: int, out_dir: Path, system_prompt: str | None, max_new_tokens: int) -> dict:
        c, e = self.cfg, self.cfg.eval
        if seed not in self._tests:
            self._tests[seed] = build_samples(derive_config(c, seed).data, "eval")[0]
        m = evaluate(lm, self._tests[seed], max_new_tokens=max_new_tokens, batch_size=c.rollout.batch_size,
                     checker=c.rewards.checker, system_prompt=system_prompt, out_dir=out_dir,
                     show_progress=self.progress, temperature=e.temperature, top_p=e.top_p,
                     retries_missing_answer=e.retries_missing_answer, seed=e.seed + seed)
        return {k: m[k] for k in ("accuracy", "format_rate", "mean_tokens", "truncation_rate", "n")}

    def _stage(self, stage_dir: Path, work) -> dict:
        return run_stage(stage_dir, work, self.cfg.logging.tensorboard, self.settings)

    # ------------------------------------------------------------------ the pieces

    def base(self, seed: int) -> dict:
        vc = self.cfg.vision_r1
        zero = vc.zero_system_prompt

        def work(run):
            if not vc.base_sft_steps:
                c = derive_config(self.cfg, seed)
                lm, path = build_model(c, path=c.model.path), c.model.path
            else:  # half answer directly, half think and tag under the Zero prompt: an instruct model in small
                c = derive_config(self.cfg, seed, world_seed_offset=10_000, trainer={"max_steps": vc.base_sft_steps},
                                  data={"train_size": vc.base_sft_size, "train_limit": 0})
                mix = build_samples(c.data, "train", with_solution=True)[0][:vc.base_sft_size]
                for i, s in enumerate(mix):
                    if i % 2:
                        s.messages[-1] = assistant_turn(f"The answer is {s.answer}.")
                    else:
                        s.messages.insert(0, {"role": "system", "content": zero})
                lm = build_model(c, run.path)
                path = train_sft(c, lm, mix, run, progress=self.progress).final_dir
            return {"path": path, "eval": self._eval(lm, seed, run.path / "eval", zero, self.longest)}

        return self._stage(self.out / f"seed{seed}" / "base", work)

    def coldstart(self, seed: int) -> tuple[str, dict]:
        c = derive_config(self.cfg, seed)
        samples = build_samples(c.data, "train")[0]
        if self.cfg.vision_r1.coldstart_size:
            samples = samples[:self.cfg.vision_r1.coldstart_size]
        path = self.out / f"seed{seed}" / "coldstart" / "cold.jsonl"
        stats = build_coldstart(samples, make_teacher(c.coldstart), path, checker=c.rewards.checker,
                                concurrency=c.coldstart.concurrency, progress=self.progress)
        if stats["failed"]:
            raise ConfigError(f"cold start: {stats['failed']} samples failed (teacher unreachable?); rerun to "
                              f"finish them: {stats['failed_ids'][:3]}")
        return str(path), stats

    def ci(self, seed: int, base_path: str, cold_path: str) -> dict:
        def work(run):
            c = derive_config(self.cfg, seed)
            data = load_samples(cold_path, format="sharegpt").samples
            lm = build_model(c, path=base_path)
            res = train_sft(c, lm, data, run, progress=self.progress)
            return {"path": res.final_dir, "sft_steps": res.steps, "train_size": len(data),
                    "eval": self._eval(lm, seed, run.path / "eval", None, self.longest)}

        return self._stage(self.out / f"seed{seed}" / "ci", work)

    def rl(self, seed: int, stage_dir: Path, init_path: str, st: PTSTStage, rewards: dict,
           system_prompt: str | None) -> dict:
        """One GRPO run from `init_path` (also its KL reference) at st's length and group size."""
        def work(run):
            c = derive_config(self.cfg, seed, rollout={"max_new_tokens": st.max_new_tokens,
                                                       "group_size": st.group_size},
                              rl={"steps": st.steps}, rewards=rewards, data={"system_prompt": system_prompt})
            train = build_samples(c.data, "train")[0]
            lm = build_model(c, path=init_path)
            res = fit(c, lm, train, run, progress=self.progress, ref_path=init_path)
            first, last = mean_first_last(res.reward_history)
            out = {"path": res.final_dir, "steps": res.steps, "reward_first": first, "reward_last": last,
                   "eval_stage": self._eval(lm, seed, run.path / "eval_stage", system_prompt, st.max_new_tokens)}
            out["eval"] = (out["eval_stage"] if st.max_new_tokens == self.longest
                           else self._eval(lm, seed, run.path / "eval", system_prompt, self.longest))
            return out

        return self._stage(stage_dir, work)

    # ------------------------------------------------------------------ the experiment

    def run(self) -> dict:
        t0 = time.time()
        vc, first, last = self.cfg.vision_r1, self.stages[0], self.stages[-1]
        results: dict[str, list[dict]] = {m: [] for m in ("base", *vc.methods)}
        ptst_stages: list[list[dict]] = []
        cold_stats = {}
        for seed in vc.seeds:
            seed_dir = self.out / f"seed{seed}"
            base = self.base(seed)
            results["base"].append(base["eval"])
            if "zero" in vc.methods:
                zero = PTSTStage(first.max_new_tokens, first.group_size, self.total_steps)
                results["zero"].append(self.rl(seed, seed_dir / "zero", base["path"], zero, ZERO_REWARD,
                                               vc.zero_system_prompt)["eval"])
            if not {"ci", "ci_ptst", "ci_long"} & set(vc.methods):
                continue
            cold_path, cold_stats[seed] = self.coldstart(seed)
            ci = self.ci(seed, base["path"], cold_path)
            if "ci" in vc.methods:
                results["ci"].append(ci["eval"])
            if "ci_ptst" in vc.methods:
                init, per_stage = ci["path"], []
                for i, st in enumerate(self.stages):
                    r = self.rl(seed, seed_dir / "ci_ptst" / f"stage{i + 1}", init, st, HFRRF, None)
                    init = r["path"]
                    per_stage.append({"stage": i + 1, **r["eval_stage"], "reward_first": r["reward_first"],
                                      "reward_last": r["reward_last"]})
                results["ci_ptst"].append(r["eval"])
                ptst_stages.append(per_stage)
            if "ci_long" in vc.methods:
                long = PTSTStage(last.max_new_tokens, last.group_size, self.total_steps)
                results["ci_long"].append(self.rl(seed, seed_dir / "ci_long", ci["path"], long, HFRRF,
                                                  None)["eval"])
        table = results_table(results)
        summary = {"table": table, "results": results, "ptst_stages": ptst_stages, "coldstart": cold_stats,
                   "stages": [vars(st) for st in self.stages], "seeds": vc.seeds,
                   "seconds": round(time.time() - t0, 1), "out": str(self.out)}
        self.out.mkdir(parents=True, exist_ok=True)
        (self.out / "results.json").write_text(json.dumps(summary, indent=1) + "\n")
        (self.out / "results.md").write_text(markdown(table, summary))
        print_table(f"Vision-R1 at {self.longest} tokens, mean ± std over seeds {vc.seeds}. Zero: RL from the base "
                    "under the R1-Zero prompt; CI: cold-start SFT; PTST: staged lengths; Long: the longest length "
                    "only", table["columns"], table["rows"])
        return summary


def results_table(results: dict[str, list[dict]]) -> dict:
    columns = ["model", "accuracy", "format rate", "mean output tokens", "truncated"]
    rows = []
    for method, evals in results.items():
        if evals:
            rows.append([LABELS[method], *(fmt_mean_std([e[k] for e in evals], d) for k, d in
                                           (("accuracy", 3), ("format_rate", 3), ("mean_tokens", 1),
                                            ("truncation_rate", 3)))])
    return {"columns": columns, "rows": rows}


def markdown(table: dict, summary: dict) -> str:
    stages = " → ".join(f"{s['max_new_tokens']}×{s['group_size']} ({s['steps']} steps)" for s in summary["stages"])
    lines = [f"Held-out accuracy, mean ± sample std over seeds {summary['seeds']}; PTST stages {stages}; "
             f"{summary['seconds']:.0f} s in all.", ""]
    lines += markdown_rows(table)
    if summary["ptst_stages"]:
        lines += ["", "PTST, per stage (each evaluated at its own length; seed-mean):", "",
                  "| stage | accuracy | mean output tokens | truncated | sampled reward first → last |",
                  "|---|---|---|---|---|"]
        for i in range(len(summary["stages"])):
            rows = [seed_rows[i] for seed_rows in summary["ptst_stages"]]
            mean = lambda k: sum(r[k] for r in rows) / len(rows)  # noqa: E731
            lines.append(f"| {i + 1} | {mean('accuracy'):.3f} | {mean('mean_tokens'):.1f} | "
                         f"{mean('truncation_rate'):.3f} | {mean('reward_first'):.3f} → {mean('reward_last'):.3f} |")
    return "\n".join(lines) + "\n"


def run_vision_r1(recipe: str | Path, out: str | None = None, seeds: list[int] | None = None,
                  overrides: list[str] | None = None) -> dict:
    return run_recipe(VisionR1Experiment, "vision_r1", recipe, out, seeds, overrides)
