"""What `mmr1 view` reads from a run directory: pure, read-only functions shared by the server and the export.

A run is any directory mmr1 wrote. Inside it, a *part* is a directory with metrics.jsonl or rollouts/ (the
quickstart has the root (SFT) and rl/; an experiment has seed0/rl, seed0/rl_penalty, ...), an *eval set* is a
directory with predictions.jsonl, and a *table* is a summary.json / results.json. Everything is read fresh on
each call, so a run that is still training shows its new steps on refresh. A missing part is reported as
absent, a line that does not parse (a run killed mid-write) is skipped and counted, and nothing is written.
"""

from __future__ import annotations

import json
import math
import os
import re
from pathlib import Path

from ..errors import MMR1Error
from ..train.rollouts import TOOL_RATE_KEYS, tool_collapse

SKIP_DIRS = {"checkpoints", "final", "model", "tb", "images", "cache", "tool_cache", "index", "__pycache__"}
TABLE_FILES = ("summary.json", "results.json")
IMAGE_TYPES = {".png": "image/png", ".jpg": "image/jpeg", ".jpeg": "image/jpeg", ".gif": "image/gif",
               ".webp": "image/webp"}
MAX_DEPTH = 4
MAX_DIRS = 2000
_STEP = re.compile(r"^step-(\d+)\.jsonl$")


class NotARun(MMR1Error):
    pass


def read_jsonl(path: Path) -> tuple[list[dict], int]:
    """The JSON objects of a JSONL file and the count of lines skipped (blank lines are not counted)."""
    rows, skipped = [], 0
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return [], 0
    for line in text.splitlines():
        if not line.strip():
            continue
        try:
            row = json.loads(line, parse_constant=lambda c: None)
        except ValueError:
            skipped += 1
            continue
        if isinstance(row, dict):
            rows.append(row)
        else:
            skipped += 1
    return rows, skipped


def read_json(path: Path):
    try:
        return json.loads(path.read_text(errors="replace"), parse_constant=lambda c: None)
    except (OSError, ValueError):
        return None


def _walk(root: Path):
    """(relative path, directory) for root and its sub-directories up to MAX_DEPTH, skipping model files."""
    for n, (dirpath, dirnames, _) in enumerate(os.walk(root, followlinks=False)):
        if n >= MAX_DIRS:  # a path like / is not a run; do not crawl it
            return
        rel = Path(dirpath).relative_to(root)
        depth = len(rel.parts)
        dirnames[:] = sorted(d for d in dirnames if d not in SKIP_DIRS and d != "rollouts" and not d.startswith(".")
                             and depth < MAX_DEPTH)
        yield rel.as_posix() if rel.parts else "", Path(dirpath)


def _clean(x):
    """JSON-safe: non-finite floats become None (browsers' JSON.parse rejects NaN)."""
    if isinstance(x, float) and not math.isfinite(x):
        return None
    if isinstance(x, dict):
        return {k: _clean(v) for k, v in x.items()}
    if isinstance(x, list):
        return [_clean(v) for v in x]
    return x


class Run:
    """One run directory given to `mmr1 view`, read-only."""

    def __init__(self, path: str | Path, index: int = 0):
        p = Path(path)
        if not p.exists():
            raise NotARun(f"{path}: no such directory; give a run directory mmr1 wrote (e.g. runs/quickstart)")
        if not p.is_dir():
            raise NotARun(f"{path}: not a directory; give a run directory mmr1 wrote (e.g. runs/quickstart)")
        self.root = p.resolve()
        self.index = index
        self.name = p.name or str(p)
        self._scan()
        if not (self.parts or self.tables or self.evals):
            raise NotARun(f"{path}: not a run directory (no metrics.jsonl, rollouts/, predictions.jsonl, "
                          f"summary.json or results.json in it or its sub-directories); give the directory a "
                          f"training or experiment command wrote, e.g. runs/quickstart")

    def _scan(self) -> None:
        self.parts, self.tables, self.evals = [], [], []
        for rel, d in _walk(self.root):
            if (d / "metrics.jsonl").is_file() or (d / "rollouts").is_dir():
                self.parts.append(rel)
            self.tables += [f"{rel}/{t}".lstrip("/") for t in TABLE_FILES if (d / t).is_file()]
            if (d / "predictions.jsonl").is_file():
                self.evals.append(rel)

    def _dir(self, rel: str) -> Path:
        """A directory of this run named by a client: inside the run, or NotARun."""
        p = (self.root / rel).resolve()
        if p != self.root and self.root not in p.parents:
            raise NotARun(f"{rel}: outside the run")
        return p

    # ----------------------------------------------------------------------------------------- listing

    def describe(self) -> dict:
        self._scan()
        parts = []
        for rel in self.parts:
            d = self._dir(rel)
            parts.append({"part": rel, "label": rel or "(root)", "metrics": (d / "metrics.jsonl").is_file(),
                          "rollouts": (d / "rollouts").is_dir()})
        return {"index": self.index, "name": self.name, "path": str(self.root), "parts": parts,
                "tables": self.tables, "evals": self.evals}

    # ----------------------------------------------------------------------------------------- metrics

    def metrics(self, part: str) -> dict:
        rows, skipped = read_jsonl(self._dir(part) / "metrics.jsonl")
        return {"rows": _clean(rows), "skipped": skipped, "tool": tool_rate(rows)}

    # ---------------------------------------------------------------------------------------- rollouts

    def steps(self, part: str) -> list[int]:
        d = self._dir(part) / "rollouts"
        try:
            names = os.listdir(d)
        except OSError:
            return []
        return sorted(int(m.group(1)) for m in map(_STEP.match, names) if m)

    def rollouts(self, part: str, step: int) -> dict:
        rows, skipped = read_jsonl(self._dir(part) / "rollouts" / f"step-{int(step):06d}.jsonl")
        base = f"{part}/rollouts/".lstrip("/")
        return {"groups": _clean(rows), "skipped": skipped, "base": base}

    # ------------------------------------------------------------------------------------ tables, evals

    def table(self, rel: str) -> dict:
        if rel not in self.tables:
            return {"path": rel, "data": None}
        return {"path": rel, "data": _clean(read_json(self._dir(rel)))}

    def eval_set(self, rel: str) -> dict:
        if rel not in self.evals:
            return {"name": rel, "rows": [], "skipped": 0, "metrics": None}
        d = self._dir(rel)
        rows, skipped = read_jsonl(d / "predictions.jsonl")
        return {"name": rel, "rows": [eval_row(r) for r in rows], "skipped": skipped,
                "metrics": _clean(read_json(d / "metrics.json"))}

    # ------------------------------------------------------------------------------------------- files

    def file(self, rel: str) -> Path | None:
        """An image file inside this run, or None: nothing outside the run (links resolved) and no other types."""
        try:
            p = (self.root / rel).resolve()
        except (OSError, RuntimeError, ValueError):
            return None
        if self.root not in p.parents or p.suffix.lower() not in IMAGE_TYPES or not p.is_file():
            return None
        return p


def eval_row(r: dict) -> dict:
    """One prediction in a common shape: the quickstart/eval layout (answer = gold list, extracted) and the
    MMSearch-R1 layout (answers = golds, answer = extracted, familiar, turns) are both read."""
    if "extracted" in r:
        gold, extracted = r.get("answer"), r.get("extracted")
    else:
        gold, extracted = r.get("answers", r.get("gold")), r.get("answer")
    category = r.get("category")
    if category is None and r.get("familiar") is not None:
        category = "familiar" if r["familiar"] else "unfamiliar"
    prediction = r.get("prediction")
    if prediction is None and isinstance(r.get("turns"), list):
        prediction = "\n".join(str(t) for t in r["turns"])
    correct = r.get("correct")
    return _clean({"id": str(r.get("id", "")), "category": category, "gold": gold, "extracted": extracted,
                   "correct": bool(correct) if correct is not None else None, "prediction": prediction or "",
                   "formatted": r.get("formatted", r.get("format")), "finish": r.get("finish_reason", r.get("finish")),
                   "searched": r.get("searched")})


def tool_rate(rows: list[dict]) -> dict | None:
    """The per-step tool-call rate and reward of an RL part, with the tool-collapse warning (or None)."""
    steps, rate, reward = [], [], []
    for r in rows:
        t = next((r[k] for k in (f"rl/{n}" for n in TOOL_RATE_KEYS) if isinstance(r.get(k), (int, float))), None)
        rw = r.get("rl/reward/mean")
        if t is not None and isinstance(rw, (int, float)):
            steps.append(r.get("step"))
            rate.append(float(t))
            reward.append(float(rw))
    if not steps:
        return None
    return {"steps": steps, "tool_rate": rate, "reward": reward, "warning": tool_collapse(rate, reward)}


def open_runs(paths: list[str]) -> list[Run]:
    return [Run(p, i) for i, p in enumerate(paths)]
