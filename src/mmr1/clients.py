"""A small OpenAI-compatible chat client (standard-library HTTP): the way mmr1 reaches teachers, judges
and evaluated models, whether `mmr1 serve`, vLLM, SGLang or a hosted API.

Timeouts, connection errors, HTTP 429 and 5xx are retried with exponential back-off; any other HTTP
error fails at once with the server's own message, since sending it again cannot help.
"""

from __future__ import annotations

import base64
import io
import json
import os
import socket
import threading
import time
import urllib.error
import urllib.request

from .errors import MMR1Error

RETRY_STATUS = {408, 409, 429, 500, 502, 503, 504}


class APIError(MMR1Error):
    """A request that failed for good (after its retries, or with an error a retry cannot fix)."""

    def __init__(self, message: str, retryable: bool = False):
        super().__init__(message)
        self.retryable = retryable


def image_part(img) -> dict:
    """A PIL image as an OpenAI `image_url` content part (base64 PNG data URL)."""
    buf = io.BytesIO()
    img.convert("RGB").save(buf, format="PNG")
    return {"type": "image_url", "image_url": {"url": "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()}}


class ChatClient:
    def __init__(self, base_url: str, model: str = "", api_key: str | None = None, timeout: float = 120.0,
                 retries: int = 4, backoff: float = 1.0, sleep=time.sleep):
        self.base_url = base_url.rstrip("/")
        self.model, self.api_key = model, api_key
        self.timeout, self.retries, self.backoff, self.sleep = timeout, retries, backoff, sleep
        self.requests = 0  # HTTP requests sent, retries included
        self.usage = {"prompt_tokens": 0, "completion_tokens": 0}  # as the server reported them
        self._lock = threading.Lock()

    @classmethod
    def from_env(cls, base_url: str, model: str, key_env: str, **kw) -> "ChatClient":
        return cls(base_url, model, os.environ.get(key_env) if key_env else None, **kw)

    def _request(self, method: str, path: str, body: dict | None = None) -> dict:
        url = f"{self.base_url}{path}"
        headers = {"Content-Type": "application/json"}
        if self.api_key:
            headers["Authorization"] = f"Bearer {self.api_key}"
        data = json.dumps(body).encode() if body is not None else None
        last = ""
        for attempt in range(self.retries + 1):
            if attempt:
                self.sleep(self.backoff * 2 ** (attempt - 1))
            self.requests += 1
            try:
                req = urllib.request.Request(url, data=data, headers=headers, method=method)
                with urllib.request.urlopen(req, timeout=self.timeout) as r:
                    return json.loads(r.read())
            except urllib.error.HTTPError as e:
                msg = _server_message(e)
                if e.code not in RETRY_STATUS:
                    raise APIError(f"{method} {url}: HTTP {e.code}: {msg}") from None
                last = f"HTTP {e.code}: {msg}"
            except (urllib.error.URLError, socket.timeout, TimeoutError, ConnectionError) as e:
                last = f"{type(e).__name__}: {getattr(e, 'reason', e)}"
            except ValueError as e:
                last = f"the reply is not JSON ({e})"
        raise APIError(f"{method} {url}: failed after {self.retries + 1} attempts; last error: {last}",
                       retryable=True)

    def models(self) -> list[str]:
        return [m["id"] for m in self._request("GET", "/models").get("data", [])]

    def resolve_model(self) -> str:
        """The configured model name, or the server's first one."""
        if not self.model:
            names = self.models()
            if not names:
                raise APIError(f"{self.base_url}/models lists no model; set the model name")
            self.model = names[0]
        return self.model

    def chat(self, messages: list[dict], **params) -> dict:
        """One chat completion; returns the first choice's message (content, and reasoning_content when the
        server splits the thinking out, as DeepSeek-R1's API does) plus `finish_reason` and `usage`."""
        reply = self._request("POST", "/chat/completions", {"model": self.resolve_model(), "messages": messages,
                                                             **params})
        try:
            choice = reply["choices"][0]
            msg = dict(choice["message"])
        except (KeyError, IndexError, TypeError):
            raise APIError(f"POST {self.base_url}/chat/completions: no choices in the reply {str(reply)[:200]!r}")
        msg["content"] = msg.get("content") or ""
        msg["finish_reason"] = choice.get("finish_reason")
        msg["usage"] = reply.get("usage") or {}
        with self._lock:
            for k in self.usage:
                self.usage[k] += int(msg["usage"].get(k) or 0)
        return msg


def _server_message(e: urllib.error.HTTPError) -> str:
    try:
        body = json.loads(e.read() or b"{}")
        err = body.get("error", body)
        return str(err.get("message", err) if isinstance(err, dict) else err)[:300]
    except (ValueError, AttributeError):
        return str(e.reason)
