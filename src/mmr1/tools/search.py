"""MMSearch-R1's search tools (METHODS §4.1 step 4): image search and text search, over a local index
(the offline default) or over the web (the paper's pipeline), plus a disk cache for replayable runs.

- `ImageSearchTool(index, k=5)` ("image_search"): looks up the trajectory's first image (the
  ``images`` the agent passes; the query text, "<img>", is ignored) and returns the top-k titles, each
  with its thumbnail placed at an `IMAGE_MARKER`.
- `TextSearchTool(index, k=5, mode="bm25")` ("text_search"): returns the top-k page texts, each cut to
  `max_chars` characters.
- `CachedTool(tool, cache_dir)`: results stored on disk keyed by (tool name, query, image hash), so a
  resumed run replays identical results without calling the backend (`hits` / `misses` count).
- `WebSearchTool(mode)`: SerpApi (Google Lens for images, given an image URL; Google for text), a page
  reader (Jina Reader: GET ``https://r.jina.ai/<url>``) and an LLM summariser (`mmr1.clients.ChatClient`),
  with per-request timeouts, retries with back-off, and a minimum interval between requests. Its
  failures (HTTP errors, timeouts, quota, a bad key, garbage replies) raise `SearchError` naming the kind
  (``errors="raise"``, the default), so `ToolRunner` counts them (``tool/<name>/failures``, ``tool/errors``)
  and the model sees an error observation, never the "found no results" text; ``errors="result"`` returns
  the error text as an ordinary result instead. After `max_consecutive_failures` failures in a row the
  tool is `down`: it stops calling the backend and `raise_if_down` stops the run with one line naming the
  backend and why. The image search takes the question image's original URL from the prompt's context (a
  Sample with ``meta["image_urls"]``, as FVQA rows carry). API keys are read from environment variables at
  call time and are redacted from every returned text, exception and log message.

Local tools raise on bad input (no image, empty query); `ToolRunner` turns that into an error text.
"""

from __future__ import annotations

import hashlib
import inspect
import io
import json
import logging
import os
import re
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
import socket
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Callable, Sequence

from ..errors import MMR1Error
from . import IMAGE_MARKER, ToolResult, error_text, validate_result
from .index import Hit, SearchIndex

log = logging.getLogger(__name__)


# ----------------------------------------------------------------------------------------- helpers


def image_hash(img) -> str:
    """A content hash of a PIL image (mode, size and pixels)."""
    h = hashlib.sha256(f"{img.mode}|{img.size[0]}x{img.size[1]}|".encode())
    h.update(img.tobytes())
    return h.hexdigest()[:32]


def truncate(text: str, max_chars: int | None) -> str:
    """`text` cut to at most `max_chars` characters, at a word boundary when one is near, marked with '…'."""
    text = " ".join(text.split()) if max_chars else text
    if not max_chars or len(text) <= max_chars:
        return text
    cut = text[:max_chars - 1]
    sp = cut.rfind(" ")
    if sp >= max_chars * 0.8:
        cut = cut[:sp]
    return cut.rstrip() + "…"


def format_image_results(titles: Sequence[str]) -> str:
    """The observation text of an image search: one numbered line per result, its thumbnail at the marker."""
    if not titles:
        return "Image search found no matching images."
    lines = [f"Image search results for the question image (top {len(titles)}, most similar first):"]
    lines += [f"{i}. {IMAGE_MARKER} {t}" for i, t in enumerate(titles, 1)]
    return "\n".join(lines)


def format_text_results(query: str, pages: Sequence[tuple[str, str]]) -> str:
    """The observation text of a text search: numbered (title, content) pages."""
    if not pages:
        return f'Text search for "{query}" found no results.'
    parts = [f'Text search results for "{query}" (top {len(pages)}, most relevant first):']
    parts += [f"{i}. {title}\n{content}" for i, (title, content) in enumerate(pages, 1)]
    return "\n\n".join(parts)


def _thumb(img, size: int | None):
    img = img.convert("RGB")
    if size:
        img.thumbnail((size, size))
    return img


# ------------------------------------------------------------------------------------ local tools


class ImageSearchTool:
    """Top-k near images of the question's first image in a local `SearchIndex`: titles + thumbnails."""

    uses_images = True

    def __init__(self, index: SearchIndex, k: int = 5, *, name: str = "image_search", thumb_size: int | None = None,
                 timeout_s: float | None = None):
        self.index, self.k, self.name, self.thumb_size = index, int(k), name, thumb_size
        if timeout_s:
            self.timeout_s = float(timeout_s)

    def __call__(self, query: str, *, images: list) -> ToolResult:
        if not images:
            raise ValueError("no image to search with: image search looks up the question's image")
        hits: list[Hit] = self.index.search_image(images[0], self.k)
        hits = [h for h in hits if h.thumbnail]
        return ToolResult(format_image_results([h.title for h in hits]),
                          [_thumb(h.image(), self.thumb_size) for h in hits])


class TextSearchTool:
    """Top-k pages for a text query in a local `SearchIndex`, each cut to `max_chars` characters."""

    uses_images = False

    def __init__(self, index: SearchIndex, k: int = 5, mode: str = "bm25", *, max_chars: int | None = 1000,
                 name: str = "text_search", timeout_s: float | None = None):
        if mode not in ("bm25", "dense", "hybrid"):
            raise ValueError(f"mode must be 'bm25', 'dense' or 'hybrid', got {mode!r}")
        self.index, self.k, self.mode, self.max_chars, self.name = index, int(k), mode, max_chars, name
        if mode != "bm25" and getattr(index, "text_index", True) is None:
            raise ValueError(f"text search mode {mode!r} needs dense text embeddings, which {index.path} lacks "
                             "(its embedder cannot embed text); use mode='bm25'")
        if timeout_s:
            self.timeout_s = float(timeout_s)

    def __call__(self, query: str, *, images: list) -> ToolResult:
        if not query.strip():
            raise ValueError("empty text search query")
        hits = self.index.search_text(query, self.k, self.mode)
        return ToolResult(format_text_results(query.strip(), [(h.title, truncate(h.text, self.max_chars))
                                                              for h in hits]))


# ------------------------------------------------------------------------------------------ cache


def _is_error(tool_name: str, text: str) -> bool:
    return text.startswith(f"[{tool_name} error:")


class CachedTool:
    """`tool` with its results stored in `cache_dir`, keyed by (tool name, query, first image's hash).

    A hit replays the stored text and images (PNG, lossless) without calling the tool. Error results
    and exceptions are not stored (a resumed run retries them) unless `cache_errors`. Thread-safe.
    The image hash is left out of the key for tools that say ``uses_images = False``.
    """

    def __init__(self, tool: Any, cache_dir: str | Path, *, cache_errors: bool = False):
        self.tool, self.name = tool, tool.name
        self.uses_images = getattr(tool, "uses_images", True)
        if getattr(tool, "timeout_s", None):
            self.timeout_s = tool.timeout_s
        self.dir = Path(cache_dir) / re.sub(r"[^\w.-]", "_", self.name)
        self.dir.mkdir(parents=True, exist_ok=True)
        self.cache_errors = cache_errors
        self.hits = self.misses = self.stored = 0
        self._lock = threading.Lock()

    def key(self, query: str, images: list, url: str | None = None) -> str:
        ih = image_hash(images[0]) if self.uses_images and images else None
        parts = [self.name, query, ih] + ([url] if url else [])  # a URL-searched result depends on the URL
        return hashlib.sha256(json.dumps(parts).encode()).hexdigest()

    def _paths(self, key: str) -> tuple[Path, Path]:
        d = self.dir / key[:2]
        return d, d / f"{key}.json"

    def _load(self, key: str) -> ToolResult | None:
        d, p = self._paths(key)
        if not p.is_file():
            return None
        try:
            entry = json.loads(p.read_text(encoding="utf-8"))
            from PIL import Image

            imgs = []
            for rel in entry["images"]:
                with Image.open(d / rel) as im:
                    im.load()
                    imgs.append(im.copy())
            return ToolResult(entry["text"], imgs)
        except (OSError, ValueError, KeyError) as e:
            log.warning("cache entry %s is unreadable (%s); calling %s again", p, type(e).__name__, self.name)
            return None

    def _store(self, key: str, query: str, res: ToolResult) -> None:
        d, p = self._paths(key)
        d.mkdir(parents=True, exist_ok=True)
        names = []
        for i, im in enumerate(res.images):
            name = f"{key}-{i}.png"
            tmp = d / f".{name}.{os.getpid()}.{threading.get_ident()}"
            im.save(tmp, format="PNG")
            os.replace(tmp, d / name)
            names.append(name)
        entry = {"tool": self.name, "query": query, "text": res.text, "images": names, "created": time.time()}
        tmp = d / f".{key}.json.{os.getpid()}.{threading.get_ident()}"
        tmp.write_text(json.dumps(entry, ensure_ascii=False), encoding="utf-8")
        os.replace(tmp, p)  # the JSON last: it commits the entry

    def __call__(self, query: str, *, images: list, context: Any = None) -> ToolResult:
        """`context` reaches the wrapped tool only when it takes one (the web image search's URL)."""
        takes = "context" in inspect.signature(self.tool).parameters
        url = context_image_url(context) if takes and self.uses_images else None
        key = self.key(query, images, url)
        res = self._load(key)
        if res is not None:
            with self._lock:
                self.hits += 1
            return res
        with self._lock:
            self.misses += 1
        res = self.tool(query, images=images, **({"context": context} if takes and context is not None else {}))
        if validate_result(res) is None and (self.cache_errors or not _is_error(self.name, res.text)):
            self._store(key, query, res)
            with self._lock:
                self.stored += 1
        return res

    def stats(self) -> dict[str, int]:
        return {"hits": self.hits, "misses": self.misses, "stored": self.stored}


# -------------------------------------------------------------------------------------- web search


class SearchError(Exception):
    """A web search that failed; its message never holds an API key. `kind`: "bad key", "quota", "timeout",
    "HTTP error", "connection", "garbage" or "config"."""

    def __init__(self, message: str, kind: str = "HTTP error"):
        super().__init__(message)
        self.kind = kind


class SearchBackendDown(MMR1Error):
    """A web search backend failed too many times in a row: the run stops (one line: which backend, why)."""


def raise_if_down(tools) -> None:
    """Raise `SearchBackendDown` when any of `tools` (or the tool a `CachedTool` wraps) is down."""
    for t in tools.values() if isinstance(tools, dict) else tools:
        down = getattr(getattr(t, "tool", t), "down", None)
        if down:
            raise SearchBackendDown(down)


def _http_kind(code: int, body: str) -> str:
    low = body.lower()
    if code in (401, 403) or "invalid api key" in low:
        return "bad key"
    if code == 429 or "run out of searches" in low or "quota" in low:
        return "quota"
    return "HTTP error"


class RateLimiter:
    """At most one request per `min_interval_s` (across threads); 0 disables it."""

    def __init__(self, min_interval_s: float = 0.0, clock=time.monotonic, sleep=time.sleep):
        self.min_interval_s, self.clock, self.sleep = float(min_interval_s), clock, sleep
        self._next = 0.0
        self._lock = threading.Lock()

    def wait(self) -> None:
        if self.min_interval_s <= 0:
            return
        with self._lock:
            now = self.clock()
            at = max(now, self._next)
            self._next = at + self.min_interval_s
        if at > now:
            self.sleep(at - now)


RETRY_STATUS = {408, 429, 500, 502, 503, 504}
SUMMARY_PROMPT = (
    "You are given a web page found for the search query below. Summarise the information on the page that "
    "is relevant to the query in at most {words} words. Reply with the summary only.\n\n"
    "Query: {query}\nPage title: {title}\n\nPage content:\n{page}")


class WebSearchTool:
    """The paper's web pipeline (see the module doc). mode "image": Google Lens via SerpApi on the URL of
    the question image; mode "text": Google via SerpApi, each result page read (Jina Reader) and
    summarised (`summarizer`, a ChatClient; without one the page text itself, cut, is returned).

    The query image's URL comes from ``image_url_fn(image)``, else the image's ``info["url"]`` /
    ``info["image_url"]``, else the query itself when it is an http(s) URL.
    """

    def __init__(self, mode: str = "text", *, k: int = 5, name: str | None = None,
                 api_key_env: str = "SERPAPI_API_KEY", serpapi_url: str = "https://serpapi.com/search.json",
                 reader_url: str | None = "https://r.jina.ai/", reader_key_env: str | None = "JINA_API_KEY",
                 summarizer: Any = None, summary_prompt: str = SUMMARY_PROMPT, summary_words: int = 150,
                 max_page_chars: int = 20000, max_chars: int | None = 1000, http_timeout_s: float = 20.0,
                 retries: int = 2, backoff: float = 1.0, min_interval_s: float = 0.0, timeout_s: float = 120.0,
                 image_url_fn: Callable[[Any], str | None] | None = None, params: dict | None = None,
                 thumb_size: int | None = 256, errors: str = "raise", max_consecutive_failures: int = 5,
                 sleep=time.sleep):
        if mode not in ("image", "text"):
            raise ValueError(f"mode must be 'image' or 'text', got {mode!r}")
        if errors not in ("result", "raise"):
            raise ValueError(f"errors must be 'result' or 'raise', got {errors!r}")
        self.mode, self.k = mode, int(k)
        self.name = name or ("image_search" if mode == "image" else "text_search")
        self.uses_images = mode == "image"
        self.api_key_env, self.serpapi_url = api_key_env, serpapi_url
        self.reader_url, self.reader_key_env = reader_url, reader_key_env
        self.summarizer, self.summary_prompt, self.summary_words = summarizer, summary_prompt, summary_words
        self.max_page_chars, self.max_chars = max_page_chars, max_chars
        self.http_timeout_s, self.retries, self.backoff = float(http_timeout_s), int(retries), float(backoff)
        self.timeout_s = float(timeout_s)  # the whole call, for ToolRunner
        self.image_url_fn, self.params, self.thumb_size = image_url_fn, dict(params or {}), thumb_size
        self.errors, self.sleep = errors, sleep
        self.limiter = RateLimiter(min_interval_s, sleep=sleep)
        self.requests = 0
        self.max_consecutive_failures = int(max_consecutive_failures)  # 0: never give up
        self.failures_in_a_row, self.errors_by_kind = 0, {}
        self.down: str | None = None  # why the backend is considered down (set once; then no more calls)
        self._lock = threading.Lock()

    def __repr__(self) -> str:  # no keys in here, ever
        return f"WebSearchTool(mode={self.mode!r}, name={self.name!r}, serpapi_url={self.serpapi_url!r})"

    # secrets -------------------------------------------------------------------------------------
    def _secrets(self) -> list[str]:
        out = []
        for env in (self.api_key_env, self.reader_key_env):
            v = os.environ.get(env) if env else None
            if v:
                out.append(v)
        return out

    def redact(self, text: str) -> str:
        """`text` with every API key (and every api_key=... URL parameter) replaced by ***."""
        for s in self._secrets():
            text = text.replace(s, "***")
            text = text.replace(urllib.parse.quote(s, safe=""), "***")
        return re.sub(r"(api_key=)[^&\s\"']+", r"\1***", text)

    def _key(self) -> str:
        key = os.environ.get(self.api_key_env, "")
        if not key:
            raise SearchError(f"no SerpApi key: set the environment variable {self.api_key_env}", "bad key")
        return key

    # HTTP ----------------------------------------------------------------------------------------
    def _get(self, url: str, service: str, headers: dict | None = None) -> bytes:
        """GET with retries on timeouts, connection errors, 429 and 5xx; SearchError (redacted) otherwise."""
        last, kind = "", "HTTP error"
        for attempt in range(self.retries + 1):
            if attempt:
                self.sleep(self.backoff * 2 ** (attempt - 1))
            self.limiter.wait()
            self.requests += 1
            try:
                req = urllib.request.Request(url, headers={"User-Agent": "mmr1-search/1", **(headers or {})})
                with urllib.request.urlopen(req, timeout=self.http_timeout_s) as r:
                    return r.read()
            except urllib.error.HTTPError as e:
                body = ""
                try:
                    body = e.read()[:500].decode("utf-8", "replace")
                    err = json.loads(body).get("error") if body.strip().startswith("{") else None
                    body = str(err) if err else body
                except (OSError, ValueError, AttributeError):
                    pass
                last = f"HTTP {e.code}" + (f": {' '.join(body.split())[:200]}" if body.strip() else "")
                kind = _http_kind(e.code, body)
                if e.code not in RETRY_STATUS or kind == "quota":
                    break
            except (socket.timeout, TimeoutError):
                last, kind = f"timed out after {self.http_timeout_s:g} s", "timeout"
            except urllib.error.URLError as e:
                reason = e.reason
                timed_out = isinstance(reason, (socket.timeout, TimeoutError))
                last = (f"timed out after {self.http_timeout_s:g} s" if timed_out
                        else f"connection failed ({type(reason).__name__}: {reason})")
                kind = "timeout" if timed_out else "connection"
            except (ConnectionError, OSError) as e:
                last, kind = f"connection failed ({type(e).__name__}: {e})", "connection"
            log.debug("%s request failed (attempt %d of %d): %s", service, attempt + 1, self.retries + 1,
                      self.redact(last))
        raise SearchError(self.redact(f"{service} {kind}: {last}"), kind)

    def _serpapi(self, params: dict) -> dict:
        q = {**self.params, **params, "api_key": self._key()}
        url = f"{self.serpapi_url}?{urllib.parse.urlencode(q)}"
        log.debug("SerpApi GET %s", self.redact(url))
        raw = self._get(url, "SerpApi")
        try:
            data = json.loads(raw)
        except ValueError:
            raise SearchError(f"SerpApi garbage: the reply is not JSON ({len(raw)} bytes)", "garbage") from None
        if not isinstance(data, dict):
            raise SearchError(f"SerpApi garbage: the reply is a JSON {type(data).__name__}, not an object", "garbage")
        if data.get("error"):
            msg = str(data["error"])
            if "hasn't returned any results" in msg or "no results" in msg.lower():
                return {}
            kind = _http_kind(200, msg)
            raise SearchError(self.redact(f"SerpApi {kind}: {msg[:200]}"), kind)
        for key in ("visual_matches", "organic_results"):
            if key in data and not isinstance(data[key], list):
                raise SearchError(f"SerpApi garbage: '{key}' is a {type(data[key]).__name__}, not a list",
                                  "garbage")
        return data

    # image search --------------------------------------------------------------------------------
    def _image_url(self, query: str, images: list, context: Any = None) -> str:
        url = context_image_url(context)
        if not url and images:
            url = self.image_url_fn(images[0]) if self.image_url_fn else \
                (images[0].info.get("url") or images[0].info.get("image_url"))
        if not url and re.match(r"https?://", query.strip()):
            url = query.strip()
        if not url:
            raise SearchError("no URL for the question image (Google Lens searches a public image URL: keep the "
                              "rows' image_urls, or give WebSearchTool an image_url_fn)", "config")
        return url

    def _fetch_image(self, url: str):
        from PIL import Image

        try:
            with Image.open(io.BytesIO(self._get(url, "thumbnail"))) as im:
                return _thumb(im, self.thumb_size)
        except (SearchError, OSError, ValueError, SyntaxError) as e:
            log.debug("skipping a result thumbnail: %s", self.redact(f"{type(e).__name__}: {e}"))
            return None

    def _image_search(self, query: str, images: list, context: Any = None) -> ToolResult:
        data = self._serpapi({"engine": "google_lens", "url": self._image_url(query, images, context)})
        matches = [m for m in data.get("visual_matches") or [] if isinstance(m, dict) and m.get("thumbnail")]
        titles, thumbs = [], []
        # fetch k thumbnails at a time (concurrently); a result whose thumbnail fails is skipped
        for lo in range(0, len(matches), max(self.k, 1)):
            batch = matches[lo:lo + self.k]
            with ThreadPoolExecutor(max_workers=len(batch), thread_name_prefix="mmr1-web") as pool:
                ims = list(pool.map(lambda m: self._fetch_image(str(m["thumbnail"])), batch))
            for m, im in zip(batch, ims):
                if im is not None and len(titles) < self.k:
                    titles.append(str(m.get("title") or m.get("source") or "(untitled)"))
                    thumbs.append(im)
            if len(titles) == self.k:
                break
        return ToolResult(format_image_results(titles), thumbs)

    # text search ---------------------------------------------------------------------------------
    def _read(self, link: str) -> str:
        headers = {"Accept": "text/plain"}
        key = os.environ.get(self.reader_key_env) if self.reader_key_env else None
        if key:
            headers["Authorization"] = f"Bearer {key}"
        raw = self._get(f"{self.reader_url}{link}", "page reader", headers)
        return raw.decode("utf-8", "replace")[:self.max_page_chars]

    def _page(self, query: str, result: dict) -> tuple[str, str]:
        title = str(result.get("title") or "(untitled)")
        snippet = str(result.get("snippet") or "")
        link = result.get("link")
        page = ""
        if self.reader_url and link:
            try:
                page = self._read(str(link))
            except SearchError as e:
                log.info("reading a result page failed, using its snippet: %s", e)
        if page.strip() and self.summarizer is not None:
            try:
                msg = self.summarizer.chat([{"role": "user", "content": self.summary_prompt.format(
                    query=query, title=title, page=page, words=self.summary_words)}], temperature=0.0)
                summary = (msg.get("content") or "").strip()
                if summary:
                    return title, truncate(summary, self.max_chars)
            except Exception as e:  # noqa: BLE001 - a failed summary falls back to the snippet
                log.info("summarising a result page failed, using its snippet: %s",
                         self.redact(f"{type(e).__name__}: {e}"))
            return title, truncate(snippet or page, self.max_chars)
        return title, truncate(page if page.strip() else snippet, self.max_chars)

    def _text_search(self, query: str) -> ToolResult:
        if not query.strip():
            raise SearchError("empty text search query", "config")
        data = self._serpapi({"engine": "google", "q": query.strip(), "num": self.k})
        results = [r for r in data.get("organic_results") or [] if isinstance(r, dict)][:self.k]
        if not results:
            return ToolResult(format_text_results(query.strip(), []))
        with ThreadPoolExecutor(max_workers=len(results), thread_name_prefix="mmr1-web") as pool:
            pages = list(pool.map(lambda r: self._page(query.strip(), r), results))
        return ToolResult(format_text_results(query.strip(), pages))

    def __call__(self, query: str, *, images: list, context: Any = None) -> ToolResult:
        """One search. `context`: the prompt's Sample (the agent loop's per-prompt context); its
        ``meta["image_urls"][0]`` is the URL an image search sends."""
        try:
            if self.down:
                raise SearchError(self.down, "down")
            res = (self._image_search(query, images, context) if self.mode == "image"
                   else self._text_search(query))
        except SearchError as e:
            msg = self.redact(str(e))
            if e.kind != "down":
                self._failed(e.kind, msg)
            log.warning("%s failed: %s", self.name, msg)
            if self.errors == "raise":
                raise SearchError(msg, e.kind) from None
            return ToolResult(error_text(self.name, msg))
        with self._lock:
            self.failures_in_a_row = 0
        return res

    def _failed(self, kind: str, msg: str) -> None:
        with self._lock:
            self.errors_by_kind[kind] = self.errors_by_kind.get(kind, 0) + 1
            if kind == "config":  # our input, not the backend
                return
            self.failures_in_a_row += 1
            n = self.failures_in_a_row
            if self.max_consecutive_failures and n >= self.max_consecutive_failures and not self.down:
                host = urllib.parse.urlsplit(self.serpapi_url).netloc
                self.down = (f"{self.name}: the web search backend (SerpApi at {host}) failed {n} times in a row, "
                             f"last: {msg}; fix the key, quota or network and resume the run")


def context_image_url(context: Any) -> str | None:
    """The question image's original URL from a prompt's context: a Sample (or dict) whose meta holds
    ``image_urls`` (MMSearch-R1's FVQA rows); None when there is none."""
    meta = context.get("meta", context) if isinstance(context, dict) else getattr(context, "meta", None)
    urls = meta.get("image_urls") if isinstance(meta, dict) else None
    if isinstance(urls, (list, tuple)) and urls and isinstance(urls[0], str) and urls[0].strip():
        return urls[0].strip()
    return None


# --------------------------------------------------------------------------------------- factory


def make_search_tools(index: str | Path | SearchIndex | None = None, *, backend: str = "local", k: int = 5,
                      text_mode: str = "bm25", max_chars: int | None = 1000, cache_dir: str | Path | None = None,
                      embedder: Any = None, summarizer: Any = None, **web) -> list:
    """The [image_search, text_search] tools of an MMSearch-R1 run. backend "local": over the index
    directory `index`; "web": `WebSearchTool`s (`web` goes to both, e.g. min_interval_s, image_url_fn).
    With `cache_dir`, both are wrapped in `CachedTool`."""
    if backend == "local":
        if index is None:
            raise ValueError("the local search backend needs an index directory")
        idx = index if isinstance(index, SearchIndex) else SearchIndex.load(index, embedder=embedder)
        tools = [ImageSearchTool(idx, k), TextSearchTool(idx, k, text_mode, max_chars=max_chars)]
    elif backend == "web":
        tools = [WebSearchTool("image", k=k, **web),
                 WebSearchTool("text", k=k, summarizer=summarizer, max_chars=max_chars, **web)]
    else:
        raise ValueError(f"backend must be 'local' or 'web', got {backend!r}")
    if cache_dir is not None:
        tools = [CachedTool(t, cache_dir) for t in tools]
    return tools


__all__ = ["CachedTool", "ImageSearchTool", "RateLimiter", "SearchBackendDown", "SearchError", "TextSearchTool",
           "WebSearchTool", "context_image_url", "format_image_results", "format_text_results", "image_hash",
           "make_search_tools", "raise_if_down", "truncate"]
