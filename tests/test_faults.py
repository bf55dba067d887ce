"""Fault injection: every failure of issue 23, tried the way a hostile or careless user (or a full disk, or
kill -9) would, each with a check that failed on the code before the fix."""

from __future__ import annotations

import errno
import json
import os
import resource
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from mmr1.errors import ConfigError, DataError
from mmr1.train.checkpoint import CheckpointError, Checkpointer


# ------------------------------------------------------------------------------------------ checkpoints


def _trainer(seed: int = 0):
    torch.manual_seed(seed)
    model = torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.Linear(16, 4))
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 1.0 / (1 + s))
    return model, opt, sched


def _train_steps(model, opt, sched, n: int) -> None:
    for _ in range(n):
        opt.zero_grad()
        model(torch.randn(4, 8)).pow(2).mean().backward()
        opt.step()
        sched.step()


class Planted:
    """A pickle that runs code when unpickled (what a planted trainer.pt holds)."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_checkpoint_round_trip_has_no_pickle(tmp_path):
    import random

    import numpy as np

    model, opt, sched = _trainer()
    _train_steps(model, opt, sched, 3)
    ck = Checkpointer(tmp_path / "ck")
    path = ck.save(3, model, opt, sched, {"micro": 3, "history": [0.5, 1.5]})
    assert sorted(p.name for p in path.iterdir()) == ["model.safetensors", "state.json", "trainer.json",
                                                       "trainer.safetensors"]
    draws = (torch.randn(3), random.random(), np.random.rand())  # what the RNGs give next after the save
    m2, o2, s2 = _trainer(seed=1)
    torch.manual_seed(99), random.seed(99), np.random.seed(99)
    state = Checkpointer.load(ck.latest(), m2, o2, s2)
    assert state["step"] == 3 and state["micro"] == 3 and state["history"] == [0.5, 1.5]
    assert torch.equal(torch.randn(3), draws[0]) and random.random() == draws[1] and np.random.rand() == draws[2]
    for a, b in zip(model.parameters(), m2.parameters()):
        assert torch.equal(a, b)
    sa, sb = opt.state_dict(), o2.state_dict()
    for k in sa["state"]:
        for name in ("exp_avg", "exp_avg_sq", "step"):
            assert torch.equal(sa["state"][k][name], sb["state"][k][name])
    assert s2.state_dict()["last_epoch"] == sched.state_dict()["last_epoch"] == 3


def test_planted_trainer_pickle_never_runs(tmp_path):
    """Issue 23, failure 1: a trainer.pt planted in a run directory ran its code on resume."""
    model, opt, sched = _trainer()
    ck = Checkpointer(tmp_path / "ck")
    good = ck.save(2, model, opt, sched, {})
    marker = tmp_path / "pwned"
    # an attacker's checkpoint in the old layout (trainer.pt), newer than the good one
    evil = tmp_path / "ck" / "step-000004"
    evil.mkdir()
    (evil / "model.safetensors").write_bytes((good / "model.safetensors").read_bytes())
    torch.save({"optimizer": Planted(marker), "scheduler": None, "rng": None}, evil / "trainer.pt")
    (evil / "state.json").write_text(json.dumps({"step": 4}))
    # and one dropped into the good checkpoint too: the new layout never reads trainer.pt
    torch.save(Planted(marker), good / "trainer.pt")
    assert ck.latest() == good
    Checkpointer.load(good, *_trainer())
    assert not marker.exists()


def test_corrupt_latest_checkpoint_falls_back_to_the_previous(tmp_path, caplog):
    """Issue 23, failure 6: a corrupt latest checkpoint gave a traceback instead of the previous one."""
    model, opt, sched = _trainer()
    ck = Checkpointer(tmp_path / "ck", keep=3)
    ck.save(1, model, opt, sched, {})
    _train_steps(model, opt, sched, 1)
    second = ck.save(2, model, opt, sched, {})
    third = ck.save(3, model, opt, sched, {})
    data = (third / "model.safetensors").read_bytes()
    (third / "model.safetensors").write_bytes(data[: len(data) // 2])  # a partial write
    (second / "trainer.json").write_text("{not json")  # garbage
    with caplog.at_level("WARNING", logger="mmr1"):
        assert ck.latest().name == "step-000001"
    assert "step-000003 is damaged (model.safetensors is" in caplog.text
    assert "step-000002 is damaged (trainer.json is 9 bytes" in caplog.text
    Checkpointer.load(ck.latest(), *_trainer())
    # nothing readable at all: one line, no silent restart from scratch
    (tmp_path / "ck" / "step-000001" / "trainer.safetensors").unlink()
    with pytest.raises(CheckpointError, match="no readable checkpoint in .*step-000003: model.safetensors is"):
        ck.latest()


def test_checkpoint_files_and_directories_are_fsynced_around_the_rename(tmp_path, monkeypatch):
    """Issue 23, failure 6: files were renamed into place without fsync."""
    import mmr1.train.checkpoint as ckmod

    events = []
    real_fsync, real_rename = os.fsync, Path.rename

    def fsync(fd):
        events.append(("fsync", os.readlink(f"/proc/self/fd/{fd}")))
        return real_fsync(fd)

    def rename(self, target):
        events.append(("rename", str(self), str(target)))
        return real_rename(self, target)

    monkeypatch.setattr(ckmod.os, "fsync", fsync)
    monkeypatch.setattr(Path, "rename", rename)
    model, opt, sched = _trainer()
    root = (tmp_path / "ck").resolve()
    Checkpointer(root).save(5, model, opt, sched, {})
    i = next(k for k, e in enumerate(events) if e[0] == "rename")
    before = {Path(e[1]).name for e in events[:i]}
    assert {"model.safetensors", "trainer.safetensors", "trainer.json", "state.json", ".tmp-step-000005"} <= before
    assert ("fsync", str(root)) in events[i + 1:]


def _fill_disk_on_second_save(tmp_path, fail):
    model, opt, sched = _trainer()
    ck = Checkpointer(tmp_path / "ck")
    first = ck.save(1, model, opt, sched, {})
    before = {p.name: p.read_bytes() for p in first.iterdir()}
    _train_steps(model, opt, sched, 1)
    with pytest.raises(CheckpointError) as err:
        fail(lambda: ck.save(2, model, opt, sched, {}))
    assert [p.name for p in (tmp_path / "ck").iterdir()] == ["step-000001"]  # no partial directory left
    assert {p.name: p.read_bytes() for p in first.iterdir()} == before
    Checkpointer.load(ck.latest(), *_trainer())
    return str(err.value)


def test_full_disk_on_checkpoint_save_keeps_the_previous_one(tmp_path):
    """A real write failure from the OS: a file-size limit (RLIMIT_FSIZE) below the checkpoint's size."""
    def fail(save):
        soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
        old = signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # the write fails with EFBIG instead of a kill
        resource.setrlimit(resource.RLIMIT_FSIZE, (512, hard))
        try:
            save()
        finally:
            resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))
            signal.signal(signal.SIGXFSZ, old)

    msg = _fill_disk_on_second_save(tmp_path, fail)
    assert "cannot write checkpoint" in msg and "step-000001 is intact" in msg


def test_no_space_left_on_device_is_one_clear_line(tmp_path, monkeypatch):
    import mmr1.train.checkpoint as ckmod

    real = ckmod.save_file

    def fail(save):
        def no_space(tensors, path, *a, **k):
            if "trainer" in path:
                Path(path).write_bytes(b"partial")
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), path)
            return real(tensors, path, *a, **k)

        monkeypatch.setattr(ckmod, "save_file", no_space)
        save()

    msg = _fill_disk_on_second_save(tmp_path, fail)
    assert "No space left on device" in msg and "step-000001 is intact" in msg and "\n" not in msg
