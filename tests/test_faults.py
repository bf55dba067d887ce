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


# ------------------------------------------------------------------------------------------ run directories


def test_rerun_with_other_settings_is_refused_with_the_keys_listed(tmp_path):
    """Issue 23, failure 3: a rerun with other data or LR silently resumed and relabelled the old run."""
    from mmr1.config import load_config
    from mmr1.train.run_dir import RunDir

    run = tmp_path / "run"
    first = load_config("src/mmr1/recipes/quickstart/quickstart.yaml", [f"logging.run_dir={run}"])
    RunDir(run, tensorboard=False, config=first).close()
    (run / "checkpoints" / "step-000010").mkdir(parents=True)
    saved = (run / "config.yaml").read_text()
    other = load_config("src/mmr1/recipes/quickstart/quickstart.yaml",
                        [f"logging.run_dir={run}", "trainer.lr=0.5", "data.train=other.jsonl", "logging.log_every=3"])
    with pytest.raises(ConfigError) as err:
        RunDir(run, tensorboard=False, config=other)
    msg = str(err.value)
    assert "trainer.lr: 0.002 there, 0.5 now" in msg and "data.train: 'world:counting' there, 'other.jsonl' now" in msg
    assert "log_every" not in msg  # logging never changes the result
    assert "trainer.resume=false with a new logging.run_dir" in msg and "trainer.overwrite=true" in msg
    assert (run / "config.yaml").read_text() == saved and (run / "checkpoints" / "step-000010").exists()
    # same settings (logging aside): accepted; resume=false on top of the run: refused
    RunDir(run, tensorboard=False, config=load_config("src/mmr1/recipes/quickstart/quickstart.yaml",
                                                      [f"logging.run_dir={run}", "logging.log_every=3"])).close()
    with pytest.raises(ConfigError, match="trainer.resume=false would start over"):
        RunDir(run, config=load_config("src/mmr1/recipes/quickstart/quickstart.yaml",
                                       [f"logging.run_dir={run}", "trainer.resume=false"]))
    # overwrite: the old run's outputs go, the new config is saved
    (run / "metrics.jsonl").write_text('{"step": 1, "sft/loss": 1.0}\n')
    (run / "model").mkdir()
    RunDir(run, tensorboard=False, config=load_config(
        "src/mmr1/recipes/quickstart/quickstart.yaml",
        [f"logging.run_dir={run}", "trainer.lr=0.5", "trainer.overwrite=true", "model.tiny_size=L"])).close()
    assert not (run / "checkpoints").exists() and not (run / "metrics.jsonl").exists()
    assert not (run / "model").exists()  # it was built for size S
    assert "lr: 0.5" in (run / "config.yaml").read_text()


def test_resumed_run_never_duplicates_a_metrics_step(tmp_path):
    """Issue 23, failure 3: after a resume metrics.jsonl held duplicate rows for the replayed steps."""
    from mmr1.train.run_dir import RunDir

    run = RunDir(tmp_path, tensorboard=False)
    for step in range(1, 6):  # the first run logged 5 steps, its last checkpoint was at step 3
        run.log_metrics(step, {"loss": 10.0 - step}, prefix="sft/")
        run.log_metrics(step, {"acc": 0.1}, prefix="eval/")
    run.log_metrics(0, {"accuracy": 0.3}, prefix="eval/base/")
    run.close()
    resumed = RunDir(tmp_path, tensorboard=False)
    for step in range(4, 8):
        resumed.log_metrics(step, {"loss": 100.0 + step}, prefix="sft/")
    rows = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    sft = [(r["step"], r["sft/loss"]) for r in rows if "sft/loss" in r]
    assert sft == [(1, 9.0), (2, 8.0), (3, 7.0), (4, 104.0), (5, 105.0), (6, 106.0), (7, 107.0)]
    assert [r["step"] for r in rows if "eval/acc" in r] == [1, 2, 3, 4, 5]  # other prefixes untouched
    assert [r["step"] for r in rows if "eval/base/accuracy" in r] == [0]


# ------------------------------------------------------------------------------------------ images and records


def bomb_png(side: int = 20000) -> bytes:
    """A real decompression bomb: a side x side 1-bit PNG of zeros, a few dozen KB on disk."""
    import struct
    import zlib

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    row = b"\0" * (1 + (side + 7) // 8)
    comp = zlib.compressobj(9)
    idat = b"".join(comp.compress(row) for _ in range(side)) + comp.flush()
    ihdr = struct.pack(">IIBBBBB", side, side, 1, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")


def _image_records(tmp_path, with_answers=True) -> Path:
    from PIL import Image

    Image.new("RGB", (56, 56), (200, 30, 30)).save(tmp_path / "ok.png")
    (tmp_path / "bomb.png").write_bytes(bomb_png())
    Image.new("L", (3000, 2000)).save(tmp_path / "big.png")
    msgs = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "How many?"}]}]
    rows = [{"id": "a", "messages": msgs, "answers": ["1"], "images": ["ok.png"]},
            {"id": "b", "messages": msgs, "answers": ["2"], "images": ["bomb.png"]},
            {"id": "c", "messages": msgs, "answers": ["3"], "images": ["big.png"]},
            {"id": "d", "messages": msgs, "answers": [] if not with_answers else ["4"], "images": ["ok.png"]},
            {"id": "e", "messages": msgs, "answers": [" "] if not with_answers else ["5"], "images": ["ok.png"]}]
    path = tmp_path / "data.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_decompression_bombs_and_huge_images_are_bad_records(tmp_path):
    """Issue 23, failure 4: a 20000x20000 PNG raised an uncaught DecompressionBombError in data check, sft and
    eval, even with data.on_error=skip; images above a configurable bound are refused too."""
    from mmr1.build import build_samples
    from mmr1.config import load_config
    from mmr1.data.check import check_dataset
    from mmr1.data.schema import load_image, set_max_image_pixels

    path = _image_records(tmp_path)
    report = check_dataset(path)
    lines = report.lines()
    assert any(":2 field 'images[0]': refused as a decompression bomb: Image size (400000000 pixels)" in x
               for x in lines), lines
    assert report.n_ok == 4 and not report.ok  # the 6-megapixel image is under the default bound
    with pytest.raises(DataError, match="bomb.png|decompression bomb"):
        load_image((tmp_path / "bomb.png").read_bytes(), source="x.jsonl:7", field="images[0]")
    # a lower bound, set as a config key, makes the 3000x2000 image a bad record too: skipped and counted
    cfg = load_config(None, [f"data.eval={path}", "data.on_error=skip", "data.max_image_pixels=1000000"])
    try:
        samples, errors = build_samples(cfg.data, "eval")
        enc_errors = []
        for s in samples:
            try:
                s.load_images()
            except DataError as e:
                enc_errors.append(str(e))
        assert [s.id for s in samples] == ["a", "b", "c", "d", "e"] and errors == []
        assert len(enc_errors) == 2 and "over the bound of 1,000,000" in enc_errors[1]
    finally:
        set_max_image_pixels(50_000_000)


def test_sft_and_eval_skip_and_count_a_bomb(tmp_path, lms):
    from mmr1.config import load_config
    from mmr1.data.loaders import load_samples
    from mmr1.eval.evaluate import evaluate
    from mmr1.train.sft import encode_all

    path = _image_records(tmp_path)
    samples = load_samples(path).samples[:3]
    for s in samples:
        s.messages.append({"role": "assistant", "content": [{"type": "text", "text": "<answer>1</answer>"}]})
    lm = lms("qwen2_5_vl")
    cfg = load_config(None, ["data.on_error=skip"])
    encoded, bad = encode_all(samples, lm, cfg)
    assert len(encoded) == 2 and bad == 1
    with pytest.raises(DataError, match="bomb"):
        encode_all(samples, lm, load_config(None, []))
    m = evaluate(lm, [s for s in load_samples(path).samples[:2]], max_new_tokens=2, on_error="skip",
                 out_dir=tmp_path / "ev", show_progress=False)
    assert m["n"] == 1 and m["skipped_records"] == 1


def test_records_without_a_reference_answer_fail_the_check(tmp_path):
    """Issue 23, failure 6: records without any reference answer passed data check and were scored wrong."""
    from mmr1.build import build_samples
    from mmr1.config import load_config
    from mmr1.data.check import check_dataset

    path = _image_records(tmp_path, with_answers=False)
    lines = check_dataset(path).lines()
    assert sum("field 'answer': no reference answer" in x for x in lines) == 2
    assert any(":4 field 'answer'" in x for x in lines) and any(":5 field 'answer'" in x for x in lines)
    with pytest.raises(DataError, match=r"data.jsonl:1 field 'answer'|:4 field 'answer': no reference answer"):
        build_samples(load_config(None, [f"data.eval={path}", "data.max_image_pixels=1000000000"]).data, "eval")


def test_non_finite_config_numbers_are_refused_with_the_key():
    """Issue 23, failure 6: trainer.lr=nan or inf passed validation."""
    from mmr1.config import load_config

    for override, key in (("trainer.lr=nan", "trainer.lr"), ("rl.lr=inf", "rl.lr"),
                          ("algorithm.beta=-.inf", "algorithm.beta"),
                          ("rewards.custom={'m:f': .nan}", "rewards.custom.m:f")):
        with pytest.raises(ConfigError, match=rf"^{key}: .* is not a finite number"):
            load_config(None, [override])


# ------------------------------------------------------------------------------------------ tools


class Exits:
    name = "text_search"

    def __call__(self, query, *, images):
        sys.exit(3)


class OwnInterrupt:
    name = "text_search"

    def __call__(self, query, *, images):
        raise KeyboardInterrupt("a tool's own")


class Floods:
    """Two million words of result text."""

    name = "text_search"

    def __call__(self, query, *, images):
        from mmr1.tools import ToolResult

        return ToolResult("word " * 2_000_000)


class Sleeps:
    name = "text_search"
    timeout_s = 0.2

    def __call__(self, query, *, images):
        import time

        time.sleep(1.0)


TEXT_SEARCH = "<reason>need facts</reason> <text_search>red square history</text_search>"
ANSWER = "<reason>done</reason> <answer>red square</answer>"


def _agent_prompts():
    return [([{"role": "user", "content": [{"type": "text", "text": "Who built it?"}]}], [])]


@pytest.mark.parametrize("tool,error", [(Exits(), "raised SystemExit: 3"),
                                        (OwnInterrupt(), "raised KeyboardInterrupt: a tool's own"),
                                        (Sleeps(), "timed out after 0.2 s")])
def test_a_tool_that_exits_or_hangs_is_an_error_observation(lms, tool, error):
    """Issue 23, failure 5: the runner caught only Exception, so a tool calling sys.exit ended the run."""
    from mmr1.rollout.agent import AgentConfig, AgentLoop

    loop = AgentLoop(lms("qwen2_5_vl"), [tool], AgentConfig(max_turn_tokens=30, max_total_tokens=1000))
    try:
        (t,) = loop.run(_agent_prompts(), n=1, generator=torch.Generator().manual_seed(0),
                        script={1: TEXT_SEARCH, 2: ANSWER})[0]
    finally:
        loop.close()
    assert t.tool_calls[0].status == "error" and t.tool_calls[0].error == error
    assert t.tool_calls[0].observation == f"[text_search error: {error}]"
    assert t.finish_reason == "answer" and len(t.turns) == 2
    assert loop.tool_stats["text_search"].failures == 1


def test_oversized_tool_output_is_bounded_marked_and_counted(lms):
    """Issue 23, failure 5: a 2-million-word observation was tokenised whole, then silently ended the rollout as
    "length" with status ok and was not counted."""
    from mmr1.rollout.agent import AgentConfig, AgentLoop
    from mmr1.train.agent_grpo import trajectory_metrics

    lm = lms("qwen2_5_vl")
    cfg = AgentConfig(max_turn_tokens=30, max_total_tokens=1000, max_observation_chars=5000,
                      max_observation_tokens=200)
    loop = AgentLoop(lm, [Floods()], cfg)
    calls = []
    real = lm.tokenizer.encode
    lm.tokenizer.encode = lambda text, *a, **k: calls.append(len(text)) or real(text, *a, **k)
    try:
        (t,) = loop.run(_agent_prompts(), n=1, generator=torch.Generator().manual_seed(0),
                        script={1: TEXT_SEARCH, 2: ANSWER})[0]
    finally:
        del lm.tokenizer.encode
        loop.close()
    call = t.tool_calls[0]
    assert max(calls) <= 5000  # never tokenised whole
    assert call.status == "ok" and call.truncated and t.finish_reason == "answer"
    assert "[truncated: " in call.observation and "of 10,000,000 characters shown]" in call.observation
    tok = lm.tokenizer
    shown = call.observation.split("<information>")[1].split("</information>")[0]
    assert len(tok.encode(shown.split(" [truncated: ")[0])) <= 200  # the token bound
    details = [type("D", (), {"reward": 0.0, "correct": False, "format": True})()]
    assert trajectory_metrics([t], [type("S", (), {"meta": {}})()], details)["tool/truncated"] == 1
    # an observation that cannot fit the remaining budget at all is counted too
    tight = AgentLoop(lm, [Floods()], AgentConfig(max_turn_tokens=30, max_total_tokens=120,
                                                   max_observation_tokens=200))
    try:
        (t,) = tight.run(_agent_prompts(), n=1, generator=torch.Generator().manual_seed(0),
                         script={1: TEXT_SEARCH, 2: ANSWER})[0]
    finally:
        tight.close()
    assert t.finish_reason == "length" and t.tool_calls[0].truncated and t.tool_calls[0].span is None


# ------------------------------------------------------------------------------------------ serve


KEY = "test-key-123"


def _png(side: int, colour=(200, 30, 30)) -> bytes:
    import io

    from PIL import Image

    buf = io.BytesIO()
    Image.new("RGB", (side, side), colour).save(buf, format="PNG")
    return buf.getvalue()


def _data_url(raw: bytes) -> str:
    import base64

    return "data:image/png;base64," + base64.b64encode(raw).decode()


@pytest.fixture(scope="module")
def hardened(lms, tmp_path_factory):
    """A real uvicorn server on 127.0.0.1 with an API key, an allowed image directory and small limits."""
    import threading

    from mmr1.serve import ChatServer, ServeLimits, make_http_server

    root = tmp_path_factory.mktemp("serve")
    allowed, secret = root / "allowed", root / "secret"
    allowed.mkdir(), secret.mkdir()
    (allowed / "ok.png").write_bytes(_png(56))
    (secret / "private.png").write_bytes(_png(56))
    (allowed / "link.png").symlink_to(secret / "private.png")
    limits = ServeLimits(max_body_bytes=512 << 10, max_images=2, max_image_pixels=100_000, max_prompt_tokens=256,
                         max_tokens_limit=64, request_timeout_s=120, allow_local_dirs=(allowed,))
    chat = ChatServer(lms("qwen2_5_vl"), "tiny", default_max_tokens=4, limits=limits)
    httpd = make_http_server(chat, "127.0.0.1", 0, api_key=KEY)
    th = threading.Thread(target=httpd.serve_forever, daemon=True)
    th.start()
    import httpx

    base = f"http://127.0.0.1:{httpd.server_address[1]}"
    for _ in range(200):  # until uvicorn accepts
        try:
            httpx.get(f"{base}/health", timeout=1)
            break
        except httpx.TransportError:
            import time

            time.sleep(0.05)
    yield base, root, chat
    httpd.shutdown()
    httpd.server_close()


def _post(base, body, key=KEY, raw: bytes | None = None, timeout=120):
    import httpx

    headers = {"Content-Type": "application/json"}
    if key:
        headers["Authorization"] = f"Bearer {key}"
    data = raw if raw is not None else json.dumps(body).encode()
    r = httpx.post(f"{base}/v1/chat/completions", content=data, headers=headers, timeout=timeout)
    return r.status_code, r.json()


def _user(*parts, text="How many red objects?"):
    return {"messages": [{"role": "user", "content": [*parts, {"type": "text", "text": text}]}], "max_tokens": 4,
            "temperature": 0}


def _img(url):
    return {"type": "image_url", "image_url": {"url": url}}


def test_serve_api_key(hardened):
    import httpx

    base, _, _ = hardened
    assert _post(base, _user(), key=None)[0] == 401
    code, r = _post(base, _user(), key="wrong")
    assert code == 401 and r["error"]["type"] == "authentication_error"
    assert httpx.get(f"{base}/v1/models", timeout=10).status_code == 401
    assert httpx.get(f"{base}/health", timeout=10).json()["status"] == "ok"  # health needs no key
    assert _post(base, _user())[0] == 200


def test_serve_reads_only_allowed_local_files_and_leaks_no_existence(hardened):
    """Issue 23, failure 2: any readable local image was served by path or file:// URL, and the errors said
    whether a file existed."""
    base, root, _ = hardened
    refused = []
    for url in (str(root / "secret" / "private.png"), f"file://{root / 'secret' / 'private.png'}",
                str(root / "secret" / "missing.png"), "/etc/passwd", "/nonexistent/x.png",
                str(root / "allowed" / "link.png"), str(root / "allowed" / ".." / "secret" / "private.png")):
        code, r = _post(base, _user(_img(url)))
        assert code == 400, (url, r)
        refused.append(r["error"]["message"])
    assert len(set(refused)) == 1 and "--allow-local-dir" in refused[0]  # one message: nothing to learn
    assert _post(base, _user(_img(str(root / "allowed" / "ok.png"))))[0] == 200
    assert _post(base, _user(_img(f"file://{root / 'allowed' / 'ok.png'}")))[0] == 200


def test_serve_limits_answer_400_or_413_never_a_crash(hardened):
    """Issue 23, failure 2: an unbounded prompt killed the server for memory, a bomb gave a 500."""
    base, _, chat = hardened
    cases = [
        (_user(text="word " * 400_000), 413, "over the 524,288 byte limit"),  # a 2 MB prompt
        (_user(text="word " * 30_000), 400, "characters, more than 256 tokens"),  # refused before tokenising
        (_user(text="word " * 300), 400, "tokens; the limit is 256"),
        (_user(*[_img(_data_url(_png(28)))] * 3), 400, "3 images in one request; the limit is 2"),
        (_user(_img(_data_url(_png(400)))), 400, "over the bound of 100,000"),
        (_user(_img(_data_url(bomb_png(6000)))), 400, "decompression bomb|over the bound"),
        (_user(_img("data:image/png;base64,AAAA")), 400, "not a readable image"),
        ({**_user(), "max_tokens": 10_000}, 400, r"'max_tokens' must be in \[1, 64\]"),
        ({**_user(), "n": 1000, "temperature": 1.0}, 400, "'n' must be in"),
        ({**_user(), "temperature": float("nan")}, 400, "temperature"),
        ({"messages": [{"role": "user", "content": [{"type": "text", "text": 5}]}]}, 400, "must be a string"),
        ({"messages": "hi"}, 400, "'messages' must be a non-empty list"),
        ([1, 2], 400, "must be a JSON object"),
    ]
    import re

    for body, status, message in cases:
        raw = json.dumps(body).replace("NaN", "NaN").encode()
        code, r = _post(base, None, raw=raw)
        assert code == status and re.search(message, r["error"]["message"]), (message, code, r)
    assert _post(base, None, raw=b"{not json")[0] == 400
    assert _post(base, _user())[0] == 200  # still up


def test_serve_long_request_blocks_neither_health_nor_parsing(hardened):
    """Issue 23, failure 2: a 200 KB prompt held a global lock and blocked every other client for 52 s."""
    import threading

    import httpx

    base, _, chat = hardened
    started, order = threading.Event(), []
    real = chat.generate

    def slow_generate(job):  # the generation worker is busy until the other clients have been answered
        started.set()
        release.wait(60)
        return real(job)

    release = threading.Event()
    chat.generate = slow_generate
    try:
        long = threading.Thread(target=lambda: order.append(("long", _post(base, _user())[0])))
        long.start()
        assert started.wait(60)
        h = httpx.get(f"{base}/health", timeout=30).json()
        order.append(("health", h["status"]))
        code, r = _post(base, _user(text="word " * 30_000))  # a bad long prompt is answered while it waits
        order.append(("bad", code))
        release.set()
        long.join(60)
    finally:
        chat.generate = real
        release.set()
    assert order == [("health", "ok"), ("bad", 400), ("long", 200)]


@pytest.mark.slow
def test_serve_load_100_concurrent_mixed_requests(hardened):
    """100 concurrent clients, a third of them hostile (oversized, malformed, bombs, no key): the server stays
    up, every valid request gets its completion, every bad one a 4xx with a message, none a 5xx."""
    from concurrent.futures import ThreadPoolExecutor

    import httpx

    base, root, _ = hardened
    bomb, small = _data_url(bomb_png(6000)), _data_url(_png(56))
    kinds = [
        ("text", lambda: _post(base, _user()), 200),
        ("image", lambda: _post(base, _user(_img(small))), 200),
        ("sampled", lambda: _post(base, {**_user(), "temperature": 1.0, "n": 2, "seed": 1}), 200),
        ("oversized", lambda: _post(base, _user(text="x" * 700_000)), 413),
        ("malformed", lambda: _post(base, None, raw=b'{"messages": ['), 400),
        ("bomb", lambda: _post(base, _user(_img(bomb))), 400),
        ("no key", lambda: _post(base, _user(), key=None), 401),
        ("local file", lambda: _post(base, _user(_img("/etc/hostname"))), 400),
        ("long prompt", lambda: _post(base, _user(text="word " * 30_000)), 400),
    ]
    plan = [kinds[i % len(kinds)] for i in range(100)]
    with ThreadPoolExecutor(100) as pool:
        results = list(pool.map(lambda k: (k[0], k[2], *k[1]()), plan))
    for name, want, code, r in results:
        assert code == want, (name, code, r)
        if want == 200:
            assert r["choices"] and r["usage"]["completion_tokens"] >= 1
        else:
            assert r["error"]["message"]
    assert httpx.get(f"{base}/health", timeout=10).json()["status"] == "ok"
    valid = sum(want == 200 for _, want, _, _ in results)
    print(f"load: {len(results)} concurrent requests, {valid} valid all answered 200, "
          f"{len(results) - valid} bad all refused with 4xx, 0 5xx")


# ------------------------------------------------------------------------------------------ kill -9


def _kill9_and_resume(tmp_path, command: list[str], steps: int, prefix: str):
    """Run `command` twice side by side: once straight through, once killed with SIGKILL at a random moment
    after its first logged step (mid-step, mid-checkpoint, mid-final-save: wherever it falls), then rerun
    the same command. The resumed run must end at the uninterrupted run's weights, bit for bit, with every
    step logged exactly once."""
    import random
    import time

    from safetensors.torch import load_file

    rng = random.Random()
    seed = rng.randrange(10 ** 6)
    rng.seed(seed)
    kill_after_rows = rng.randint(1, steps - 1)
    extra_delay = rng.uniform(0.0, 0.3)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}

    def cmd(run):
        return [sys.executable, "-m", "mmr1.cli", *command, f"logging.run_dir={run}", "logging.progress=false",
                "logging.tensorboard=false", "logging.log_every=1"]

    straight = subprocess.Popen(cmd(tmp_path / "straight"), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                                env=env)
    cut = tmp_path / "cut"
    victim = subprocess.Popen(cmd(cut), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env)
    metrics = cut / "metrics.jsonl"
    deadline = time.time() + 300
    while time.time() < deadline and victim.poll() is None:
        if metrics.exists() and len(metrics.read_text().splitlines()) >= kill_after_rows:
            break
        time.sleep(0.01)
    time.sleep(extra_delay)
    victim.send_signal(signal.SIGKILL)
    victim.wait(30)
    rows_at_kill = len(metrics.read_text().splitlines()) if metrics.exists() else 0
    resumed = subprocess.run(cmd(cut), capture_output=True, env=env, timeout=600)
    _, err = straight.communicate(timeout=600)
    why = f"kill seed {seed}: killed after {rows_at_kill} logged steps (+{extra_delay:.2f} s)"
    assert straight.returncode == 0, err.decode()[-2000:]
    assert resumed.returncode == 0, (why, resumed.stderr.decode()[-2000:])
    a = load_file(str(tmp_path / "straight" / "final" / "model.safetensors"))
    b = load_file(str(cut / "final" / "model.safetensors"))
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), (why, k)
    logged = [json.loads(line)["step"] for line in metrics.read_text().splitlines()
              if any(key.startswith(prefix) for key in json.loads(line))]
    assert logged == list(range(1, steps + 1)), why
    print(f"{command[0]}: {why}; resumed to the same weights")
    return rows_at_kill


@pytest.mark.slow
def test_kill9_at_a_random_point_of_sft_resumes_to_the_same_weights(tmp_path):
    _kill9_and_resume(tmp_path, ["sft", "quickstart", "data.train_size=64", "trainer.max_steps=30",
                                 "trainer.batch_size=4", "trainer.save_every=4", "trainer.keep_checkpoints=2"],
                      30, "sft/")


@pytest.mark.slow
def test_kill9_at_a_random_point_of_grpo_resumes_to_the_same_weights(tmp_path):
    _kill9_and_resume(tmp_path, ["grpo", "quickstart", "data.train_size=32", "rl.steps=8", "rl.prompts_per_step=4",
                                 "rollout.group_size=4", "rollout.max_new_tokens=12", "rl.micro_batch_size=16",
                                 "trainer.save_every=2"], 8, "rl/")


def test_serve_request_timeout_is_a_504_and_drops_queued_work(lms):
    import threading

    import httpx

    from mmr1.serve import ChatServer, ServeLimits, make_http_server

    chat = ChatServer(lms("qwen2_5_vl"), "tiny", default_max_tokens=2, limits=ServeLimits(request_timeout_s=1.0))
    release, ran = threading.Event(), []
    real = chat.generate

    def held(job):
        ran.append(job)
        release.wait(60)
        return real(job)

    chat.generate = held
    httpd = make_http_server(chat, "127.0.0.1", 0)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    base = f"http://127.0.0.1:{httpd.server_address[1]}"
    try:
        for _ in range(200):
            try:
                httpx.get(f"{base}/health", timeout=1)
                break
            except httpx.TransportError:
                threading.Event().wait(0.05)
        from concurrent.futures import ThreadPoolExecutor

        with ThreadPoolExecutor(3) as pool:  # one runs (held), two wait in the queue: all three time out
            codes = list(pool.map(lambda _: _post(base, _user(), key=None), range(3)))
        assert [c for c, _ in codes] == [504, 504, 504] and "--request-timeout" in codes[0][1]["error"]["message"]
        release.set()
        assert _post(base, _user(), key=None)[0] == 200
        assert len(ran) == 2  # the held one and the last: the two that timed out in the queue never ran
    finally:
        release.set()
        httpd.shutdown()
        httpd.server_close()


def test_client_keys_stay_out_of_errors_and_other_hosts(hardened, monkeypatch):
    """The openai-SDK client: a key never shows in an error or repr, and OPENAI_API_KEY from the environment is
    not sent to a base URL it was not given for."""
    from mmr1.clients import APIError, ChatClient

    base, _, _ = hardened
    c = ChatClient("http://127.0.0.1:9/v1", "m", api_key="sk-very-secret", retries=0, timeout=2)
    with pytest.raises(APIError) as err:
        c.chat([{"role": "user", "content": "hi"}])
    assert "sk-very-secret" not in str(err.value) and "sk-very-secret" not in repr(c)
    monkeypatch.setenv("OPENAI_API_KEY", KEY)
    with pytest.raises(APIError, match="HTTP 401"):
        ChatClient(f"{base}/v1", "tiny", retries=0).chat([{"role": "user", "content": "hi"}], max_tokens=2)
    reply = ChatClient.from_env(f"{base}/v1", "tiny", "OPENAI_API_KEY", retries=0).chat(
        [{"role": "user", "content": "hi"}], max_tokens=2, temperature=0)
    assert reply["usage"]["completion_tokens"] >= 1
