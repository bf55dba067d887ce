"""An OpenAI-compatible chat-completions server over the HF engine: ``mmr1 serve MODEL_DIR --port N``.

Teachers, judges and evaluation then reach a local model exactly as they reach vLLM, SGLang or a hosted
API: ``POST /v1/chat/completions`` with images as base64 data URLs, ``GET /v1/models``, ``GET /health``.
Remote image URLs are refused (nothing is downloaded); local paths and ``file://`` URLs are read. Requests
are served one at a time under a lock: this is the path that runs anywhere, vLLM is the fast one.
"""

from __future__ import annotations

import base64
import binascii
import io
import json
import logging
import threading
import time
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import torch
from PIL import Image, UnidentifiedImageError

from .rollout.batch import encode_prompts
from .rollout.hf import HFEngine

log = logging.getLogger("mmr1")
MAX_BODY = 64 << 20  # bytes


class RequestError(ValueError):
    """A bad request: answered with HTTP 400 and this message."""


def decode_image(url: str, where: str) -> Image.Image:
    """A data URL (``data:image/png;base64,...``), a file:// URL or a local path, as an RGB image."""
    try:
        if url.startswith("data:"):
            head, _, payload = url.partition(",")
            if ";base64" not in head:
                raise RequestError(f"{where}: only base64 data URLs are supported (data:image/png;base64,...)")
            raw = base64.b64decode(payload, validate=True)
        elif url.startswith(("http://", "https://")):
            raise RequestError(f"{where}: remote image URLs are not fetched (this server downloads nothing); "
                               "send the image as a base64 data URL")
        else:
            raw = Path(url.removeprefix("file://")).read_bytes()
        img = Image.open(io.BytesIO(raw))
        img.load()
        return img.convert("RGB")
    except RequestError:
        raise
    except (binascii.Error, ValueError) as e:
        raise RequestError(f"{where}: the base64 image data does not decode ({e})") from None
    except (UnidentifiedImageError, OSError) as e:
        raise RequestError(f"{where}: not a readable image ({e})") from None


def to_prompt(messages) -> tuple[list[dict], list[Image.Image]]:
    """OpenAI chat messages -> the repo's (messages, images) prompt."""
    if not isinstance(messages, list) or not messages:
        raise RequestError("'messages' must be a non-empty list")
    out, images = [], []
    for i, m in enumerate(messages):
        if not isinstance(m, dict) or m.get("role") not in ("system", "user", "assistant"):
            raise RequestError(f"messages[{i}]: need a 'role' of system, user or assistant")
        content = m.get("content")
        if isinstance(content, str):
            out.append({"role": m["role"], "content": content})
            continue
        if not isinstance(content, list):
            raise RequestError(f"messages[{i}].content: must be a string or a list of parts")
        parts = []
        for j, p in enumerate(content):
            where = f"messages[{i}].content[{j}]"
            kind = p.get("type") if isinstance(p, dict) else None
            if kind == "text":
                parts.append({"type": "text", "text": str(p.get("text", ""))})
            elif kind == "image_url":
                url = p.get("image_url")
                url = url.get("url") if isinstance(url, dict) else url
                if not isinstance(url, str):
                    raise RequestError(f"{where}: image_url needs a 'url'")
                images.append(decode_image(url, where))
                parts.append({"type": "image"})
            else:
                raise RequestError(f"{where}: unknown part type {kind!r} (text or image_url)")
        out.append({"role": m["role"], "content": parts})
    return out, images


def _number(body: dict, key: str, default, lo=None, hi=None, kind=float):
    v = body.get(key)
    if v is None:
        return default
    if isinstance(v, bool) or not isinstance(v, (int, float)) or (kind is int and int(v) != v):
        raise RequestError(f"'{key}' must be a{'n integer' if kind is int else ' number'}, got {v!r}")
    if (lo is not None and v < lo) or (hi is not None and v > hi):
        raise RequestError(f"'{key}' must be in [{lo}, {hi}], got {v!r}")
    return kind(v)


class ChatServer:
    """The model, its engine and the request logic, apart from HTTP (so tests can call it directly too)."""

    def __init__(self, lm, name: str, max_tokens_limit: int = 4096, default_max_tokens: int = 512):
        self.lm, self.name = lm, name
        self.engine = HFEngine(lm)
        self.max_tokens_limit, self.default_max_tokens = max_tokens_limit, default_max_tokens
        self.lock = threading.Lock()

    def models(self) -> dict:
        return {"object": "list", "data": [{"id": self.name, "object": "model", "owned_by": "mmr1"}]}

    def chat(self, body: dict) -> dict:
        if not isinstance(body, dict):
            raise RequestError("the request body must be a JSON object")
        prompt = to_prompt(body.get("messages"))
        max_tokens = _number(body, "max_completion_tokens", None, 1, self.max_tokens_limit, int)
        if max_tokens is None:
            max_tokens = _number(body, "max_tokens", self.default_max_tokens, 1, self.max_tokens_limit, int)
        temperature = _number(body, "temperature", 1.0, 0.0, 2.0)
        top_p = _number(body, "top_p", 1.0, 0.0, 1.0)
        n = _number(body, "n", 1, 1, 64, int)
        seed = _number(body, "seed", None, kind=int)
        stop = body.get("stop") or []
        stop = [stop] if isinstance(stop, str) else stop
        if not isinstance(stop, list) or not all(isinstance(s, str) for s in stop):
            raise RequestError("'stop' must be a string or a list of strings")
        greedy = temperature == 0.0
        if greedy and n > 1:
            raise RequestError("n > 1 needs temperature > 0 (greedy decoding gives one answer)")
        gen = torch.Generator().manual_seed(seed) if seed is not None else None
        with self.lock:
            comps = self.engine.sample([prompt], n=n, max_new_tokens=max_tokens, temperature=temperature or 1.0,
                                       top_p=top_p, do_sample=not greedy, stop=stop, generator=gen)[0]
            prompt_tokens = int(encode_prompts(self.lm, [prompt])["input_ids"].shape[1])
        completion_tokens = sum(len(c.token_ids) for c in comps)
        return {
            "id": f"chatcmpl-{uuid.uuid4().hex[:24]}", "object": "chat.completion", "created": int(time.time()),
            "model": self.name,
            "choices": [{"index": i, "message": {"role": "assistant", "content": c.text},
                         "finish_reason": c.finish_reason, "logprobs": None} for i, c in enumerate(comps)],
            "usage": {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
                      "total_tokens": prompt_tokens + completion_tokens},
        }


def make_handler(server: ChatServer):
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, fmt, *args):  # to the mmr1 log, not stderr
            log.info("serve %s - %s", self.address_string(), fmt % args)

        def _send(self, code: int, obj: dict) -> None:
            data = json.dumps(obj).encode()
            self.send_response(code)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def _error(self, code: int, message: str, kind: str = "invalid_request_error") -> None:
            self._send(code, {"error": {"message": message, "type": kind, "code": code}})

        def do_GET(self):
            path = self.path.split("?")[0].rstrip("/")
            if path in ("/v1/models", "/models"):
                self._send(200, server.models())
            elif path in ("/health", "/v1/health"):
                self._send(200, {"status": "ok", "model": server.name})
            else:
                self._error(404, f"no route GET {self.path}; try /v1/models or POST /v1/chat/completions")

        def do_POST(self):
            path = self.path.split("?")[0].rstrip("/")
            if path not in ("/v1/chat/completions", "/chat/completions"):
                self._error(404, f"no route POST {self.path}; this server has /v1/chat/completions")
                return
            try:
                length = int(self.headers.get("Content-Length") or 0)
                if length > MAX_BODY:
                    raise RequestError(f"request body of {length} bytes is over the {MAX_BODY} byte limit")
                try:
                    body = json.loads(self.rfile.read(length) or b"null")
                except ValueError as e:
                    raise RequestError(f"the request body is not JSON ({e})") from None
                self._send(200, server.chat(body))
            except RequestError as e:
                self._error(400, str(e))
            except Exception as e:  # a bug or an engine failure: the client hears of it, the server lives on
                log.exception("chat completion failed")
                self._error(500, f"{type(e).__name__}: {e}", "server_error")

    return Handler


def make_http_server(chat: ChatServer, host: str = "127.0.0.1", port: int = 8000) -> ThreadingHTTPServer:
    """Bind (port 0 picks a free one: see ``server.server_address``); call ``serve_forever()`` to run."""
    httpd = ThreadingHTTPServer((host, port), make_handler(chat))
    httpd.daemon_threads = True
    return httpd
