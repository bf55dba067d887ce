"""The OpenAI-compatible chat client mmr1 reaches teachers, judges and evaluated models with (`mmr1 serve`,
vLLM, SGLang or a hosted API), on the official `openai` SDK.

The SDK does the HTTP, the timeouts and the error types; the retry schedule is mmr1's own (the SDK's
retries are off) so that `coldstart.retries` / `coldstart.backoff` mean what they say and every attempt is
counted: timeouts, connection errors, HTTP 408/409/429 and 5xx are retried with exponential back-off; any
other HTTP error fails at once with the server's own message, since sending it again cannot help.

Keys come from an environment variable named in the config (`from_env`), never from the config itself, and
never appear in messages or logs. With no key the client sends a placeholder, not `OPENAI_API_KEY`: a
user's OpenAI key must not travel to whatever `base_url` a recipe names.
"""

from __future__ import annotations

import base64
import io
import os
import threading
import time

from .errors import MMR1Error

RETRY_STATUS = {408, 409, 429, 500, 502, 503, 504}
NO_KEY = "no-key"


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
        import openai

        self.base_url = base_url.rstrip("/")
        self.model = model
        self.timeout, self.retries, self.backoff, self.sleep = timeout, retries, backoff, sleep
        self.requests = 0  # HTTP requests sent, retries included
        self.usage = {"prompt_tokens": 0, "completion_tokens": 0}  # as the server reported them
        self._lock = threading.Lock()
        self._sdk = openai.OpenAI(base_url=self.base_url, api_key=api_key or NO_KEY, timeout=timeout, max_retries=0)

    def __repr__(self) -> str:  # never the key
        return f"ChatClient({self.base_url!r}, model={self.model!r})"

    @classmethod
    def from_env(cls, base_url: str, model: str, key_env: str, **kw) -> "ChatClient":
        return cls(base_url, model, os.environ.get(key_env) if key_env else None, **kw)

    def _call(self, what: str, fn):
        import openai

        last = ""
        for attempt in range(self.retries + 1):
            if attempt:
                self.sleep(self.backoff * 2 ** (attempt - 1))
            self.requests += 1
            try:
                return fn()
            except openai.APIStatusError as e:
                msg = _server_message(e)
                if e.status_code not in RETRY_STATUS:
                    raise APIError(f"{what}: HTTP {e.status_code}: {msg}") from None
                last = f"HTTP {e.status_code}: {msg}"
            except openai.APITimeoutError:
                last = f"APITimeoutError: no reply within {self.timeout:g} s"
            except openai.APIConnectionError as e:
                cause = e.__cause__ or e
                last = f"APIConnectionError: {type(cause).__name__}: {str(cause)[:200]}"
            except (openai.APIResponseValidationError, ValueError) as e:
                last = f"the reply is not a valid response ({str(e)[:200]})"
        raise APIError(f"{what}: failed after {self.retries + 1} attempts; last error: {last}", retryable=True)

    def models(self) -> list[str]:
        page = self._call(f"GET {self.base_url}/models", lambda: self._sdk.models.list())
        return [m.id for m in page.data]

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
        server splits the thinking out, as DeepSeek-R1's API does) plus `finish_reason` and `usage`. Every
        param goes into the request body as given (OpenAI's names: max_tokens, temperature, n, seed, ...)."""
        model = self.resolve_model()
        reply = self._call(f"POST {self.base_url}/chat/completions",
                           lambda: self._sdk.chat.completions.create(model=model, messages=messages,
                                                                     extra_body=params or None))
        try:
            reply = reply.model_dump() if hasattr(reply, "model_dump") else dict(reply)
            choice = reply["choices"][0]
            msg = dict(choice["message"])
        except (KeyError, IndexError, TypeError, ValueError):
            raise APIError(f"POST {self.base_url}/chat/completions: no choices in the reply {str(reply)[:200]!r}")
        msg = {k: v for k, v in msg.items() if v is not None or k == "content"}
        msg["content"] = msg.get("content") or ""
        msg["finish_reason"] = choice.get("finish_reason")
        msg["usage"] = reply.get("usage") or {}
        with self._lock:
            for k in self.usage:
                self.usage[k] += int(msg["usage"].get(k) or 0)
        return msg


def _server_message(e) -> str:
    body = getattr(e, "body", None)
    if isinstance(body, dict):
        err = body.get("error", body)
        return str(err.get("message", err) if isinstance(err, dict) else err)[:300]
    return str(getattr(e, "message", e))[:300]
