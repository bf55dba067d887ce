"""Vision-R1 cold start by modality bridging: the rules, the offline pipeline, a real HTTP teacher
(`mmr1 serve` over a tiny model), and a run killed midway that a rerun completes without loss or duplicates."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from mmr1.clients import APIError, ChatClient
from mmr1.data.coldstart import (DESCRIPTION_PROMPT, ProgrammaticTeacher, build_coldstart, final_answer, judge,
                                 parse_world_question, read_jsonl_ids, rewrite_description_refs, split_reasoning)
from mmr1.data.loaders import load_samples
from mmr1.data.schema import Sample
from mmr1.data.worlds import make_world
from mmr1.rewards.checkers import check_answer
from mmr1.rewards.extract import extract_answer
from mmr1.rewards.format import think_answer_format


def gold(answer: str) -> Sample:
    return Sample(id="x", messages=[{"role": "user", "content": "q"}], answers=[answer])


def test_description_template_is_the_papers():
    assert DESCRIPTION_PROMPT.format(question="Q?", thinking="T.") == (
        "Given a image, a question:Q? and a thinking process:T., provide a detailed description containing all "
        "the necessary details of the image to answer the question correctly...")


def test_rewrites_turn_description_into_image():
    text, n = rewrite_description_refs("The description says there are 3 cubes. According to the description, "
                                       "two are red; in the description the cube is described as large.")
    assert text == ("The image shows there are 3 cubes. According to the image, two are red; in the image the "
                    "cube is shown as large.")
    assert n == 4
    assert rewrite_description_refs("No such phrase here.") == ("No such phrase here.", 0)


@pytest.mark.parametrize("msg, think, final", [
    ({"content": "<think>a b</think> The answer is 3."}, "a b", "The answer is 3."),
    ({"content": "Final.", "reasoning_content": " long thought "}, "long thought", "Final."),  # DeepSeek API
    ({"content": "just text 3"}, "just text 3", "just text 3"),
])
def test_split_reasoning(msg, think, final):
    assert split_reasoning(msg) == (think, final)


@pytest.mark.parametrize("text, answer", [
    ("so \\boxed{\\frac{1}{2}} and later \\boxed{4}", "4"),
    ("<answer> Final Answer:12 </answer>", "12"),
    ("Final Answer: 7 cm", "7 cm"),
    ("Therefore the answer is 5.", "5"),
    ("I do not know", None),
])
def test_final_answer(text, answer):
    assert final_answer(text) == answer


@pytest.mark.parametrize("think, answer, gold_answer, reason", [
    ("one two three four five six", "3", "3", None),
    ("one two three four five six", None, "3", "no_answer"),
    ("one two three four five six", "4", "3", "wrong_answer"),
    ("too short", "3", "3", "empty_reasoning"),
    ("The count cannot be determined from this, so 3", "3", "3", "inconsistent"),
    ("Counting again, the answer is 4 objects, done", "3", "3", "inconsistent"),  # its own conclusion differs
    ("Counting again, the answer is 3 objects, done", "3", "3", None),
])
def test_judge(think, answer, gold_answer, reason):
    assert judge(think, answer, gold(gold_answer)) == reason


@pytest.mark.parametrize("q, parsed", [
    ("How many red objects are in the image?", ("counting", {"colour": "red"})),
    ("How many triangles are in the image?", ("counting", {"shape": "triangle"})),
    ("How many more red objects than blue objects are there?", ("reasoning", {"op": "difference",
                                                                             "colours": ["red", "blue"]})),
    ("Each red object is worth 1 point and each blue object is worth 3 points. What is the total score?",
     ("reasoning", {"op": "weighted_sum", "colours": ["red", "blue"], "weights": [1, 3]})),
    ("What colour is the sky?", None),
])
def test_parse_world_question(q, parsed):
    assert parse_world_question(q) == parsed


def test_offline_pipeline_keeps_only_checked_answers_and_writes_sharegpt(tmp_path):
    samples = make_world("counting", n=30, seed=1) + make_world("reasoning", n=30, seed=1)
    out = tmp_path / "cold.jsonl"
    stats = build_coldstart(samples, ProgrammaticTeacher(miss_rate=0.3), out, progress=False)
    ledger = read_jsonl_ids(out.with_name("cold.jsonl.status.jsonl"))
    assert set(ledger) == {s.id for s in samples}
    assert stats["kept"] + sum(stats["dropped"].values()) == 60 and stats["failed"] == 0
    # every drop is a missed object that changed the answer: the reasoner only saw the description
    assert stats["dropped"]["wrong_answer"] > 0 and set(stats["dropped"]) == {
        "no_answer", "wrong_answer", "inconsistent", "empty_reasoning"}
    by_id = {s.id: s for s in samples}
    kept = load_samples(out, format="sharegpt").samples  # our own ShareGPT loader reads it as it is
    assert len(kept) == stats["kept"] > 30
    for s in kept:
        target = s.messages[-1]["content"] if isinstance(s.messages[-1]["content"], str) else \
            s.messages[-1]["content"][0]["text"]
        assert think_answer_format(target)
        assert check_answer(extract_answer(target), by_id[s.id])  # the same checker the rewards use
        assert "description" not in target and "Wait" in target and "Hmm" in target
        assert len(s.images) == 1 and Path(s.images[0]).is_file()
    assert stats["keywords"]["kept reasoning"]["Wait"] == stats["kept"]
    assert stats["keywords"]["pseudo-CoT"]["Wait"] == 0
    assert stats["rewrites"] == stats["kept"]  # "the description says" -> "the image shows", once each
    assert json.loads(out.with_name("cold.jsonl.stats.json").read_text())["kept"] == stats["kept"]

    again = build_coldstart(samples, ProgrammaticTeacher(miss_rate=0.3), out, progress=False)
    assert again == {**stats, "seconds": again["seconds"]}
    assert sum(1 for _ in out.open()) == stats["kept"]  # nothing written twice


def test_torn_last_line_is_cut_and_redone(tmp_path):
    samples = make_world("counting", n=6, seed=2)
    out = tmp_path / "cold.jsonl"
    build_coldstart(samples, ProgrammaticTeacher(miss_rate=0.0), out, progress=False)
    status = out.with_name("cold.jsonl.status.jsonl")
    lines = status.read_text().splitlines(keepends=True)
    status.write_text("".join(lines[:-1]) + lines[-1][:10])  # a crash mid-write
    build_coldstart(samples, ProgrammaticTeacher(miss_rate=0.0), out, progress=False)
    assert len(read_jsonl_ids(status)) == 6 and len(read_jsonl_ids(out)) == 6
    assert sum(1 for _ in out.open()) == 6


# ----------------------------------------------------------------------------- a real HTTP teacher

def start_server(model_dir, name="teacher"):
    proc = subprocess.Popen([sys.executable, "-m", "mmr1.cli", "serve", str(model_dir), "--port", "0",
                             "--name", name, "--max-tokens", "8"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    line = proc.stdout.readline()
    assert line.startswith(f"serving {name} at http://"), proc.stderr.read()
    return proc, line.split()[3]


@pytest.fixture(scope="module")
def server(tiny_dirs):
    proc, url = start_server(tiny_dirs["qwen2_5_vl"])
    yield url
    proc.terminate()
    proc.wait(timeout=30)


def test_client_retries_then_names_the_last_error():
    waits = []
    c = ChatClient("http://127.0.0.1:9/v1", "m", timeout=0.5, retries=2, backoff=0.25, sleep=waits.append)
    with pytest.raises(APIError, match=r"failed after 3 attempts; last error: APIConnectionError"):
        c.chat([{"role": "user", "content": "hi"}])
    assert waits == [0.25, 0.5] and c.requests == 3


def test_client_does_not_retry_a_bad_request(server):
    c = ChatClient(server, "", retries=3, sleep=lambda s: None)
    assert c.resolve_model() == "teacher"
    with pytest.raises(APIError, match="HTTP 400: 'max_tokens' must be in"):
        c.chat([{"role": "user", "content": "hi"}], max_tokens=0)
    assert c.requests == 2  # GET /models, then one POST


def coldstart_cmd(url: str, out: Path, n: int) -> list[str]:
    return [sys.executable, "-m", "mmr1.cli", "data", "coldstart", "data.train=world:counting", f"data.train_size={n}",
            "data.world_seed=3", "coldstart.teacher=api", f"coldstart.base_url={url}", "coldstart.max_tokens=8",
            "coldstart.concurrency=2", "coldstart.retries=2", "coldstart.backoff=0.1", "logging.progress=false",
            "--out", str(out)]


def test_api_teacher_over_http_killed_midway_then_completed(server, tmp_path):
    out = tmp_path / "cold.jsonl"
    status = tmp_path / "cold.jsonl.status.jsonl"
    n = 16
    proc = subprocess.Popen(coldstart_cmd(server, out, n), stderr=subprocess.PIPE, stdout=subprocess.PIPE,
                            text=True, start_new_session=True)
    deadline = time.time() + 120
    while time.time() < deadline and (not status.exists() or len(status.read_text().splitlines()) < 3):
        time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGKILL)  # no clean-up at all
    proc.wait()
    done_before = read_jsonl_ids(status)
    assert 3 <= len(done_before) < n, "the kill should land midway"
    res = subprocess.run(coldstart_cmd(server, out, n), capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr
    stats = json.loads((tmp_path / "cold.jsonl.stats.json").read_text())
    kept, dropped, failed = stats["kept"], sum(stats["dropped"].values()), stats["failed"]
    assert "Table 4" in res.stdout
    usage = stats["teacher_usage_this_run"]  # the rerun's own requests, tokens as the server counted them
    assert usage["mllm"]["requests"] >= 2 * (n - len(done_before)) and usage["reasoner"]["completion_tokens"] > 0
    rows = [json.loads(line) for line in status.read_text().splitlines()]
    ids = [r["id"] for r in rows]
    assert len(ids) == len(set(ids)) == n and failed == 0  # every sample once, none lost
    assert {i: r for i, r in done_before.items()} == {r["id"]: r for r in rows if r["id"] in done_before}
    assert kept + dropped == n
    # the tiny random model cannot count: its samples are dropped, each with its reason
    assert all(r["status"] == "dropped" and r["reason"] in ("no_answer", "wrong_answer") for r in rows
               if r["status"] != "kept")
