"""Rollout records and `mmr1 view`, on real runs made here: a short quickstart (SFT + GRPO + evals) and a short
MMSearch-R1 agent GRPO run over the entity world's local search index (image search returns images).

The server is the real CLI (`mmr1 view --port 0`, uvicorn); the browser tests drive Debian's chromium through
Playwright. A failing browser test saves a screenshot in its temporary directory and names it in the failure.
"""

import contextlib
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import urllib.request
from pathlib import Path

import pytest

import mmr1.recipes.mmsearch_r1.runner as ms
from mmr1.cli import main
from mmr1.config import load_config
from mmr1.data.worlds import make_world
from mmr1.models.loading import load_model
from mmr1.recipes.quickstart.runner import run_quickstart
from mmr1.train.agent_grpo import fit_agent
from mmr1.train.grpo import fit
from mmr1.train.rollouts import collapse_pads, mask_runs, tool_collapse
from mmr1.train.run_dir import RunDir
from mmr1.view.data import Run, read_jsonl
from mmr1.view.export import pick_steps
from tests.test_mmsearch import _cfg as mmsearch_cfg
from tests.test_mmsearch import script

CHROMIUM = os.environ.get("MMR1_CHROMIUM", "/usr/bin/chromium")  # Debian's package; nothing is downloaded
ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
        "--disable-component-update", "--disable-sync", "--no-first-run"]
SRC = str(Path(__file__).parents[1] / "src")


@pytest.fixture(scope="module")
def runs(tmp_path_factory, tiny_dirs):
    """A short quickstart (3 SFT steps, 3 GRPO steps, evals) and a 3-step MMSearch-R1 agent GRPO run."""
    root = tmp_path_factory.mktemp("runs")
    run_quickstart(str(root / "qs"), seed=0, overrides=[
        "data.train_size=24", "data.eval_size=6", "trainer.epochs=1", "trainer.batch_size=8", "rl.steps=3",
        "rl.prompts_per_step=2", "rollout.group_size=4", "rollout.max_new_tokens=12", "logging.progress=false",
        "logging.tensorboard=false", "logging.log_every=1", "logging.rollouts.groups=2"])
    world = root / "world"
    c = mmsearch_cfg(world)
    index = ms.ensure_index(c, world)
    train = make_world("entities", "train", 12, 0, n_entities=16, instruction=c.data.instruction)
    agent = root / "agent"
    c = mmsearch_cfg(agent, "rl.steps=3", "logging.log_every=1", "trainer.save_every=0")
    fit_agent(c, load_model(tiny_dirs["qwen2_5_vl"]), train, ms.make_tools(c, index, agent / "cache"),
              RunDir(agent, tensorboard=False), progress=False, script=script)
    return {"qs": root / "qs", "agent": agent, "root": root}


def _groups(path: Path) -> list[dict]:
    rows, skipped = read_jsonl(path)
    assert skipped == 0
    return rows


# ------------------------------------------------------------------------------------------- recording


def test_grpo_and_sft_record_rollouts(runs):
    qs = runs["qs"]
    rl = qs / "rl" / "rollouts"
    assert sorted(p.name for p in rl.glob("step-*.jsonl")) == [f"step-00000{i}.jsonl" for i in (1, 2, 3)]
    groups = _groups(rl / "step-000002.jsonl")
    assert len(groups) == 2 and all(g["kind"] == "grpo" and g["step"] == 2 for g in groups)
    for g in groups:
        imgs = [p["image"] for m in g["prompt"] for p in m["content"] if p["type"] == "image"]
        assert len(imgs) == 1 and (rl / imgs[0]).is_file()
        assert len(g["completions"]) == 4
        advs = [c["advantage"] for c in g["completions"]]
        assert abs(sum(advs)) < 1e-4  # group-normalised
        for c in g["completions"]:
            assert set(c["rewards"]) == {"accuracy", "format"}
            assert c["reward"] == pytest.approx(sum(c["rewards"].values()), abs=1e-5)
            assert c["tokens"]["sampled"] > 0 and c["finish_reason"] in ("stop", "length")
            assert c["truncated"] == (c["finish_reason"] == "length")
            assert c["logprob"]["mean"] <= 0 and c["logprob"]["entropy_est"] == -c["logprob"]["mean"]
            assert "".join(s["text"] for s in c["segments"]).startswith(c["text"][:5])
    # one file per distinct image, named by its content
    names = list((rl / "images").glob("*.png"))
    assert len(names) == len({p.read_bytes() for p in names})

    sft = _groups(qs / "rollouts" / "step-000001.jsonl")
    assert len(sft) == 2 and sft[0]["kind"] == "sft"
    segs = sft[0]["completions"][0]["segments"]
    assert not segs[0]["loss"] and "<|image_pad|>×" in segs[0]["text"]  # the prompt is outside the loss
    in_loss = "".join(s["text"] for s in segs if s["loss"])
    assert sft[0]["completions"][0]["text"] in in_loss and "<answer>" in in_loss


def test_agent_rl_records_turns_tool_calls_and_images(runs):
    ro = runs["agent"] / "rollouts"
    groups = _groups(ro / "step-000003.jsonl")
    assert [g["kind"] for g in groups] == ["agent", "agent"]
    comps = [c for g in groups for c in g["completions"]]
    searched = [c for c in comps if c["used_tool"]]
    assert searched and len(searched) < len(comps)
    c = searched[0]
    kinds = [t["type"] for t in c["turns"]]
    assert kinds[:3] == ["assistant", "tool_call", "observation"]
    call, obs = c["turns"][1], c["turns"][2]
    assert call["tool"] == "image_search" and call["status"] == "ok"
    assert obs["images"] and all((ro / p).is_file() for p in obs["images"]) and not obs["loss"]
    masked = [s for s in c["segments"] if not s["loss"]]
    assert any("Searched results" in s["text"] for s in masked)  # the observation is outside the loss mask
    assert c["tokens"]["in_loss"] == c["tokens"]["sampled"] > 0 and c["tokens"]["injected"] >= obs["tokens"] > 0
    spans = c["mask_spans"]
    assert [s[2] for s in spans] == [int(s["loss"]) for s in c["segments"]] and spans[0][0] == 0
    assert sum(b - a for a, b, v in spans if v) == c["tokens"]["in_loss"]
    assert spans[-1][1] == c["tokens"]["sampled"] + c["tokens"]["injected"]
    assert set(c["rewards"]) >= {"accuracy", "format", "search_penalty"}
    metrics = [json.loads(x) for x in (runs["agent"] / "metrics.jsonl").read_text().splitlines()]
    assert metrics[-1]["rl/search_ratio"] == sum(x["used_tool"] for x in comps) / len(comps)  # every group kept


def test_rollout_sampling_follows_the_config(tiny_dirs, tmp_path):
    cfg = load_config(None, [f"logging.run_dir={tmp_path}", "rl.prompts_per_step=2", "rollout.group_size=2",
                             "rollout.max_new_tokens=4", "rl.steps=4", "trainer.save_every=0",
                             "logging.tensorboard=false", "logging.progress=false", "logging.rollouts.every=2",
                             "logging.rollouts.groups=1"])
    fit(cfg, load_model(tiny_dirs["qwen2_5_vl"]), make_world("counting", "train", 8, 0),
        RunDir(tmp_path, tensorboard=False), progress=False)
    files = sorted(p.name for p in (tmp_path / "rollouts").glob("step-*.jsonl"))
    assert files == ["step-000002.jsonl", "step-000004.jsonl"]
    assert len(_groups(tmp_path / "rollouts" / files[0])) == 1
    off = tmp_path / "off"
    fit(load_config(None, [f"logging.run_dir={off}", "rl.prompts_per_step=2", "rollout.group_size=2", "rl.steps=1",
                           "rollout.max_new_tokens=4", "trainer.save_every=0", "logging.rollouts.enabled=false"]),
        load_model(tiny_dirs["qwen2_5_vl"]), make_world("counting", "train", 8, 0), RunDir(off, tensorboard=False),
        progress=False)
    assert (off / "metrics.jsonl").exists() and not (off / "rollouts").exists()


def test_tool_collapse_and_helpers():
    rising = [0.1 * i for i in range(10)]
    assert tool_collapse([0.8] * 5 + [0.3] * 5, rising) is not None
    assert "fell from 0.80" in tool_collapse([0.8] * 5 + [0.3] * 5, rising)
    assert tool_collapse([0.8] * 5 + [0.5] * 5, rising) is None  # fell by less than half
    assert tool_collapse([0.8] * 5 + [0.3] * 5, rising[::-1]) is None  # reward fell too
    assert tool_collapse([0.0] * 10, rising) is None and tool_collapse([0.5], [1.0]) is None
    assert mask_runs([1, 1, 0, 0, 1]) == [(0, 2, 1), (2, 4, 0), (4, 5, 1)]
    assert collapse_pads("a<|image_pad|><|image_pad|><|image_pad|>b") == "a<|image_pad|>×3b"
    assert pick_steps(list(range(1, 11)), 3) == [1, 5, 10] and pick_steps([4], 3) == [4]


def test_tool_collapse_warning_reaches_the_training_log(tmp_path):
    from mmr1.config import RolloutsLogConfig
    from mmr1.train.rollouts import RolloutRecorder

    run = RunDir(tmp_path, tensorboard=False)
    rec = RolloutRecorder(tmp_path, RolloutsLogConfig(enabled=False))
    for step, (t, r) in enumerate(zip([0.9] * 6 + [0.2] * 6, [0.1 * i for i in range(12)]), 1):
        rec.after_rl_step(step, None, {"search_ratio": t, "reward/mean": r})
    run.close()
    log = (tmp_path / "log.txt").read_text()
    assert log.count("tool-use collapse?") == 1 and "WARNING" in log


# ------------------------------------------------------------------------------------- reading, errors


def test_truncated_line_is_skipped_and_counted(runs, tmp_path):
    run = tmp_path / "cut"
    shutil.copytree(runs["agent"], run, ignore=shutil.ignore_patterns("checkpoints", "final", "cache"))
    f = run / "rollouts" / "step-000003.jsonl"
    f.write_text(f.read_text()[:-200])  # killed mid-write
    with open(run / "metrics.jsonl", "a") as fh:
        fh.write('{"step": 4, "rl/rew')
    r = Run(run)
    got = r.rollouts("", 3)
    assert got["skipped"] == 1 and len(got["groups"]) == 1
    m = r.metrics("")
    assert m["skipped"] == 1 and [x["step"] for x in m["rows"]] == [1, 2, 3]


def test_old_runs_and_non_runs(tmp_path, capsys):
    old = tmp_path / "old"
    old.mkdir()
    (old / "metrics.jsonl").write_text('{"step": 1, "time": 1.0, "sft/loss": 2.0}\n')
    r = Run(old)
    assert r.describe()["parts"] == [{"part": "", "label": "(root)", "metrics": True, "rollouts": False}]
    assert r.steps("") == [] and r.eval_set("eval/x")["rows"] == [] and r.table("summary.json")["data"] is None
    (tmp_path / "empty").mkdir()
    for bad in (tmp_path / "empty", tmp_path / "missing"):
        assert main(["view", str(bad)]) == 2
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and str(bad) in err, err


def test_port_in_use_is_one_line(runs, capsys):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen(1)
        port = s.getsockname()[1]
        assert main(["view", str(runs["agent"]), "--port", str(port)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and f"port {port}" in err and "in use" in err


@contextlib.contextmanager
def viewer(*runs):
    """`mmr1 view RUN ... --port 0` in a subprocess; yields its base URL."""
    env = {**os.environ, "PYTHONPATH": SRC + os.pathsep + os.environ.get("PYTHONPATH", "")}
    p = subprocess.Popen([sys.executable, "-m", "mmr1.cli", "view", *map(str, runs), "--port", "0"],
                         stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
    try:
        line = p.stdout.readline()
        m = re.search(r"http://127\.0\.0\.1:(\d+)/", line)
        assert m, line + p.stdout.read() if p.poll() is not None else line
        yield f"http://127.0.0.1:{m.group(1)}"
    finally:
        p.terminate()
        p.wait(timeout=20)


def _get(url: str):
    try:
        with urllib.request.urlopen(url, timeout=20) as r:
            return r.status, r.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()


def _raw(base: str, method: str, path: str) -> int:
    """A request with the path sent as written (no client-side normalisation of '..')."""
    import http.client

    host, port = base.removeprefix("http://").split(":")
    c = http.client.HTTPConnection(host, int(port), timeout=20)
    c.request(method, path)
    return c.getresponse().status


def test_server_is_read_only_and_serves_only_run_images(runs, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(runs["agent"], run, ignore=shutil.ignore_patterns("checkpoints", "final", "cache"))
    secret = tmp_path / "secret.png"
    shutil.copy(next((run / "rollouts" / "images").glob("*.png")), secret)
    (run / "rollouts" / "images" / "link.png").symlink_to(secret)
    before = {p: p.stat().st_mtime_ns for p in run.rglob("*") if p.is_file()}
    with viewer(run) as base:
        img = next((run / "rollouts" / "images").glob("[0-9a-f]*.png")).name
        assert _get(f"{base}/api/run/0/file/rollouts/images/{img}")[0] == 200
        for path in ("/api/run/0/file/../secret.png", "/api/run/0/file/..%2Fsecret.png",
                     "/api/run/0/file/%2e%2e/secret.png", "/api/run/0/file/rollouts/images/link.png",
                     "/api/run/0/file/config.yaml", "/api/run/0/file//etc/passwd", "/api/run/0/file/metrics.jsonl",
                     "/api/run/1/file/x.png", "/static/../data.py"):
            assert _raw(base, "GET", path) == 404, path
        assert _get(f"{base}/api/run/0/metrics?part=..")[0] == 404
        for method in ("POST", "PUT", "DELETE", "PATCH"):
            assert _raw(base, method, "/api/run/0/metrics") == 405, method
            assert _raw(base, method, f"/api/run/0/file/rollouts/images/{img}") == 405, method
        # a run still training: a new step shows on the next request
        steps = json.loads(_get(f"{base}/api/run/0/steps?part=")[1])["steps"]
        shutil.copy(run / "rollouts" / "step-000003.jsonl", run / "rollouts" / "step-000004.jsonl")
        assert json.loads(_get(f"{base}/api/run/0/steps?part=")[1])["steps"] == [*steps, 4]
    (run / "rollouts" / "step-000004.jsonl").unlink()
    assert {p: p.stat().st_mtime_ns for p in run.rglob("*") if p.is_file()} == before  # nothing was written


# -------------------------------------------------------------------------------------------- browser


@pytest.fixture(scope="module")
def browser():
    if not Path(CHROMIUM).exists():
        pytest.fail(f"{CHROMIUM} not found: install Debian's chromium (apt-get install -y chromium)")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        yield b
        b.close()


@contextlib.contextmanager
def page_of(browser, tmp_path, name):
    """A page whose JS errors fail the test; on failure its screenshot is saved and named in the message."""
    page = browser.new_page(viewport={"width": 1400, "height": 1000})
    errors = []
    page.on("pageerror", lambda e: errors.append(str(e)))
    try:
        yield page
        assert not errors, errors
    except Exception as e:
        shot = tmp_path / f"{name}-failure.png"
        with contextlib.suppress(Exception):
            page.screenshot(path=str(shot), full_page=True)
        raise AssertionError(f"{e}\nscreenshot: {shot}") from e
    finally:
        page.close()


def _rollout_checks(page, part_label):
    page.click("#tabs button[data-tab=rollouts]")
    page.wait_for_selector("body[data-ready=rollouts]")
    page.select_option("#ro-part", label=part_label)
    page.wait_for_selector("body[data-ready=rollouts]")
    page.click("#ro-steps button[data-step='3']")
    page.wait_for_selector("body[data-ready=rollouts]")
    page.wait_for_selector("#ro-steps button.on[data-step='3']")
    page.click("#ro-groups button[data-group='1']")
    page.wait_for_selector("#ro-groups button.on[data-group='1']")
    assert page.locator("#group .completion").count() == 4


@pytest.mark.slow
def test_browser_curves_rollouts_filters_evals(runs, browser, tmp_path):
    with viewer(runs["qs"], runs["agent"]) as base, page_of(browser, tmp_path, "viewer") as page:
        page.goto(base + "/")
        page.wait_for_selector("body[data-ready=curves]")
        # curves: the GRPO reward of the quickstart's rl/ part, SFT loss of its root, overlaid runs in one chart
        reward = page.locator(".chart[data-metric='rl/reward/mean']")
        assert reward.locator(".legend .swatch").count() == 2  # quickstart rl/ and the agent run, overlaid
        assert reward.locator("path.series").count() >= 2
        assert page.locator(".chart[data-metric='sft/loss'] path.series").count() >= 1
        assert page.locator(".chart[data-metric='tool-call rate'] path.series").count() >= 1
        reward.locator("svg").hover()
        assert "agent @" in reward.locator(".readout").inner_text()  # the hover readout names each series' value
        page.select_option("#x-axis", "time")
        assert reward.locator(".legend .swatch").count() == 2 and reward.locator("path.series").count() >= 2
        page.fill("#metric-filter", "sft/loss")
        assert page.locator("#curves .chart").count() == 1
        page.screenshot(path=str(tmp_path / "curves.png"))

        # rollouts of the agent run: an image, a tool call, an observation image and shaded masked tokens
        _rollout_checks(page, "agent")
        group = page.locator("#group")
        prompt_img = group.locator(".prompt img.inline").first
        prompt_img.wait_for()
        page.wait_for_function("() => [...document.querySelectorAll('#group img.inline')].every(i => i.complete)")
        assert prompt_img.evaluate("i => i.naturalWidth") > 0
        assert group.locator(".tool-call").first.is_visible()
        assert "image_search" in group.locator(".tool-call").first.inner_text()
        obs_img = group.locator(".observation img.inline").first
        assert obs_img.is_visible() and obs_img.evaluate("i => i.naturalWidth") > 0
        masked = group.locator(".segments .seg.masked").first
        assert masked.is_visible()
        assert any("Searched results" in t for t in group.locator(".segments .seg.masked").all_inner_texts())
        shade = masked.evaluate("e => getComputedStyle(e).backgroundColor")
        plain = group.locator(".segments .seg.loss").first.evaluate("e => getComputedStyle(e).backgroundColor")
        assert shade != plain
        page.screenshot(path=str(tmp_path / "rollouts.png"))

        # filters: failures only, then used a tool
        page.click("#f-failures")
        cards = page.locator("#group .completion")
        assert cards.count() >= 1
        assert all("wrong" in c.get_attribute("class") for c in cards.all())
        page.select_option("#f-tool", "yes")
        assert all(c.locator(".tool-call").count() > 0 for c in page.locator("#group .completion").all())
        page.click("#f-reset")

        # quickstart GRPO rollouts: prompt image and per-reward table
        _rollout_checks(page, "qs/rl")
        assert page.locator("#group .prompt img.inline").first.evaluate("i => i.naturalWidth") > 0
        assert page.locator("#group table.rewards th", has_text="accuracy").count() == 4

        # tables and evals (side by side of the SFT and GRPO eval sets)
        page.click("#tabs button[data-tab=tables]")
        page.wait_for_selector("body[data-ready=tables]")
        assert page.locator(".table-card h3", has_text="summary.json").count() == 1
        page.click("#tabs button[data-tab=evals]")
        page.wait_for_selector("body[data-ready=evals]")
        page.select_option("#ev-a", label="qs / eval/sft")
        page.wait_for_selector("#ev-table")
        assert page.locator("#ev-table tr").count() == 7  # header + 6 predictions
        page.select_option("#ev-b", label="qs / eval/rl")
        page.wait_for_selector("#ev-compare")
        assert "6 shared ids" in page.inner_text("#ev-summary")
        page.select_option("#ev-verdict", "correct")
        page.wait_for_selector("#ev-compare")


@pytest.mark.slow
def test_browser_shows_tool_collapse_warning_and_refresh(runs, browser, tmp_path):
    """A run whose tool-call rate halves while its reward rises (its metrics rewritten so) shows the warning; a
    step added while the page is open appears after Refresh."""
    run = tmp_path / "collapse"
    shutil.copytree(runs["agent"], run, ignore=shutil.ignore_patterns("checkpoints", "final", "cache"))
    rows = [{"step": s, "time": 1000.0 + s, "rl/search_ratio": 0.9 if s <= 6 else 0.1, "rl/reward/mean": 0.1 * s}
            for s in range(1, 13)]
    (run / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    with viewer(run) as base, page_of(browser, tmp_path, "collapse") as page:
        page.goto(base + "/")
        page.wait_for_selector("#tool-warning")
        assert "tool-use collapse" in page.inner_text("#tool-warning")
        page.click("#tabs button[data-tab=rollouts]")
        page.wait_for_selector("body[data-ready=rollouts]")
        assert page.locator("#ro-steps button").count() == 3
        shutil.copy(run / "rollouts" / "step-000003.jsonl", run / "rollouts" / "step-000004.jsonl")
        page.click("#refresh")
        page.wait_for_selector("#ro-steps button[data-step='4']")


@pytest.mark.slow
def test_export_is_self_contained(runs, browser, tmp_path):
    out = tmp_path / "report.html"
    assert main(["view", str(runs["qs"]), str(runs["agent"]), "--export", str(out)]) == 0
    html = out.read_text()
    assert not re.search(r"""(src|href)=["']https?://""", html)
    with page_of(browser, tmp_path, "export") as page:
        requests = []
        page.on("request", lambda r: requests.append(r.url) if not r.url.startswith(("file:", "data:")) else None)
        page.goto(out.as_uri())
        page.wait_for_selector("body[data-ready=curves]")
        chart = page.locator(".chart[data-metric='rl/reward/mean']")
        assert chart.locator(".legend .swatch").count() == 2 and chart.locator("path.series").count() >= 2
        _rollout_checks(page, "agent")
        img = page.locator("#group .observation img.inline").first
        assert img.get_attribute("src").startswith("data:image/png;base64,")
        page.wait_for_function("() => [...document.querySelectorAll('#group img.inline')].every(i => i.complete)")
        assert img.evaluate("i => i.naturalWidth") > 0
        assert page.locator("#group .segments .seg.masked").count() > 0
        page.click("#tabs button[data-tab=evals]")
        page.wait_for_selector("#ev-table")
        assert not requests, requests  # nothing fetched from anywhere


@pytest.mark.slow
def test_browser_reads_a_run_from_before_rollouts(runs, browser, tmp_path):
    """A run written before rollouts were recorded (metrics and eval predictions only): shown, absent parts said."""
    old = tmp_path / "old"
    shutil.copytree(runs["qs"], old, ignore=shutil.ignore_patterns("rollouts", "rl", "summary.json", "checkpoints",
                                                                    "final", "model"))
    with viewer(old) as base, page_of(browser, tmp_path, "old") as page:
        page.goto(base + "/")
        page.wait_for_selector("body[data-ready=curves]")
        assert page.locator(".chart[data-metric='sft/loss'] path.series").count() >= 1
        page.click("#tabs button[data-tab=rollouts]")
        page.wait_for_selector("#no-rollouts")
        page.click("#tabs button[data-tab=tables]")
        page.wait_for_selector("body[data-ready=tables]")
        assert "No summary.json" in page.inner_text("#main")
        page.click("#tabs button[data-tab=evals]")
        page.wait_for_selector("#ev-table")
