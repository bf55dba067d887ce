"""Resumable checkpoints: model weights, optimizer, scheduler, RNG and data position.

Nothing in a checkpoint can run code when it is loaded: the model and every tensor of the trainer
state are safetensors files, and the rest of the trainer state (optimizer hyper-parameters, scheduler
counters, RNG positions) is JSON, rebuilt by `unpack` into plain dicts, lists, tuples and numbers only.
No pickle is ever read (checkpoints of older mmr1 versions, `trainer.pt`, load with
`torch.load(weights_only=True)`, which refuses anything but tensors and plain containers).

A checkpoint is written into a temporary directory, every file and the directory fsynced, then renamed
into place and the parent fsynced, so a crash or power loss while saving never leaves a half-written
checkpoint under a final name. `state.json`, written last, lists every file's size: on resume a latest
checkpoint that is missing a file, truncated or unparsable is reported in one line and the previous good
one is used. A failed write (a full disk) removes the partial directory and stops with one line; the
previous checkpoints are untouched.
"""

from __future__ import annotations

import json
import logging
import os
import random
import shutil
import signal
from pathlib import Path

import numpy as np
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from .. import dist
from ..errors import MMR1Error

log = logging.getLogger("mmr1")

MODEL_FILE, TENSORS_FILE, TRAINER_FILE, STATE_FILE = ("model.safetensors", "trainer.safetensors", "trainer.json",
                                                       "state.json")
LEGACY_TRAINER_FILE = "trainer.pt"


class CheckpointError(MMR1Error):
    """A checkpoint cannot be written, or no checkpoint of a run can be read."""


def rng_state() -> dict:
    """Every RNG's position as plain numbers and tensors (no numpy arrays, so it packs without pickle)."""
    version, internal, gauss = random.getstate()
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    state = {"python": [version, list(internal), gauss],
             "numpy": [kind, torch.from_numpy(keys.astype(np.int64)), int(pos), int(has_gauss), float(cached)],
             "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    py, npy = state["python"], state["numpy"]
    random.setstate((py[0], tuple(py[1]), py[2]))
    keys = npy[1].numpy() if isinstance(npy[1], torch.Tensor) else npy[1]
    np.random.set_state((npy[0], np.asarray(keys, dtype=np.uint32), *npy[2:]))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


# ------------------------------------------------------------------------------ code-free packing


def pack(obj) -> tuple[object, dict[str, torch.Tensor]]:
    """A nested structure of dicts, lists, tuples, numbers, strings and tensors as (JSON tree, tensors)."""
    tensors: dict[str, torch.Tensor] = {}

    def enc(x):
        if isinstance(x, torch.Tensor):
            name = f"t{len(tensors)}"
            tensors[name] = x.detach().cpu().contiguous()
            return {"__tensor__": name}
        if x is None or isinstance(x, (bool, int, float, str)):
            return x
        if isinstance(x, tuple):
            return {"__tuple__": [enc(v) for v in x]}
        if isinstance(x, list):
            return [enc(v) for v in x]
        if isinstance(x, dict):
            if all(isinstance(k, str) and not k.startswith("__") for k in x):
                return {k: enc(v) for k, v in x.items()}
            return {"__dict__": [[enc(k), enc(v)] for k, v in x.items()]}
        raise TypeError(f"cannot checkpoint a {type(x).__name__} (only tensors, numbers, strings, lists, "
                        "tuples and dicts)")

    return enc(obj), tensors


def unpack(tree, tensors: dict[str, torch.Tensor]):
    """The inverse of `pack`: builds only dicts, lists, tuples, numbers, strings and the given tensors."""
    def dec(x):
        if isinstance(x, list):
            return [dec(v) for v in x]
        if isinstance(x, dict):
            if set(x) == {"__tensor__"}:
                if x["__tensor__"] not in tensors:
                    raise ValueError(f"tensor {x['__tensor__']!r} is missing from {TENSORS_FILE}")
                return tensors[x["__tensor__"]]
            if set(x) == {"__tuple__"}:
                return tuple(dec(v) for v in x["__tuple__"])
            if set(x) == {"__dict__"}:
                return {_hashable(dec(k)): dec(v) for k, v in x["__dict__"]}
            return {k: dec(v) for k, v in x.items()}
        return x

    return dec(tree)


def _hashable(k):
    return tuple(_hashable(v) for v in k) if isinstance(k, (list, tuple)) else k


# ------------------------------------------------------------------------------ durable files


def fsync_file(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def fsync_dir(path: Path) -> None:
    """Make a directory's entries (a rename, a new file) durable; a no-op where directories cannot be opened."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:  # pragma: no cover - Windows
        return
    try:
        os.fsync(fd)
    except OSError:  # pragma: no cover - some filesystems refuse fsync on directories
        pass
    finally:
        os.close(fd)


def write_text_durably(path: Path, text: str) -> None:
    """Write, flush and fsync `path` (the caller renames or fsyncs the directory)."""
    with open(path, "w") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())


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
        """Finished checkpoints (those with a state.json), oldest first; not checked for damage."""
        if not self.root.exists():
            return []
        return sorted(p for p in self.root.glob("step-*") if p.is_dir() and (p / STATE_FILE).exists())

    def latest(self) -> Path | None:
        """The newest checkpoint that reads back whole. A damaged newer one is reported in one line and skipped;
        when checkpoints exist but none reads, stop rather than silently start over."""
        found = self.list()
        problems = []
        for p in reversed(found):
            why = verify(p)
            if why is None:
                if problems:
                    log.warning("resuming from the previous good checkpoint %s", p.name)
                return p
            problems.append(f"{p}: {why}")
            log.warning("checkpoint %s is damaged (%s); skipping it", p, why)
        if problems:
            raise CheckpointError(f"no readable checkpoint in {self.root} ({problems[0]}); move that directory "
                                  "away to start over, or set trainer.overwrite=true")
        return None

    def save(self, step: int, model, optimizer, scheduler, state: dict) -> Path | None:
        """Every rank calls this (a sharded model is gathered); the main rank writes."""
        weights = dist.model_state(model)
        optim = dist.optimizer_state(model, optimizer)
        if not dist.is_main():
            dist.barrier()
            return None
        final = self.root / f"step-{step:06d}"
        tmp = self.root / f".tmp-step-{step:06d}"
        try:
            self.root.mkdir(parents=True, exist_ok=True)
            for stale in self.root.glob(".tmp-step-*"):  # left by a crash mid-save
                shutil.rmtree(stale, ignore_errors=True)
            tmp.mkdir()
            save_file(_untie({k: v.contiguous() for k, v in weights.items()}), str(tmp / MODEL_FILE))
            tree, tensors = pack({"optimizer": optim, "optimizer_keys": "names",
                                  "scheduler": scheduler.state_dict() if scheduler is not None else None,
                                  "rng": rng_state()})
            save_file(_untie(tensors), str(tmp / TENSORS_FILE))
            write_text_durably(tmp / TRAINER_FILE, json.dumps(tree))
            for name in (MODEL_FILE, TENSORS_FILE):
                fsync_file(tmp / name)
            sizes = {name: (tmp / name).stat().st_size for name in (MODEL_FILE, TENSORS_FILE, TRAINER_FILE)}
            write_text_durably(tmp / STATE_FILE, json.dumps({"step": step, **state, "files": sizes}, indent=2))
            fsync_dir(tmp)
            old = None
            if final.exists():  # the same step saved again: keep the old one until the new one is in place
                old = self.root / f".old-step-{step:06d}"
                shutil.rmtree(old, ignore_errors=True)
                final.rename(old)
            tmp.rename(final)
            fsync_dir(self.root)
        except Exception as e:
            shutil.rmtree(tmp, ignore_errors=True)
            kept = [p.name for p in self.list()]
            raise CheckpointError(
                f"cannot write checkpoint {final}: {type(e).__name__}: {e}; "
                + (f"the previous checkpoint {kept[-1]} is intact" if kept else "no earlier checkpoint exists")
                + " (free disk space, or point logging.run_dir at another disk, then rerun to resume)") from e
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
        for stale in self.list()[:-self.keep]:
            shutil.rmtree(stale, ignore_errors=True)
        fsync_dir(self.root)
        dist.barrier()
        return final

    @staticmethod
    def load(path: Path, model, optimizer, scheduler) -> dict:
        """Resume on any world size: weights and optimizer state are stored whole, keyed by name. Everything is
        read (and would fail) before anything is applied."""
        weights = load_file(str(path / MODEL_FILE))
        blob = read_trainer_state(path)
        state = json.loads((path / STATE_FILE).read_text())
        missing, unexpected = dist.load_model_state(model, weights)
        if unexpected or [m for m in missing if m not in _tied_names(model)]:
            raise RuntimeError(f"{path}: checkpoint does not match the model "
                               f"(missing {missing[:3]}, unexpected {unexpected[:3]})")
        if blob.get("optimizer_keys") == "names":
            dist.load_optimizer_state(model, optimizer, blob["optimizer"])
        else:  # checkpoints written before the state was keyed by name
            optimizer.load_state_dict(blob["optimizer"])
        if scheduler is not None and blob["scheduler"] is not None:
            scheduler.load_state_dict(blob["scheduler"])
        set_rng_state(blob["rng"])
        return state


def read_trainer_state(path: Path) -> dict:
    """Optimizer, scheduler and RNG state of a checkpoint, rebuilt without running any code from it."""
    if (path / TRAINER_FILE).exists():
        tree = json.loads((path / TRAINER_FILE).read_text())
        blob = unpack(tree, load_file(str(path / TENSORS_FILE)))
    else:  # written by an older mmr1: a pickle, read with the tensors-and-containers-only unpickler
        with torch.serialization.safe_globals(_LEGACY_NUMPY):
            blob = torch.load(path / LEGACY_TRAINER_FILE, weights_only=True)
    if not isinstance(blob, dict) or not {"optimizer", "scheduler", "rng"} <= set(blob):
        raise ValueError("the trainer state lacks optimizer, scheduler or rng")
    return blob


def _legacy_numpy() -> list:
    """The numpy pieces an old trainer.pt's RNG state pickles (an array of uint32): data, never callables
    beyond numpy's own array reconstruction, which torch's safe unpickler allows when listed."""
    out = [np.ndarray, np.dtype]
    core = getattr(np, "_core", None) or np.core
    out.append(core.multiarray._reconstruct)
    dtypes = getattr(np, "dtypes", None)
    if dtypes is not None and hasattr(dtypes, "UInt32DType"):
        out.append(dtypes.UInt32DType)
    return out


_LEGACY_NUMPY = _legacy_numpy()


def verify(path: Path) -> str | None:
    """Why the checkpoint at `path` cannot be resumed from (missing file, wrong size, unparsable), or None.
    Cheap: file sizes and headers, not the tensor data."""
    try:
        state = json.loads((path / STATE_FILE).read_text())
        if not isinstance(state, dict) or not isinstance(state.get("step"), int):
            return f"{STATE_FILE} has no step"
        for name, size in (state.get("files") or {}).items():
            f = path / name
            if not f.exists():
                return f"{name} is missing"
            if f.stat().st_size != size:
                return f"{name} is {f.stat().st_size} bytes, {size} were written"
        with safe_open(str(path / MODEL_FILE), "pt") as f:
            f.keys()
        if (path / TRAINER_FILE).exists():
            json.loads((path / TRAINER_FILE).read_text())
            with safe_open(str(path / TENSORS_FILE), "pt") as f:
                f.keys()
        else:
            read_trainer_state(path)  # the legacy pickle: only the safe unpickler may read it
    except Exception as e:  # any damage at all: the caller falls back to the previous checkpoint
        msg = str(e).strip().splitlines()[0][:200] if str(e).strip() else ""
        return f"{type(e).__name__}: {msg}" if msg else type(e).__name__
    return None


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
