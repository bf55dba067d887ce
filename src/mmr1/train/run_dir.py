"""The run directory: config, one log file, metrics as JSONL and TensorBoard events.

Layout (documented in the README):
    config.yaml        the full resolved config
    log.txt            everything logged during the run
    metrics.jsonl      one JSON object per logged step / evaluation
    tb/                TensorBoard event files
    model/             the tiny model built for the run (when model.path is empty)
    checkpoints/       step-NNNNNN/ resumable checkpoints (model, optimizer, RNG, data position)
    final/             the trained model, loadable with `model.path=RUN/final`
    eval/<name>/       predictions.jsonl and metrics.json of each evaluation

A run directory holds one run. Rerunning into it resumes only when the resolved config matches the saved
one on every key that changes the result (`claim`); otherwise it stops and lists the differing keys.
Metrics rows are keyed by (prefix, step): a resumed run replaces the rows of the steps it replays rather
than appending duplicates.
"""

from __future__ import annotations

import json
import logging
import math
import shutil
import time
from pathlib import Path

import yaml

from .. import dist
from ..config import Config, to_dict
from ..errors import ConfigError
from .checkpoint import fsync_dir, write_text_durably

log = logging.getLogger("mmr1")


# Keys that never change what a run computes: a resume may differ in them. The experiment runners' seed
# lists only say which seeds to run (each seed's stages have their own directories).
NEUTRAL_KEYS = ("logging.", "trainer.resume", "trainer.overwrite", "trainer.save_every", "trainer.keep_checkpoints",
                "othink.seeds", "vision_r1.seeds", "mmsearch.seeds", "retrv.seeds")
# Keys that decide the tiny model built into RUN/model (when model.path is empty).
TINY_MODEL_KEYS = ("model.path", "model.tiny_family", "model.tiny_size", "trainer.seed")
# What a run writes and trainer.overwrite=true removes (eval/ and the log are kept).
RUN_OUTPUTS = ("checkpoints", "final", "metrics.jsonl", "tb")


def flatten(d: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in d.items():
        if isinstance(v, dict) and v and all(isinstance(x, str) for x in v) and prefix.count(".") < 1:
            out.update(flatten(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def config_diff(saved: dict, cfg: Config) -> list[tuple[str, object, object]]:
    """(key, saved value, current value) for every key that changes the result and differs. A key the saved
    config lacks (written before it existed) counts as its default."""
    now, then, default = flatten(to_dict(cfg)), flatten(saved), flatten(to_dict(Config()))
    return [(k, then.get(k, default.get(k)), v) for k, v in now.items()
            if not k.startswith(NEUTRAL_KEYS) and then.get(k, default.get(k)) != v]


def claim(run_path: str | Path, cfg: Config) -> None:
    """Make `run_path` this run's directory and write RUN/config.yaml. A directory that already holds a run is
    resumed only with a config equal on every key that changes the result; otherwise stop with the differing
    keys and the two ways out. trainer.overwrite=true empties the old run's outputs first. Main rank only."""
    if not dist.is_main():
        return
    path = Path(run_path)
    path.mkdir(parents=True, exist_ok=True)
    file = path / "config.yaml"
    saved = None
    if file.exists():
        try:
            saved = yaml.safe_load(file.read_text())
        except yaml.YAMLError:
            saved = None
        if not isinstance(saved, dict):
            saved = {}
    tc = cfg.trainer
    if tc.overwrite:
        reset(path, saved, cfg)
    elif saved is not None:
        diffs = config_diff(saved, cfg)
        if diffs:
            shown = "; ".join(f"{k}: {a!r} there, {b!r} now" for k, a, b in diffs[:8])
            more = f" (and {len(diffs) - 8} more)" if len(diffs) > 8 else ""
            raise ConfigError(f"{path} holds a run with other settings ({shown}{more}), so it cannot be resumed "
                              "with these; start a new run elsewhere (trainer.resume=false with a new "
                              "logging.run_dir / --out) or replace this one (trainer.overwrite=true)")
        if not tc.resume and any((path / name).exists() for name in RUN_OUTPUTS):
            raise ConfigError(f"{path} holds a run and trainer.resume=false would start over on top of it; give "
                              "a new logging.run_dir / --out, or replace it with trainer.overwrite=true")
    tmp = path / ".config.yaml.tmp"
    write_text_durably(tmp, yaml.safe_dump(to_dict(cfg), sort_keys=False))
    tmp.replace(file)
    fsync_dir(path)


def reset(path: Path, saved: dict | None, cfg: Config) -> None:
    """trainer.overwrite=true: remove the old run's checkpoints, final model, metrics and TensorBoard events,
    and its built tiny model when the new config would build another."""
    removed = []
    for name in RUN_OUTPUTS:
        p = path / name
        if p.exists():
            shutil.rmtree(p) if p.is_dir() else p.unlink()
            removed.append(name)
    then, now = flatten(saved or {}), flatten(to_dict(cfg))
    if (path / "model").exists() and any(then.get(k) != now.get(k) for k in TINY_MODEL_KEYS):
        shutil.rmtree(path / "model")
        removed.append("model")
    if removed:
        log.warning("trainer.overwrite=true: removed %s from %s", ", ".join(removed), path)


class RunDir:
    def __init__(self, path: str | Path, tensorboard: bool = True, config: Config | None = None):
        """`config` given: claim the directory for that config first (see `claim`), before anything is built
        in it."""
        self.path = Path(path)
        if config is not None:
            claim(self.path, config)
        self.path.mkdir(parents=True, exist_ok=True)
        self._tb = None
        self._tensorboard = tensorboard and dist.is_main()
        self._rows: dict[int, list[tuple[str, ...]]] | None = None  # step -> metric keys of each row on disk
        self._setup_log()

    def _setup_log(self) -> None:
        name = "log.txt" if dist.world_size() == 1 else f"log.rank{dist.rank()}.txt"
        target = str((self.path / name).resolve())
        log.setLevel(logging.INFO)
        for h in list(log.handlers):
            if isinstance(h, logging.FileHandler):
                log.removeHandler(h)
                h.close()
        fh = logging.FileHandler(target)
        fh.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s"))
        log.addHandler(fh)

    def sub(self, *parts: str) -> Path:
        p = self.path.joinpath(*parts)
        p.mkdir(parents=True, exist_ok=True)
        return p

    def log_metrics(self, step: int, metrics: dict, prefix: str = "") -> None:
        """Append to metrics.jsonl and TensorBoard; non-finite values are kept as null in JSON."""
        if not dist.is_main():
            return
        row = {"step": step, "time": round(time.time(), 3)}
        for k, v in metrics.items():
            key = f"{prefix}{k}"
            if isinstance(v, float) and not math.isfinite(v):
                row[key] = None
            else:
                row[key] = v
        self._drop_replayed(step, prefix)
        with open(self.path / "metrics.jsonl", "a") as f:
            f.write(json.dumps(row) + "\n")
        self._rows.setdefault(step, []).append(tuple(k for k in row if k not in ("step", "time")))
        if self._tensorboard:
            if self._tb is None:
                from torch.utils.tensorboard import SummaryWriter

                self._tb = SummaryWriter(str(self.sub("tb")))
            for k, v in row.items():
                if k not in ("step", "time") and isinstance(v, (int, float)) and not isinstance(v, bool):
                    self._tb.add_scalar(k, v, step)
            self._tb.flush()

    def _drop_replayed(self, step: int, prefix: str) -> None:
        """A row for (prefix, step) is on disk already: this is a resumed run replaying steps after its
        checkpoint, so the old run's rows of that prefix from `step` on go (rewritten atomically)."""
        file = self.path / "metrics.jsonl"
        if self._rows is None:
            self._rows = {}
            if file.exists():
                for line in file.read_text().splitlines():
                    try:
                        r = json.loads(line)
                        self._rows.setdefault(int(r["step"]), []).append(tuple(k for k in r if k not in ("step", "time")))
                    except (ValueError, KeyError, TypeError):
                        continue

        def mine(keys) -> bool:
            return bool(keys) and all(k.startswith(prefix) for k in keys)

        if not any(mine(keys) for keys in self._rows.get(step, [])):
            return
        kept = []
        for line in file.read_text().splitlines():
            try:
                r = json.loads(line)
                drop = int(r["step"]) >= step and mine([k for k in r if k not in ("step", "time")])
            except (ValueError, KeyError, TypeError):
                drop = False
            if not drop:
                kept.append(line)
        tmp = file.with_suffix(".jsonl.tmp")
        write_text_durably(tmp, "".join(line + "\n" for line in kept))
        tmp.replace(file)
        fsync_dir(self.path)
        for s in list(self._rows):
            if s >= step:
                self._rows[s] = [keys for keys in self._rows[s] if not mine(keys)]
        log.info("metrics: replaced the rows of %s steps >= %d left by the interrupted run", prefix or "all", step)

    def close(self) -> None:
        if self._tb is not None:
            self._tb.close()
            self._tb = None
        for h in list(log.handlers):
            if isinstance(h, logging.FileHandler):
                log.removeHandler(h)
                h.close()
