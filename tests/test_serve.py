"""`mmr1 serve`: an OpenAI-compatible chat-completions server over a real tiny model, over real HTTP."""

import base64
import io
import json
import subprocess
import sys
import threading
import urllib.error
import urllib.request

import pytest

from .conftest import solid_image
from mmr1.models import load_model
from mmr1.rollout.hf import generate
from mmr1.serve import ChatServer, make_http_server


def data_url(img) -> str:
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()


def post(url: str, body) -> tuple[int, dict]:
    data = body if isinstance(body, bytes) else json.dumps(body).encode()
    req = urllib.request.Request(url, data=data, headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=60) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read())


@pytest.fixture(scope="module")
def server(tiny_dirs):
    lm = load_model(tiny_dirs["qwen2_5_vl"])
    httpd = make_http_server(ChatServer(lm, "tiny", default_max_tokens=8), port=0)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    yield lm, f"http://127.0.0.1:{httpd.server_address[1]}/v1"
    httpd.shutdown()
    httpd.server_close()


QUESTION = "How many red objects are in the image?"


def test_greedy_reply_is_the_engine_output(server):
    lm, base = server
    img = solid_image()
    code, r = post(f"{base}/chat/completions", {
        "model": "tiny", "max_tokens": 10, "temperature": 0,
        "messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": data_url(img)}},
                                                  {"type": "text", "text": QUESTION}]}]})
    assert code == 200 and r["object"] == "chat.completion" and r["model"] == "tiny"
    expected = generate(lm, [([{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": QUESTION}]}],
                              [img])], max_new_tokens=10)[0]
    choice = r["choices"][0]
    assert choice["message"] == {"role": "assistant", "content": expected.text}
    assert choice["finish_reason"] == expected.finish_reason
    assert r["usage"]["completion_tokens"] == len(expected.token_ids)
    assert r["usage"]["prompt_tokens"] > 4 and r["usage"]["total_tokens"] == sum(
        r["usage"][k] for k in ("prompt_tokens", "completion_tokens"))


def test_sampling_n_seed_and_models(server):
    _, base = server
    body = {"model": "tiny", "max_tokens": 6, "temperature": 1.0, "n": 3, "seed": 7,
            "messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Count."}]}
    code, a = post(f"{base}/chat/completions", body)
    _, b = post(f"{base}/chat/completions", body)
    assert code == 200 and len(a["choices"]) == 3 and [c["index"] for c in a["choices"]] == [0, 1, 2]
    assert [c["message"] for c in a["choices"]] == [c["message"] for c in b["choices"]]  # same seed
    with urllib.request.urlopen(f"{base}/models", timeout=10) as r:
        assert json.loads(r.read())["data"][0]["id"] == "tiny"


@pytest.mark.parametrize("body, message", [
    (b"{not json", "not JSON"),
    ({"messages": []}, "'messages' must be a non-empty list"),
    ({"messages": [{"role": "robot", "content": "hi"}]}, r"messages\[0\]: need a 'role'"),
    ({"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "https://x/y.png"}}]}]},
     r"messages\[0\].content\[0\]: remote image URLs are not fetched"),
    ({"messages": [{"role": "user", "content": [{"type": "image_url",
                                                 "image_url": {"url": "data:image/png;base64,AAAA"}}]}]},
     r"messages\[0\].content\[0\]: not a readable image"),
    ({"messages": [{"role": "user", "content": [{"type": "audio"}]}]}, "unknown part type 'audio'"),
    ({"messages": [{"role": "user", "content": "hi"}], "max_tokens": 0}, r"'max_tokens' must be in \[1, 4096\]"),
    ({"messages": [{"role": "user", "content": "hi"}], "temperature": "hot"}, "'temperature' must be a number"),
    ({"messages": [{"role": "user", "content": "hi"}], "n": 2, "temperature": 0}, "n > 1 needs temperature > 0"),
])
def test_bad_requests_get_a_400_that_says_what_is_wrong(server, body, message):
    import re

    _, base = server
    code, r = post(f"{base}/chat/completions", body)
    assert code == 400 and r["error"]["type"] == "invalid_request_error"
    assert re.search(message, r["error"]["message"]), r["error"]["message"]


def test_unknown_route_is_a_404(server):
    _, base = server
    code, r = post(f"{base}/completions", {"prompt": "hi"})
    assert code == 404 and "/v1/chat/completions" in r["error"]["message"]


def test_serve_command_starts_a_server(tiny_dirs):
    proc = subprocess.Popen([sys.executable, "-m", "mmr1.cli", "serve", str(tiny_dirs["qwen2_vl"]), "--port", "0",
                             "--name", "teacher", "--max-tokens", "4"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        line = proc.stdout.readline()
        assert line.startswith("serving teacher at http://127.0.0.1:"), (line, proc.stderr.read())
        base = line.split()[3]
        code, r = post(f"{base}/chat/completions", {"messages": [{"role": "user", "content": "hi"}],
                                                    "temperature": 0})
        assert code == 200 and r["usage"]["completion_tokens"] <= 4 and r["model"] == "teacher"
    finally:
        proc.terminate()
        proc.wait(timeout=30)
