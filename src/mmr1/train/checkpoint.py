"""Resumable checkpoints: model weights (safetensors), optimizer, scheduler, RNG and data position.

A checkpoint is written to a temporary directory and renamed into place, so a crash
while saving never leaves a half-written checkpoint that resume would pick up.
"""

from __future__ import annotations

import json
import random
import shutil
import signal
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file, save_file

from .. import dist


def rng_state() -> dict:
    state = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


class StopOnSignal:
    """Turns the first Ctrl-C / SIGTERM into a flag so the loop can checkpoint and stop cleanly."""

    def __init__(self):
        self.hit = False

    def __enter__(self):
        self._old = {s: signal.signal(s, self._handle) for s in (signal.SIGINT, signal.SIGTERM)}
        return self

    def _handle(self, signum, frame):
        if self.hit:
            raise KeyboardInterrupt
        self.hit = True

    def __exit__(self, *exc):
        for s, h in self._old.items():
            signal.signal(s, h)


class Checkpointer:
    def __init__(self, root: str | Path, keep: int = 2):
        self.root = Path(root)
        self.keep = keep

    def list(self) -> list[Path]:
        if not self.root.exists():
            return []
        return sorted(p for p in self.root.glob("step-*") if p.is_dir() and (p / "state.json").exists())

    def latest(self) -> Path | None:
        found = self.list()
        return found[-1] if found else None

    def save(self, step: int, model, optimizer, scheduler, state: dict) -> Path | None:
        """Every rank calls this (a sharded model is gathered); the main rank writes."""
        weights = dist.model_state(model)
        optim = dist.optimizer_state(model, optimizer)
        if not dist.is_main():
            dist.barrier()
            return None
        self.root.mkdir(parents=True, exist_ok=True)
        final = self.root / f"step-{step:06d}"
        tmp = self.root / f".tmp-step-{step:06d}"
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir()
        save_file(_untie({k: v.contiguous() for k, v in weights.items()}), str(tmp / "model.safetensors"))
        torch.save({"optimizer": optim, "optimizer_keys": "names",
                    "scheduler": scheduler.state_dict() if scheduler is not None else None,
                    "rng": rng_state()}, tmp / "trainer.pt")
        (tmp / "state.json").write_text(json.dumps({"step": step, **state}, indent=2))
        shutil.rmtree(final, ignore_errors=True)
        tmp.rename(final)
        for old in self.list()[:-self.keep]:
            shutil.rmtree(old, ignore_errors=True)
        dist.barrier()
        return final

    @staticmethod
    def load(path: Path, model, optimizer, scheduler) -> dict:
        """Resume on any world size: weights and optimizer state are stored whole, keyed by name."""
        weights = load_file(str(path / "model.safetensors"))
        missing, unexpected = dist.load_model_state(model, weights)
        if unexpected or [m for m in missing if m not in _tied_names(model)]:
            raise RuntimeError(f"{path}: checkpoint does not match the model "
                               f"(missing {missing[:3]}, unexpected {unexpected[:3]})")
        blob = torch.load(path / "trainer.pt", weights_only=False)
        if blob.get("optimizer_keys") == "names":
            dist.load_optimizer_state(model, optimizer, blob["optimizer"])
        else:  # checkpoints written before the state was keyed by name
            optimizer.load_state_dict(blob["optimizer"])
        if scheduler is not None and blob["scheduler"] is not None:
            scheduler.load_state_dict(blob["scheduler"])
        set_rng_state(blob["rng"])
        return json.loads((path / "state.json").read_text())


def _untie(weights: dict) -> dict:
    """safetensors refuses shared storage; copy tensors that alias another."""
    seen, out = set(), {}
    for k, v in weights.items():
        ptr = (v.data_ptr(), v.shape)
        out[k] = v.clone() if ptr in seen else v
        seen.add(ptr)
    return out


def _tied_names(model) -> set[str]:
    return set(getattr(model, "_tied_weights_keys", None) or [])
