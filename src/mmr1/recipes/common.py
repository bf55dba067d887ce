"""What the multi-stage experiment runners (OThink-MR1, Vision-R1, MMSearch-R1, Retrv-R1) share: one config per
stage derived from the recipe, stages that run once and are skipped by a rerun, and mean ± std over seeds."""

from __future__ import annotations

import hashlib
import json
import statistics
import time
from pathlib import Path
from typing import Callable

from ..config import Config, load_config, to_dict
from ..errors import ConfigError
from ..train.run_dir import RunDir


def derive_config(cfg: Config, seed: int, task_data: dict | None = None, world_seed_offset: int = 0,
                  **sections: dict) -> Config:
    """`cfg` with the seed set (model init, data order, sampling and the world generator), a task's data keys
    merged into the data section, then each of `sections` merged into its section; checked like any config."""
    d = to_dict(cfg)
    d["data"].update(task_data or {})
    d["trainer"]["seed"] = seed
    d["data"]["world_seed"] = seed + world_seed_offset
    for name, values in sections.items():
        d[name].update(values)
    try:
        return load_config(base=d)
    except ConfigError as e:
        raise ConfigError(f"in a stage's settings: {e}") from None


def check_experiment(cfg: Config, section: str, allowed: tuple[str, ...]) -> None:
    """The checks every runner's section shares: methods, seeds, and where the base model comes from."""
    sec = getattr(cfg, section)
    unknown = [m for m in sec.methods if m not in allowed]
    if unknown:
        raise ConfigError(f"{section}.methods: unknown {unknown}; choose from {list(allowed)}")
    if not sec.seeds or not all(isinstance(s, int) and not isinstance(s, bool) and s >= 0 for s in sec.seeds):
        raise ConfigError(f"{section}.seeds: need a non-empty list of integers >= 0; got {sec.seeds!r}")
    if not cfg.model.path and not sec.base_sft_steps:
        raise ConfigError(f"model.path is empty and {section}.base_sft_steps is 0: give the base checkpoint in "
                          f"model.path, or set {section}.base_sft_steps > 0 to SFT a tiny base model first")


def run_recipe(experiment: Callable, section: str, recipe: str | Path, out: str | None = None,
               seeds: list[int] | None = None, overrides: list[str] | None = None) -> dict:
    """Load `recipe` with `overrides`, then `out` as the run directory and `seeds` as `section.seeds`, and run
    `experiment(cfg, run_dir)`: the one entry point shared by `run_othink`, `run_vision_r1`, ..."""
    extra = ([f"logging.run_dir={out}"] if out else []) + ([f"{section}.seeds={seeds}"] if seeds else [])
    cfg = load_config(recipe, [*(overrides or []), *extra])
    return experiment(cfg, cfg.logging.run_dir).run()


# Sections that only one experiment runner reads: another runner's section never decides a stage's result, so
# it stays out of the fingerprint (and a section added to the config tree later does not void finished runs).
RUNNER_SECTIONS = ("othink", "vision_r1", "mmsearch", "retrv")


def fingerprint(cfg: Config, section: str) -> str:
    """A hash of every setting but logging, the seed list and other runners' sections: a finished stage is only
    reused by the same experiment (more seeds may be added later)."""
    d = to_dict(cfg)
    d.pop("logging")
    for other in RUNNER_SECTIONS:
        if other != section:
            d.pop(other, None)
    d[section] = {k: v for k, v in d[section].items() if k != "seeds"}
    return hashlib.sha1(json.dumps(d, sort_keys=True, default=str).encode()).hexdigest()[:16]


def run_stage(stage_dir: Path, work: Callable[[RunDir], dict], tensorboard: bool = True,
              settings: str | None = None) -> dict:
    """`work(run) -> result` once: the result lands in STAGE/result.json, and a rerun with the same `settings`
    (a `fingerprint`) finds it and skips the stage; other settings are refused rather than mixed in. A stage
    stopped before its result restarts, resuming its training from its own checkpoints."""
    done = Path(stage_dir) / "result.json"
    if done.exists():
        result = json.loads(done.read_text())
        if settings is not None and result.get("settings") != settings:
            raise ConfigError(f"{stage_dir} was finished with other settings; give another --out, or delete that "
                              "directory to redo it with these")
        return result
    t = time.time()
    run = RunDir(stage_dir, tensorboard=tensorboard)
    try:
        result = {**work(run), "seconds": round(time.time() - t, 1), "settings": settings}
    finally:
        run.close()
    done.write_text(json.dumps(result, indent=1) + "\n")
    return result


def mean_std(values: list[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (0 for a single seed)."""
    return statistics.fmean(values), (statistics.stdev(values) if len(values) > 1 else 0.0)


def fmt_mean_std(values: list[float], digits: int = 3) -> str:
    mu, sd = mean_std(values)
    return f"{mu:.{digits}f} ± {sd:.{digits}f}"


def markdown_rows(table: dict) -> list[str]:
    """A {"columns", "rows"} table as Markdown lines: header, rule, one line a row."""
    cols = table["columns"]
    return ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols),
            *("| " + " | ".join(str(c) for c in row) + " |" for row in table["rows"])]
