"""An OpenAI-compatible chat-completions server over the HF engine: ``mmr1 serve MODEL_DIR --port N``.

Teachers, judges and evaluation then reach a local model exactly as they reach vLLM, SGLang or a hosted
API: ``POST /v1/chat/completions`` with images as base64 data URLs, ``GET /v1/models``, ``GET /health``.
It runs on FastAPI + uvicorn and is built to survive its clients:

- every request is checked before it costs anything: body size (413), images per request, pixels per image
  (read from the image header, so decompression bombs are refused undecoded), prompt characters (before
  tokenising) and prompt tokens (after), completion length, `n`: a 400 that says what is wrong and which
  option raises the limit, never a crash;
- remote image URLs are never fetched; local paths and ``file://`` URLs are refused unless they resolve
  under a directory given with ``--allow-local-dir``, with the same message whether or not the file exists;
- ``--api-key`` (or ``MMR1_API_KEY``): the ``/v1`` routes answer 401 without ``Authorization: Bearer KEY``;
- generation runs on one worker thread fed by a FIFO queue (first come, first served; ``--max-queue``, then
  503), while parsing, image decoding and tokenising run beside it, so a long request delays only the
  requests queued behind it and ``/health`` always answers at once; ``--request-timeout`` bounds each
  request's wait and generation (504; a generation already running finishes, bounded by its max_tokens, and
  its result is dropped).
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import concurrent.futures
import hmac
import json
import logging
import os
import queue
import socket
import threading
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

import torch
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse
from PIL import Image
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException

from .data.schema import load_image
from .errors import DataError
from .rollout.batch import encode_prompts
from .rollout.hf import HFEngine

log = logging.getLogger("mmr1")


@dataclass
class ServeLimits:
    """What one request may ask of the server (each is a `mmr1 serve` option)."""
    max_body_bytes: int = 20 << 20  # --max-body-mb
    max_images: int = 8  # --max-images
    max_image_pixels: int = 4096 * 4096  # --max-image-pixels
    max_prompt_tokens: int = 8192  # --max-prompt-tokens
    max_tokens_limit: int = 4096  # --max-tokens-limit
    max_n: int = 16  # completions per request
    request_timeout_s: float = 300.0  # --request-timeout
    max_queue: int = 128  # --max-queue
    allow_local_dirs: tuple = ()  # --allow-local-dir (resolved directories)

    def __post_init__(self):
        self.allow_local_dirs = tuple(Path(os.path.realpath(d)) for d in self.allow_local_dirs)


class RequestError(ValueError):
    """A bad request: answered with `status` (400 unless said otherwise) and this message."""

    def __init__(self, message: str, status: int = 400):
        super().__init__(message)
        self.status = status


def decode_image(url: str, where: str, limits: ServeLimits | None = None) -> Image.Image:
    """A data URL (``data:image/png;base64,...``), or a file under an allowed directory, as an RGB image."""
    limits = limits or ServeLimits()
    if url.startswith("data:"):
        head, _, payload = url.partition(",")
        if ";base64" not in head:
            raise RequestError(f"{where}: only base64 data URLs are supported (data:image/png;base64,...)")
        try:
            raw = base64.b64decode(payload, validate=True)
        except (binascii.Error, ValueError) as e:
            raise RequestError(f"{where}: the base64 image data does not decode ({e})") from None
    elif url.startswith(("http://", "https://")):
        raise RequestError(f"{where}: remote image URLs are not fetched (this server downloads nothing); "
                           "send the image as a base64 data URL")
    else:
        path = url.removeprefix("file://")
        if not _allowed(path, limits.allow_local_dirs):  # decided on the name alone: no existence leak
            raise RequestError(f"{where}: local image paths and file:// URLs are refused (the server reads files "
                               "only under a directory given with --allow-local-dir); send the image as a "
                               "base64 data URL")
        try:
            raw = Path(os.path.realpath(path)).read_bytes()
        except OSError:
            raise RequestError(f"{where}: not a readable image file under the allowed directories") from None
    try:
        return load_image(raw, field=where, max_pixels=limits.max_image_pixels)
    except DataError as e:
        reason = e.reason.replace("data.max_image_pixels", "--max-image-pixels")
        if reason.startswith("cannot decode"):
            reason = f"not a readable image ({reason})"
        raise RequestError(f"{where}: {reason}") from None


def _allowed(path: str, dirs: tuple) -> bool:
    if not dirs or not path:
        return False
    real = Path(os.path.realpath(path))
    return any(real == d or d in real.parents for d in dirs)


def to_prompt(messages, limits: ServeLimits | None = None) -> tuple[list[dict], list[Image.Image]]:
    """OpenAI chat messages -> the repo's (messages, images) prompt; images are counted before any is decoded."""
    limits = limits or ServeLimits()
    if not isinstance(messages, list) or not messages:
        raise RequestError("'messages' must be a non-empty list")
    n_images = sum(1 for m in messages if isinstance(m, dict) and isinstance(m.get("content"), list)
                   for p in m["content"] if isinstance(p, dict) and p.get("type") == "image_url")
    if n_images > limits.max_images:
        raise RequestError(f"{n_images} images in one request; the limit is {limits.max_images} (--max-images)")
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
                text = p.get("text", "")
                if not isinstance(text, str):
                    raise RequestError(f"{where}.text: must be a string")
                parts.append({"type": "text", "text": text})
            elif kind == "image_url":
                url = p.get("image_url")
                url = url.get("url") if isinstance(url, dict) else url
                if not isinstance(url, str):
                    raise RequestError(f"{where}: image_url needs a 'url'")
                images.append(decode_image(url, where, limits))
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
    if v != v or (lo is not None and v < lo) or (hi is not None and v > hi):
        raise RequestError(f"'{key}' must be in [{lo}, {hi}], got {v!r}")
    return kind(v)


@dataclass
class Prepared:
    """A checked request, ready for the generation worker."""
    prompt: tuple
    prompt_tokens: int
    n: int
    max_tokens: int
    temperature: float
    top_p: float
    seed: int | None
    stop: list = field(default_factory=list)


class ChatServer:
    """The model, its engine, the limits and the request logic, apart from HTTP (tests can call it directly)."""

    def __init__(self, lm, name: str, max_tokens_limit: int | None = None, default_max_tokens: int = 512,
                 limits: ServeLimits | None = None):
        self.lm, self.name = lm, name
        self.engine = HFEngine(lm)
        self.limits = limits or ServeLimits()
        if max_tokens_limit is not None:
            self.limits.max_tokens_limit = max_tokens_limit
        self.default_max_tokens = min(default_max_tokens, self.limits.max_tokens_limit)
        # No token is longer than this many characters, so a text over max_prompt_tokens * this is refused
        # before it is tokenised (a 60 MB prompt costs a length check, not a tokeniser run).
        tok = lm.tokenizer
        self.max_token_chars = max([len(t) for t in tok.get_vocab()] + [1])
        self._queue: queue.Queue = queue.Queue()
        self._worker = threading.Thread(target=self._work, name="mmr1-serve-generate", daemon=True)
        self._worker.start()
        self.served = 0

    def models(self) -> dict:
        return {"object": "list", "data": [{"id": self.name, "object": "model", "owned_by": "mmr1"}]}

    def health(self) -> dict:
        return {"status": "ok", "model": self.name, "queued": self._queue.qsize(), "served": self.served}

    # ------------------------------------------------------------------------ request checks (any thread)

    def prepare(self, body) -> Prepared:
        """Validate a request body, decode its images and count its prompt tokens, within the limits."""
        lim = self.limits
        if not isinstance(body, dict):
            raise RequestError("the request body must be a JSON object")
        max_tokens = _number(body, "max_completion_tokens", None, 1, lim.max_tokens_limit, int)
        if max_tokens is None:
            max_tokens = _number(body, "max_tokens", self.default_max_tokens, 1, lim.max_tokens_limit, int)
        temperature = _number(body, "temperature", 1.0, 0.0, 2.0)
        top_p = _number(body, "top_p", 1.0, 0.0, 1.0)
        n = _number(body, "n", 1, 1, lim.max_n, int)
        seed = _number(body, "seed", None, -(2 ** 63), 2 ** 63 - 1, kind=int)
        stop = body.get("stop") or []
        stop = [stop] if isinstance(stop, str) else stop
        if not isinstance(stop, list) or not all(isinstance(s, str) for s in stop) or len(stop) > 16:
            raise RequestError("'stop' must be a string or a list of at most 16 strings")
        if temperature == 0.0 and n > 1:
            raise RequestError("n > 1 needs temperature > 0 (greedy decoding gives one answer)")
        messages = body.get("messages")
        if isinstance(messages, list) and all(isinstance(m, dict) for m in messages):
            chars = sum(len(m["content"]) for m in messages if isinstance(m.get("content"), str))
            chars += sum(len(p["text"]) for m in messages if isinstance(m.get("content"), list)
                         for p in m["content"] if isinstance(p, dict) and isinstance(p.get("text"), str))
            if chars > lim.max_prompt_tokens * self.max_token_chars:
                raise RequestError(f"the prompt has {chars:,} characters, more than {lim.max_prompt_tokens:,} tokens "
                                   "can hold (--max-prompt-tokens)")
        prompt = to_prompt(messages, lim)
        prompt_tokens = int(encode_prompts(self.lm, [prompt])["input_ids"].shape[1])
        if prompt_tokens > lim.max_prompt_tokens:
            raise RequestError(f"the prompt is {prompt_tokens:,} tokens; the limit is {lim.max_prompt_tokens:,} "
                               "(--max-prompt-tokens)")
        return Prepared(prompt, prompt_tokens, n, max_tokens, temperature, top_p, seed, stop)

    # ------------------------------------------------------------------------ generation (the worker)

    def submit(self, job: Prepared) -> concurrent.futures.Future:
        """Queue a checked request (first come, first served); 503 when the queue is full."""
        if self._queue.qsize() >= self.limits.max_queue:
            raise RequestError(f"the server is busy: {self._queue.qsize()} requests are queued (--max-queue); "
                               "retry later", status=503)
        fut: concurrent.futures.Future = concurrent.futures.Future()
        self._queue.put((job, fut))
        return fut

    def _work(self) -> None:
        while True:
            item = self._queue.get()
            if item is None:
                return
            job, fut = item
            if not fut.set_running_or_notify_cancel():  # timed out while queued
                continue
            try:
                fut.set_result(self.generate(job))
            except BaseException as e:  # noqa: BLE001 - the worker must outlive any request
                fut.set_exception(e)

    def generate(self, job: Prepared) -> dict:
        greedy = job.temperature == 0.0
        gen = torch.Generator().manual_seed(job.seed % (2 ** 63)) if job.seed is not None else None
        comps = self.engine.sample([job.prompt], n=job.n, max_new_tokens=job.max_tokens,
                                   temperature=job.temperature or 1.0, top_p=job.top_p, do_sample=not greedy,
                                   stop=job.stop, generator=gen)[0]
        self.served += 1
        completion_tokens = sum(len(c.token_ids) for c in comps)
        return {
            "id": f"chatcmpl-{uuid.uuid4().hex[:24]}", "object": "chat.completion", "created": int(time.time()),
            "model": self.name,
            "choices": [{"index": i, "message": {"role": "assistant", "content": c.text},
                         "finish_reason": c.finish_reason, "logprobs": None} for i, c in enumerate(comps)],
            "usage": {"prompt_tokens": job.prompt_tokens, "completion_tokens": completion_tokens,
                      "total_tokens": job.prompt_tokens + completion_tokens},
        }

    def chat(self, body) -> dict:
        """One request start to end in the caller's thread (through the queue)."""
        return self.submit(self.prepare(body)).result()

    def close(self) -> None:
        self._queue.put(None)


# ---------------------------------------------------------------------------------------------------- HTTP


def _error(status: int, message: str, kind: str = "invalid_request_error", headers: dict | None = None):
    return JSONResponse({"error": {"message": message, "type": kind, "code": status}}, status_code=status,
                        headers=headers)


def make_app(server: ChatServer, api_key: str | None = None):
    """The FastAPI app: routes, the API-key check, body limit, per-request timeout."""
    app = FastAPI(title="mmr1 serve", docs_url=None, redoc_url=None, openapi_url=None)
    lim = server.limits

    def unauthorised(request: Request):
        if not api_key:
            return None
        given = request.headers.get("authorization", "")
        scheme, _, token = given.partition(" ")
        if scheme.lower() == "bearer" and hmac.compare_digest(token.strip().encode(), api_key.encode()):
            return None
        return _error(401, "missing or wrong API key: send 'Authorization: Bearer KEY'", "authentication_error",
                      {"WWW-Authenticate": "Bearer"})

    @app.exception_handler(HTTPException)
    async def http_error(request: Request, exc: HTTPException):
        if exc.status_code in (404, 405):
            return _error(exc.status_code, f"no route {request.method} {request.url.path}; this server has POST "
                                           "/v1/chat/completions, GET /v1/models and GET /health")
        return _error(exc.status_code, str(exc.detail))

    @app.get("/health")
    @app.get("/v1/health")
    async def health():
        return server.health()

    @app.get("/v1/models")
    @app.get("/models")
    async def models(request: Request):
        return unauthorised(request) or server.models()

    @app.post("/v1/chat/completions")
    @app.post("/chat/completions")
    async def chat(request: Request):
        denied = unauthorised(request)
        if denied is not None:
            return denied
        t0 = time.monotonic()
        declared = request.headers.get("content-length")
        if declared is not None and declared.isdigit() and int(declared) > lim.max_body_bytes:
            return _error(413, f"request body of {int(declared):,} bytes is over the {lim.max_body_bytes:,} byte "
                               "limit (--max-body-mb)")
        chunks, size = [], 0
        async for chunk in request.stream():
            size += len(chunk)
            if size > lim.max_body_bytes:
                return _error(413, f"request body is over the {lim.max_body_bytes:,} byte limit (--max-body-mb)")
            chunks.append(chunk)
        try:
            body = json.loads(b"".join(chunks) or b"null")
        except ValueError as e:
            return _error(400, f"the request body is not JSON ({e})")
        try:
            job = await run_in_threadpool(server.prepare, body)
            fut = server.submit(job)
            left = lim.request_timeout_s - (time.monotonic() - t0)
            return await asyncio.wait_for(asyncio.wrap_future(fut), timeout=max(0.001, left))
        except RequestError as e:
            return _error(e.status, str(e), "server_busy" if e.status == 503 else "invalid_request_error")
        except asyncio.TimeoutError:
            return _error(504, f"the request took over {lim.request_timeout_s:g} s (--request-timeout)", "timeout")
        except Exception as e:  # a bug or an engine failure: the client hears of it, the server lives on
            log.exception("chat completion failed")
            return _error(500, f"{type(e).__name__}: {e}", "server_error")

    return app


class HTTPServer:
    """uvicorn on a socket bound up front, so port 0 picks a free port that is known at once
    (`server_address`); `serve_forever()` runs it, `shutdown()` (from another thread) stops it."""

    def __init__(self, server: ChatServer, host: str = "127.0.0.1", port: int = 8000, api_key: str | None = None,
                 max_connections: int = 512):
        import uvicorn

        self.chat = server
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        self.sock = socket.socket(family, socket.SOCK_STREAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind((host, port))
        self.sock.listen(2048)
        self.server_address = self.sock.getsockname()
        config = uvicorn.Config(make_app(server, api_key), lifespan="off", log_level="warning", access_log=False,
                                limit_concurrency=max_connections, timeout_keep_alive=5, http="h11",
                                loop="asyncio", ws="none")
        self.uvicorn = uvicorn.Server(config)
        self._done = threading.Event()

    def serve_forever(self) -> None:
        try:
            self.uvicorn.run(sockets=[self.sock])
        finally:
            self._done.set()

    def shutdown(self, timeout: float = 10.0) -> None:
        self.uvicorn.should_exit = True
        self._done.wait(timeout)

    def server_close(self) -> None:
        self.sock.close()
        self.chat.close()


def make_http_server(chat: ChatServer, host: str = "127.0.0.1", port: int = 8000,
                     api_key: str | None = None) -> HTTPServer:
    """Bind (port 0 picks a free one: see ``server.server_address``); call ``serve_forever()`` to run."""
    return HTTPServer(chat, host, port, api_key)
