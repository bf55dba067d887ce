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
"""

from __future__ import annotations

import json
import logging
import math
import time
from pathlib import Path

from .. import dist

log = logging.getLogger("mmr1")


class RunDir:
    def __init__(self, path: str | Path, tensorboard: bool = True):
        self.path = Path(path)
        self.path.mkdir(parents=True, exist_ok=True)
        self._tb = None
        self._tensorboard = tensorboard and dist.is_main()
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
        with open(self.path / "metrics.jsonl", "a") as f:
            f.write(json.dumps(row) + "\n")
        if self._tensorboard:
            if self._tb is None:
                from torch.utils.tensorboard import SummaryWriter

                self._tb = SummaryWriter(str(self.sub("tb")))
            for k, v in row.items():
                if k not in ("step", "time") and isinstance(v, (int, float)) and not isinstance(v, bool):
                    self._tb.add_scalar(k, v, step)
            self._tb.flush()

    def close(self) -> None:
        if self._tb is not None:
            self._tb.close()
            self._tb = None
        for h in list(log.handlers):
            if isinstance(h, logging.FileHandler):
                log.removeHandler(h)
                h.close()
