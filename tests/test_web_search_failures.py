"""The web search backend's failure path against a real local HTTP server (127.0.0.1): HTTP errors, a bad key,
an exhausted quota, timeouts and garbage replies are counted as tool failures, shown to the model as error
observations (never as "no results"), and N failures in a row stop the run with one line. FVQA's image URLs
reach the web image search; the local image search ignores them."""

from __future__ import annotations

import io
import json
import threading
import time
import urllib.parse
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from PIL import Image

from mmr1.data import load_samples
from mmr1.errors import DataError
from mmr1.tools import ToolRunner
from mmr1.tools.search import (
    CachedTool,
    ImageSearchTool,
    SearchBackendDown,
    WebSearchTool,
    format_image_results,
    raise_if_down,
)

FVQA = Path(__file__).parent / "fixtures" / "mmsearch_r1_mini_data.pq"


class Serp(BaseHTTPRequestHandler):
    """SerpApi's /search.json; what it does is chosen by the api_key the client sends."""

    def log_message(self, *a):
        pass

    def _send(self, code: int, body: bytes, ctype: str = "application/json"):
        self.send_response(code)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        try:
            self.wfile.write(body)
        except (BrokenPipeError, ConnectionResetError):  # the client gave up (the timeout case)
            pass

    def do_GET(self):
        url = urllib.parse.urlparse(self.path)
        q = dict(urllib.parse.parse_qsl(url.query))
        self.server.seen.append(q)
        if url.path.startswith("/thumb/"):
            buf = io.BytesIO()
            Image.new("RGB", (12, 12), (200, 30, 30)).save(buf, format="PNG")
            return self._send(200, buf.getvalue(), "image/png")
        base = f"http://127.0.0.1:{self.server.server_port}"
        mode = q.get("api_key", "").split("-")[1]  # keys read sk-<mode>-7c1e
        if mode == "bad":
            return self._send(401, json.dumps({"error": "Invalid API key. Your API key should be here: "
                                                        "https://serpapi.com/manage-api-key"}).encode())
        if mode == "quota":
            return self._send(429, json.dumps({"error": "Your account has run out of searches."}).encode())
        if mode == "down":
            return self._send(503, b"Service Unavailable", "text/plain")
        if mode == "slow":
            time.sleep(1.0)
        if mode == "garbage":
            return self._send(200, b"\x89PNG\r\n not json at all", "application/json")
        if mode == "wrongshape":
            return self._send(200, json.dumps({"visual_matches": "none"}).encode())
        if mode == "empty":
            return self._send(200, json.dumps({"error": "Google Lens hasn't returned any results for this query."})
                              .encode())
        vm = [{"position": 1, "title": f"Match for {q.get('url')}", "thumbnail": f"{base}/thumb/1.png"}]
        return self._send(200, json.dumps({"visual_matches": vm}).encode())


@pytest.fixture
def serp():
    srv = ThreadingHTTPServer(("127.0.0.1", 0), Serp)
    srv.daemon_threads, srv.seen = True, []
    th = threading.Thread(target=srv.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    th.start()
    yield srv, f"http://127.0.0.1:{srv.server_port}/search.json"
    srv.shutdown()
    srv.server_close()


URLS = [f"https://upload.wikimedia.org/wikipedia/commons/{i}/{i}a/Entity_{i}.jpg" for i in range(5)]


def _fvqa_with_urls(path: Path, urls) -> Path:
    """The real MMSearch-R1 rows (their `image_urls` column is null in the released mini file) with URLs set."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    rows = pq.read_table(FVQA).to_pylist()
    for r, u in zip(rows, urls):
        r["image_urls"] = [u]
    pq.write_table(pa.Table.from_pylist(rows), path)
    return path


@pytest.fixture(scope="module")
def fvqa(tmp_path_factory):
    return load_samples(_fvqa_with_urls(tmp_path_factory.mktemp("fvqa") / "fvqa.pq", URLS)).samples


def lens(url, monkeypatch, key, **kw):
    monkeypatch.setenv("SERPAPI_API_KEY", f"sk-{key}-7c1e")
    kw = {"k": 1, "retries": 0, "http_timeout_s": 0.3, "backoff": 0.0, "reader_url": None, **kw}
    return WebSearchTool("image", serpapi_url=url, **kw)


def test_fvqa_rows_keep_their_image_urls(fvqa):
    assert [s.meta["image_urls"] for s in fvqa] == [[u] for u in URLS]
    assert all(s.meta["image_urls"] is None for s in load_samples(FVQA).samples)  # the released file: null


def test_the_web_image_search_sends_the_rows_url_and_the_local_one_ignores_it(serp, fvqa, monkeypatch, tmp_path):
    srv, url = serp
    tool = lens(url, monkeypatch, "good")
    runner = ToolRunner([tool], timeout_s=5)
    image = fvqa[0].load_images()
    (out,) = runner.run([("image_search", "<img>", image, fvqa[0])])
    assert out.ok and f"Match for {fvqa[0].meta['image_urls'][0]}" in out.result.text
    assert srv.seen[0]["url"] == fvqa[0].meta["image_urls"][0] and srv.seen[0]["engine"] == "google_lens"
    # cached, the URL still reaches the tool and keys the entry
    cached = CachedTool(tool, tmp_path / "cache")
    a = cached("<img>", images=image, context=fvqa[0])
    b = cached("<img>", images=image, context=fvqa[1])
    assert a.text != b.text and cached.stats()["misses"] == 2
    assert cached("<img>", images=image, context=fvqa[0]).text == a.text and cached.stats()["hits"] == 1

    class Index:  # the local tool's index: the URL never reaches it (it takes no context)
        def search_image(self, img, k):
            return []

    local = ToolRunner([ImageSearchTool(Index(), 1)], timeout_s=5)
    with_ctx, = local.run([("image_search", "<img>", image, fvqa[0])])
    without, = local.run([("image_search", "<img>", image)])
    assert with_ctx.ok and with_ctx.result.text == without.result.text == format_image_results([])


@pytest.mark.parametrize("key, kind, detail", [
    ("bad", "bad key", "HTTP 401: Invalid API key"),
    ("quota", "quota", "HTTP 429: Your account has run out of searches"),
    ("down", "HTTP error", "HTTP 503"),
    ("slow", "timeout", "timed out after 0.3 s"),
    ("garbage", "garbage", "the reply is not JSON"),
    ("wrongshape", "garbage", "'visual_matches' is a str, not a list"),
])
def test_each_failure_is_counted_and_shown_as_an_error(serp, fvqa, monkeypatch, key, kind, detail):
    _, url = serp
    tool = lens(url, monkeypatch, key)
    runner = ToolRunner([tool], timeout_s=5)
    (out,) = runner.run([("image_search", "<img>", fvqa[0].load_images(), fvqa[0])])
    assert not out.ok and runner.stats["image_search"].failures == 1
    assert f"SerpApi {kind}: {detail}" in out.error_text and out.error_text.startswith("[image_search error:")
    assert "no matching images" not in out.error_text and f"sk-{key}-7c1e" not in out.error_text
    assert tool.errors_by_kind == {kind: 1} and tool.failures_in_a_row == 1 and tool.down is None


def test_no_results_is_a_result_not_an_error(serp, fvqa, monkeypatch):
    _, url = serp
    runner = ToolRunner([lens(url, monkeypatch, "empty")], timeout_s=5)
    (out,) = runner.run([("image_search", "<img>", fvqa[0].load_images(), fvqa[0])])
    assert out.ok and out.result.text == format_image_results([]) and runner.stats["image_search"].failures == 0


def test_n_failures_in_a_row_stop_the_run_with_one_line(serp, fvqa, monkeypatch, tmp_path):
    srv, url = serp
    tool = lens(url, monkeypatch, "bad", max_consecutive_failures=3)
    runner = ToolRunner([tool], timeout_s=5)
    call = [("image_search", "<img>", fvqa[0].load_images(), fvqa[0])]
    for _ in range(2):
        runner.run(call)
    raise_if_down([tool])  # two in a row: still up
    monkeypatch.setenv("SERPAPI_API_KEY", "sk-good-7c1e")
    assert runner.run(call)[0].ok and tool.failures_in_a_row == 0  # a success resets the count
    monkeypatch.setenv("SERPAPI_API_KEY", "sk-bad-7c1e")
    for _ in range(3):
        runner.run(call)
    with pytest.raises(SearchBackendDown) as e:
        raise_if_down([CachedTool(tool, tmp_path / "cache")])  # seen through the cache wrapper too
    line = str(e.value)
    assert "\n" not in line and line.startswith("image_search: the web search backend (SerpApi at 127.0.0.1:")
    assert "failed 3 times in a row" in line and "bad key: HTTP 401" in line
    # once down it stops calling the backend: the next call fails at once, without a request
    n = len(srv.seen)
    (out,) = runner.run(call)
    assert not out.ok and len(srv.seen) == n and runner.stats["image_search"].failures == 6


def test_a_malformed_fvqa_url_names_the_row_and_field(tmp_path):
    _fvqa_with_urls(tmp_path / "bad.pq", [URLS[0], "htp:/broken url.jpg", *URLS[2:]])
    with pytest.raises(DataError, match=r"bad.pq:2 field 'image_urls\[0\]': not an http\(s\) URL: 'htp:/broken url.jpg'"):
        load_samples(tmp_path / "bad.pq")
    res = load_samples(tmp_path / "bad.pq", on_error="skip")
    assert len(res.samples) == 4 and res.n_bad == 1


def test_tool_errors_metric_counts_failed_calls(fvqa):
    from types import SimpleNamespace

    from mmr1.rollout.agent import ToolCall, Trajectory
    from mmr1.train.agent_grpo import trajectory_metrics

    def traj(*statuses):
        return Trajectory(0, 0, [], tool_calls=[ToolCall(1, tool, "q", st) for tool, st in statuses])

    trajs = [traj(("image_search", "error"), ("text_search", "ok")), traj(("text_search", "error")),
             traj(("image_search", "ok"), ("image_search", "refused"))]
    score = SimpleNamespace(reward=0.0, correct=False, format=True)
    m = trajectory_metrics(trajs, fvqa[:3], [score] * 3)
    assert m["tool/errors"] == 2 and m["tool/image_search/failures"] == 1 and m["tool/text_search/failures"] == 1
