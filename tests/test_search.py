"""Search tools of the MMSearch-R1 recipe: BM25, the local multimodal index, the embedders, the Tool
wrappers, the disk cache, and the web pipeline against a local imitation of SerpApi / Jina / an LLM."""

from __future__ import annotations

import io
import json
import logging
import math
import threading
import time
import urllib.parse
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import numpy as np
import pytest
from PIL import Image, ImageDraw

from mmr1.clients import ChatClient
from mmr1.errors import DataError, ModelError
from mmr1.tools import IMAGE_MARKER, ToolResult, ToolRunner, validate_result
from mmr1.tools.embedders import ClipEmbedder, ColorGridEmbedder, embedder_from_spec, tokenize
from mmr1.tools.index import BM25, SearchIndex, SearchIndexError, build_index, build_index_from_jsonl
from mmr1.tools.search import (CachedTool, ImageSearchTool, RateLimiter, SearchError, TextSearchTool,
                               WebSearchTool, image_hash, make_search_tools)

# ------------------------------------------------------------------------------------------- BM25


def test_bm25_golden_scores():
    # Lucene's BM25 (bm25s method="lucene"): idf(q) * tf / (tf + K(D)), no (k1 + 1) factor (it ranks the same).
    # d0 = "the cat sat" (|D|=3), d1 = "the dog sat on the mat" (|D|=6), d2 = "cat cat dog" (|D|=3)
    # N = 3, avgdl = 12/3 = 4, k1 = 1.5, b = 0.75, idf(q) = ln(1 + (N - n + 0.5) / (n + 0.5))
    # length norm K(D) = k1 * (1 - b + b*|D|/avgdl):  K(3) = 1.5*(0.25 + 0.5625) = 1.21875
    #                                                  K(6) = 1.5*(0.25 + 1.125)  = 2.0625
    # idf(cat) (n=2) = ln(1 + 1.5/2.5) = ln(1.6);  idf(mat) (n=1) = ln(1 + 2.5/1.5) = ln(8/3)
    # query "cat mat":
    #   d0: ln(1.6) * 1/(1 + 1.21875)              = ln(1.6) / 2.21875   ~= 0.211833
    #   d1: ln(8/3) * 1/(1 + 2.0625)               = ln(8/3) / 3.0625    ~= 0.320271
    #   d2: ln(1.6) * 2/(2 + 1.21875)              = ln(1.6) * 2/3.21875 ~= 0.292041
    # ranking d1 > d2 > d0; "the" (n=2, tf(d1)=2) adds idf(the)*2/(2+2.0625) to d1 for "the".
    docs = ["the cat sat", "the dog sat on the mat", "cat cat dog"]
    bm = BM25.fit([tokenize(d) for d in docs])
    want = [math.log(1.6) / 2.21875, math.log(8 / 3) / 3.0625, math.log(1.6) * 2 / 3.21875]
    np.testing.assert_allclose(bm.scores("cat mat"), want, rtol=1e-6)  # bm25s stores float32
    np.testing.assert_allclose(want, [0.211833, 0.320271, 0.292041], atol=1e-6)
    assert [d for d, _ in bm.search("Cat, MAT!", 3)] == [1, 2, 0]
    np.testing.assert_allclose(bm.scores("the")[1], math.log(1.6) * 2 / 4.0625, rtol=1e-6)
    assert bm.search("zebra", 3) == []  # no term known: no hits (not three zero-score ones)
    assert bm.scores("cat cat")[0] == pytest.approx(2 * want[0])  # query repeats count
    assert BM25.fit([]).search("cat", 3) == []


# -------------------------------------------------------------------------------------- synthetic


def synthetic_image(rng: np.random.Generator) -> Image.Image:
    w, h = (int(x) for x in rng.integers(96, 160, size=2))
    im = Image.new("RGB", (w, h), tuple(int(c) for c in rng.integers(0, 256, 3)))
    d = ImageDraw.Draw(im)
    for _ in range(int(rng.integers(3, 7))):
        x0, y0 = int(rng.integers(0, w - 20)), int(rng.integers(0, h - 20))
        box = (x0, y0, x0 + int(rng.integers(15, w // 2 + 16)), y0 + int(rng.integers(15, h // 2 + 16)))
        fill = tuple(int(c) for c in rng.integers(0, 256, 3))
        (d.rectangle if rng.random() < 0.5 else d.ellipse)(box, fill=fill)
    return im


def jpeg(im: Image.Image, quality: int) -> Image.Image:
    buf = io.BytesIO()
    im.save(buf, format="JPEG", quality=quality)
    return Image.open(io.BytesIO(buf.getvalue())).convert("RGB")


def variants(im: Image.Image) -> dict[str, Image.Image]:
    w, h = im.size
    dx, dy = max(2, w // 30), max(2, h // 30)
    return {
        "shifted": im.crop((dx, dy, w, h)).resize((w, h), Image.BILINEAR),  # content moved by ~3%
        "resized": im.resize((int(w * 0.6), int(h * 0.6)), Image.LANCZOS),
        "upscaled": im.resize((int(w * 1.7), int(h * 1.3)), Image.BICUBIC),  # aspect changed too
        "jpeg": jpeg(im, 40),
        "all": jpeg(im.crop((dx, 0, w, h - dy)).resize((int(w * 0.8), int(h * 0.8))), 60),
    }


WORDS = ("tower bridge river castle mountain lake temple market statue palace garden harbour museum "
         "cathedral forest desert island canyon volcano glacier").split()


@pytest.fixture(scope="module")
def corpus():
    rng = np.random.default_rng(0)
    recs = []
    for i in range(300):
        a, b = WORDS[i % len(WORDS)], WORDS[(i * 7 + 3) % len(WORDS)]
        recs.append({"id": f"rec-{i}", "image": synthetic_image(rng), "title": f"The {a} of {b} number {i}",
                     "text": f"A page about the {a} near the {b}. Entity {i} is famous. " + "filler " * (i % 5)})
    return recs


@pytest.fixture(scope="module")
def index(corpus, tmp_path_factory):
    out = tmp_path_factory.mktemp("idx") / "index"
    report = build_index(corpus, out, ColorGridEmbedder(), chunk_size=128)
    assert (report.records, report.images, report.skipped) == (300, 300, 0)
    return SearchIndex.load(out)


# ---------------------------------------------------------------------------------------- indexes


def test_near_duplicates_retrieve_their_original(corpus, index):
    misses = []
    for i in range(0, 300, 3):
        for kind, v in variants(corpus[i]["image"]).items():
            hits = index.search_image(v, k=3)
            if hits[0].id != f"rec-{i}":
                misses.append((i, kind, [h.id for h in hits]))
    assert not misses, misses[:5]
    hits = index.search_image(corpus[5]["image"], k=5)
    assert hits[0].id == "rec-5" and hits[0].score == pytest.approx(1.0, abs=1e-3)
    assert [h.rank for h in hits] == [1, 2, 3, 4, 5] and hits[0].score >= hits[1].score


def test_build_load_round_trip(corpus, index, tmp_path):
    assert len(index) == 300 and index.meta["embedder"]["type"] == "color-grid"
    rec = index.get("rec-42")
    assert rec["title"] == corpus[42]["title"]
    # self-contained: thumbnails live inside the index directory
    hit = index.search_image(corpus[42]["image"], 1)[0]
    assert hit.thumbnail.startswith(str(index.path)) and max(hit.image().size) <= 256
    # text search, three modes
    bm = index.search_text("entity 42 famous", 3)
    assert bm[0].id == "rec-42" and bm[0].score > bm[1].score
    assert index.search_text("Entity 42", 1, mode="dense")[0].id == "rec-42"
    assert index.search_text("entity 42", 2, mode="hybrid")[0].id == "rec-42"
    assert index.search_text("   ", 3) == [] and index.search_text("qqqzzz", 3) == []
    with pytest.raises(ValueError, match="mode"):
        index.search_text("x", mode="fuzzy")
    # the index directory is replaced only on request
    with pytest.raises(SearchIndexError, match="already exists"):
        build_index(corpus[:3], index.path, ColorGridEmbedder())
    # a JSONL corpus with relative image paths; a text-only record has no thumbnail
    (tmp_path / "img").mkdir()
    lines = []
    for i in range(3):
        corpus[i]["image"].save(tmp_path / "img" / f"{i}.png")
        lines.append({"id": f"j{i}", "image": f"img/{i}.png", "title": f"T{i}", "text": f"page {i}"})
    lines.append({"id": "txt", "title": "Text only", "text": "no picture here"})
    (tmp_path / "c.jsonl").write_text("\n".join(json.dumps(x) for x in lines) + "\n")
    rep = build_index_from_jsonl(tmp_path / "c.jsonl", tmp_path / "out", "builtin")
    assert (rep.records, rep.images) == (4, 3)
    small = SearchIndex.load(tmp_path / "out")
    assert small.search_image(corpus[1]["image"], 1)[0].id == "j1"
    assert small.search_text("picture", 1)[0].id == "txt" and small.search_text("picture", 1)[0].thumbnail is None
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == sorted(
        ["bm25", "image.faiss", "image_rows.npy", "meta.json", "records.jsonl", "text.faiss", "thumbs"])


def test_bad_records_name_record_and_field(tmp_path, corpus):
    bad = tmp_path / "broken.jpg"
    bad.write_bytes(b"\xff\xd8\xff not really a jpeg")
    recs = [{"id": f"r{i}", "image": corpus[i]["image"], "title": f"t{i}", "text": "x"} for i in range(6)]
    recs[3]["image"] = str(bad)
    with pytest.raises(DataError) as e:
        build_index(recs, tmp_path / "a", ColorGridEmbedder(), chunk_size=2)
    msg = str(e.value)
    assert "'r3'" in msg and "field 'image'" in msg and "broken.jpg" in msg and e.value.field == "image"
    assert not (tmp_path / "a").exists()  # atomic: nothing half-built at the destination
    # a missing title / an empty text
    for fld, val, want in (("title", None, "title is missing"), ("text", "  ", "text is empty")):
        rr = [dict(r) for r in recs[:3]]
        rr[1][fld] = val
        with pytest.raises(DataError, match=want) as e:
            build_index(rr, tmp_path / "b", ColorGridEmbedder())
        assert "'r1'" in str(e.value) and e.value.field == fld
    # skip: counted, reasons kept
    recs[4] = dict(recs[4], title=None)
    rep = build_index(recs, tmp_path / "c", ColorGridEmbedder(), on_error="skip", chunk_size=2)
    assert (rep.records, rep.skipped) == (4, 2) and "'r3'" in rep.skip_reasons[0]
    meta = json.loads((tmp_path / "c" / "meta.json").read_text())
    assert meta["skipped"] == 2 and len(list((tmp_path / "c" / "thumbs").iterdir())) == 4


def test_build_resumes_committed_chunks(tmp_path, corpus):
    recs = [{"id": f"r{i}", "image": corpus[i]["image"], "title": f"t{i}", "text": f"page {i}"} for i in range(10)]
    broken = [dict(r) for r in recs]
    broken[7]["text"] = None
    with pytest.raises(DataError):
        build_index(broken, tmp_path / "ix", ColorGridEmbedder(), chunk_size=3)
    assert not (tmp_path / "ix").exists() and (tmp_path / "ix.partial").exists()
    rep = build_index(recs, tmp_path / "ix", ColorGridEmbedder(), chunk_size=3)
    assert rep.reused_chunks == 2 and rep.records == 10  # chunks [0-2] and [3-5] were committed
    assert not (tmp_path / "ix.partial").exists()
    ix = SearchIndex.load(tmp_path / "ix")
    assert [ix.search_image(recs[i]["image"], 1)[0].id for i in range(10)] == [f"r{i}" for i in range(10)]
    # overwrite swaps the whole directory
    rep = build_index(recs[:4], tmp_path / "ix", ColorGridEmbedder(), overwrite=True)
    assert len(SearchIndex.load(tmp_path / "ix")) == 4 and rep.reused_chunks == 0
    with pytest.raises(SearchIndexError, match="not a search index"):
        SearchIndex.load(tmp_path / "nowhere")


# ------------------------------------------------------------------------------------------ tools


def test_local_tools_follow_the_tool_protocol(corpus, index):
    img_tool, txt_tool = ImageSearchTool(index, k=5), TextSearchTool(index, k=3, max_chars=40)
    res = img_tool("<img>", images=[variants(corpus[9]["image"])["jpeg"], corpus[0]["image"]])
    assert validate_result(res) is None and len(res.images) == 5 == res.text.count(IMAGE_MARKER)
    assert res.text.splitlines()[1] == f"1. {IMAGE_MARKER} {corpus[9]['title']}"
    res = txt_tool("entity 9 famous", images=[])
    assert validate_result(res) is None and res.images == [] and corpus[9]["title"] in res.text
    pages = res.text.split("\n\n")[1:]
    assert len(pages) == 3 and all(len(p.split("\n", 1)[1]) <= 40 for p in pages)
    runner = ToolRunner([img_tool, txt_tool], timeout_s=10)
    out = runner.run([("image_search", "<img>", []), ("text_search", "museum", [])])
    assert out[0].error_text.startswith("[image_search error: raised ValueError: no image") and out[1].ok
    runner.close()


class CountingTool:
    name = "image_search"

    def __init__(self):
        self.calls = 0

    def __call__(self, query, *, images):
        self.calls += 1
        if query == "fail":
            return ToolResult("[image_search error: backend down]")
        c = (self.calls * 40 % 256, 10, 200)
        return ToolResult(f"1. {IMAGE_MARKER} {query} #{self.calls}", [Image.new("RGB", (8, 6), c)])


def test_cache_replays_without_calling_the_backend(tmp_path):
    a, b = Image.new("RGB", (20, 20), (1, 2, 3)), Image.new("RGB", (20, 20), (3, 2, 1))
    inner = CountingTool()
    cached = CachedTool(inner, tmp_path / "cache")
    first = cached("eiffel", images=[a])
    again = cached("eiffel", images=[a.copy()])  # same pixels, another object
    assert inner.calls == 1 and again.text == first.text
    assert np.array_equal(np.asarray(again.images[0]), np.asarray(first.images[0]))
    cached("eiffel", images=[b])  # another image: another key
    cached("louvre", images=[a])
    assert inner.calls == 3 and cached.stats() == {"hits": 1, "misses": 3, "stored": 3}
    # a resumed run: a fresh wrapper over the same directory and a backend that must not be called
    inner2 = CountingTool()
    resumed = CachedTool(inner2, tmp_path / "cache")
    for q, im in (("eiffel", a), ("eiffel", b), ("louvre", a)):
        assert validate_result(resumed(q, images=[im])) is None
    assert inner2.calls == 0 and resumed.hits == 3 and resumed("eiffel", images=[a]).text == first.text
    # errors are not stored: the next call tries again
    resumed("fail", images=[a])
    resumed("fail", images=[a])
    assert inner2.calls == 2 and resumed.stored == 0
    assert image_hash(a) == image_hash(a.copy()) != image_hash(b)


def test_make_search_tools_local(index, tmp_path):
    tools = make_search_tools(index, k=2, cache_dir=tmp_path / "c")
    assert [t.name for t in tools] == ["image_search", "text_search"]
    assert all(isinstance(t, CachedTool) for t in tools) and tools[1].uses_images is False


# ------------------------------------------------------------------------------------------- CLIP


def tiny_clip(path):
    from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel, CLIPProcessor, CLIPTokenizer

    vocab = {"<|startoftext|>": 0, "<|endoftext|>": 1}
    for ch in "abcdefghijklmnopqrstuvwxyz0123456789":
        vocab[ch] = len(vocab)
        vocab[ch + "</w>"] = len(vocab)
    tok = CLIPTokenizer(vocab=vocab, merges=[])
    proc = CLIPProcessor(image_processor=CLIPImageProcessor(size={"shortest_edge": 32},
                                                            crop_size={"height": 32, "width": 32}), tokenizer=tok)
    cfg = CLIPConfig(
        text_config=dict(vocab_size=len(vocab), hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                         num_attention_heads=2, max_position_embeddings=32, bos_token_id=0, eos_token_id=1,
                         pad_token_id=1),
        vision_config=dict(hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2,
                           image_size=32, patch_size=8),
        projection_dim=8)
    import torch

    torch.manual_seed(0)
    CLIPModel(cfg).save_pretrained(path)
    proc.save_pretrained(path)
    return path


def test_clip_embedder_from_a_local_checkpoint(tmp_path, corpus):
    emb = ClipEmbedder(tiny_clip(tmp_path / "clip"))
    assert emb._model is None  # lazy
    imgs = [corpus[i]["image"] for i in range(8)]
    v = emb.embed_images(imgs)
    assert v.shape == (8, 8) and np.allclose(np.linalg.norm(v, axis=1), 1, atol=1e-5)
    t = emb.embed_texts(["a tower", "the castle by the lake"])
    assert t.shape == (2, 8) and np.allclose(np.linalg.norm(t, axis=1), 1, atol=1e-5)
    recs = [{"id": f"c{i}", "image": im, "title": f"t{i}", "text": f"page {i}"} for i, im in enumerate(imgs)]
    build_index(recs, tmp_path / "ix", emb)
    ix = SearchIndex.load(tmp_path / "ix")  # rebuilds the embedder from meta.json's spec
    assert isinstance(ix.embedder, ClipEmbedder) and ix.meta["image_dim"] == 8 and ix.meta["text_dim"] == 8
    assert [ix.search_image(im, 1)[0].id for im in imgs] == [r["id"] for r in recs]
    assert len(ix.search_text("page 3", 2, mode="dense")) == 2
    with pytest.raises(ModelError, match="not a local directory"):
        ClipEmbedder(tmp_path / "missing").embed_images(imgs[:1])
    assert isinstance(embedder_from_spec(ColorGridEmbedder(size=32).spec()), ColorGridEmbedder)


# ---------------------------------------------------------------------------------------- web tool

KEY = "sk-SERP-SECRET-0123456789"


class FakeWeb(BaseHTTPRequestHandler):
    """SerpApi (/search.json), Jina Reader (/reader/<url>), thumbnails (/thumb/N.png) and an
    OpenAI-compatible chat endpoint (/v1/chat/completions), with switchable failures."""

    def log_message(self, *a):
        pass

    def _send(self, code: int, body: bytes, ctype: str = "application/json"):
        self.send_response(code)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self):
        st = self.server.state
        st["requests"].append(self.path)
        base = f"http://127.0.0.1:{self.server.server_port}"
        url = urllib.parse.urlparse(self.path)
        if url.path == "/search.json":
            q = dict(urllib.parse.parse_qsl(url.query))
            mode = st["serp"]
            if mode == "500" or (mode == "500once" and st.setdefault("failed", 0) < 1):
                st["failed"] = st.get("failed", 0) + 1
                return self._send(500, json.dumps({"error": f"internal error handling {self.path}"}).encode())
            if mode == "slow":
                time.sleep(0.6)
            if mode == "badjson":
                return self._send(200, b"<html>this is not json</html>", "text/html")
            if q.get("engine") == "google_lens":
                vm = [{"position": 1, "title": "Broken thumb", "thumbnail": f"{base}/thumb/missing.png"}]
                vm += [{"position": i + 2, "title": f"Lens match {i}", "link": f"{base}/p{i}",
                        "thumbnail": f"{base}/thumb/{i}.png"} for i in range(7)]
                return self._send(200, json.dumps({"search_metadata": {"status": "Success"},
                                                   "visual_matches": vm}).encode())
            org = [{"position": i + 1, "title": f"Result {i} for {q['q']}", "link": f"{base}/page/{i}",
                    "snippet": f"snippet {i}"} for i in range(int(q.get("num", 10)))]
            return self._send(200, json.dumps({"organic_results": org}).encode())
        if url.path.startswith("/reader/"):
            target = self.path[len("/reader/"):]
            if target.endswith("/page/1"):
                return self._send(503, b"reader down", "text/plain")
            return self._send(200, f"Title: page\n\nFull text of {target}. ".encode() * 3, "text/plain")
        if url.path.startswith("/thumb/") and url.path != "/thumb/missing.png":
            n = int(url.path.split("/")[-1].split(".")[0])
            buf = io.BytesIO()
            Image.new("RGB", (40, 30), (n * 30, 100, 50)).save(buf, format="PNG")
            return self._send(200, buf.getvalue(), "image/png")
        return self._send(404, b"not found", "text/plain")

    def do_POST(self):
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        self.server.state["chats"].append(body)
        prompt = body["messages"][0]["content"]
        page = prompt.split("Page content:\n", 1)[1]
        reply = {"choices": [{"message": {"role": "assistant", "content": "SUMMARY " + page[:40]},
                              "finish_reason": "stop"}], "usage": {"prompt_tokens": 5, "completion_tokens": 3}}
        self._send(200, json.dumps(reply).encode())


@pytest.fixture
def web(monkeypatch):
    srv = ThreadingHTTPServer(("127.0.0.1", 0), FakeWeb)
    srv.daemon_threads = True
    srv.state = {"serp": "ok", "requests": [], "chats": []}
    th = threading.Thread(target=srv.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    th.start()
    monkeypatch.setenv("SERPAPI_API_KEY", KEY)
    monkeypatch.delenv("JINA_API_KEY", raising=False)
    base = f"http://127.0.0.1:{srv.server_port}"
    yield srv, base
    srv.shutdown()
    srv.server_close()


def web_tool(base, mode="text", **kw):
    kw = {"retries": 0, "http_timeout_s": 2.0, "backoff": 0.0, "errors": "result", **kw}
    return WebSearchTool(mode, k=3, serpapi_url=f"{base}/search.json", reader_url=f"{base}/reader/", **kw)


def no_key_anywhere(texts, caplog):
    for t in texts:
        assert KEY not in t
    for r in caplog.records:
        assert KEY not in r.getMessage()


def test_web_text_search_reads_and_summarises(web, caplog):
    srv, base = web
    caplog.set_level(logging.DEBUG, logger="mmr1.tools.search")
    chat = ChatClient(f"{base}/v1", model="summariser", retries=0)
    tool = web_tool(base, summarizer=chat, max_chars=200)
    res = tool("who built it", images=[])
    assert validate_result(res) is None and res.images == []
    pages = res.text.split("\n\n")[1:]
    assert len(pages) == 3 and pages[0].startswith("1. Result 0 for who built it\nSUMMARY Title: page")
    assert pages[1].endswith("snippet 1")  # its page could not be read: the snippet stands in
    assert len(srv.state["chats"]) == 2 and "Query: who built it" in srv.state["chats"][0]["messages"][0]["content"]
    assert any(f"api_key={KEY}" in p for p in srv.state["requests"])  # the key was sent...
    no_key_anywhere([res.text, repr(tool)], caplog)  # ...and shows up nowhere else
    # without a summariser the page text itself, cut to max_chars
    res = web_tool(base, max_chars=30)("q", images=[])
    assert "Full text of" in res.text and all(len(p.split("\n", 1)[1]) <= 30 for p in res.text.split("\n\n")[1:])


def test_web_image_search_returns_thumbnails(web, caplog):
    srv, base = web
    caplog.set_level(logging.DEBUG, logger="mmr1.tools.search")
    q = Image.new("RGB", (10, 10))
    q.info["url"] = "https://example.org/question.jpg"
    res = web_tool(base, "image")("<img>", images=[q])
    assert validate_result(res) is None and len(res.images) == 3 == res.text.count(IMAGE_MARKER)
    assert "Lens match 0" in res.text and "Broken thumb" not in res.text  # an unfetchable thumbnail is skipped
    lens = [p for p in srv.state["requests"] if "google_lens" in p][0]
    assert "url=https%3A%2F%2Fexample.org%2Fquestion.jpg" in lens
    no_key_anywhere([res.text], caplog)
    res = web_tool(base, "image")("<img>", images=[Image.new("RGB", (10, 10))])  # no URL to search with
    assert res.text.startswith("[image_search error: no URL for the question image")


@pytest.mark.parametrize("failure, expect", [("500", "SerpApi HTTP error: HTTP 500"), ("slow", "timed out after 0.2 s"),
                                             ("badjson", "the reply is not JSON")])
def test_web_errors_come_back_as_error_results(web, caplog, failure, expect):
    srv, base = web
    caplog.set_level(logging.DEBUG, logger="mmr1.tools.search")
    srv.state["serp"] = failure
    tool = web_tool(base, retries=1, http_timeout_s=0.2)
    res = tool("anything", images=[])
    assert res.images == [] and res.text.startswith("[text_search error: ") and expect in res.text, res.text
    if failure == "500":
        assert "api_key=***" in res.text  # the server echoed the request URL: redacted
        assert len(srv.state["requests"]) == 2  # retried once
    no_key_anywhere([res.text], caplog)
    with pytest.raises(SearchError) as e:
        web_tool(base, retries=0, http_timeout_s=0.2, errors="raise")("anything", images=[])
    assert KEY not in str(e.value)


def test_web_retry_rate_limit_and_missing_key(web, monkeypatch, caplog):
    srv, base = web
    srv.state["serp"] = "500once"
    tool = web_tool(base, retries=2, min_interval_s=0.05)
    t0 = time.monotonic()
    res = tool("eiffel", images=[])
    assert res.text.startswith('Text search results for "eiffel"') and srv.state["failed"] == 1
    assert time.monotonic() - t0 >= 0.05 * (tool.requests - 1) * 0.9  # requests were spaced
    slept = []
    lim = RateLimiter(1.0, clock=lambda: 10.0, sleep=slept.append)
    lim.wait(), lim.wait(), lim.wait()
    assert slept == [1.0, 2.0]
    monkeypatch.delenv("SERPAPI_API_KEY")
    res = web_tool(base)("eiffel", images=[])
    assert res.text == "[text_search error: no SerpApi key: set the environment variable SERPAPI_API_KEY]"


def test_build_index_command_over_the_entity_world(tmp_path):
    from mmr1.cli import main
    from mmr1.data.worlds import entities
    from mmr1.tools.index import SearchIndex

    out = tmp_path / "idx"
    assert main(["search", "build-index", "world:entities", str(out)]) == 0
    idx = SearchIndex.load(out)
    first = entities.corpus()[0]
    assert idx.search_image(first["image"], 1)[0].id == first["id"]
    assert idx.search_text(first["title"], 1)[0].id == first["id"]
