"""Tools an agent calls between its turns (METHODS §4.1 step 4), and the runner that calls them.

A tool is any object with a ``name`` and ``__call__(query, *, images) -> ToolResult``: plain Python
classes are enough (the scripted tools of the tests are real tools). ``images`` are the original
prompt's images (MMSearch-R1's image search looks up the question image). A tool may set a
``timeout_s`` attribute to override the runner's default timeout. A tool whose ``__call__`` also takes
a ``context`` keyword receives the per-prompt object the caller attached to the call (the agent loop's
``run(contexts=...)``): Retrv-R1's inspection needs to know WHICH prompt's candidate list an index refers
to. Tools without that keyword are called exactly as before.

`ToolRunner` calls tools concurrently in a thread pool, enforces each call's timeout, and turns every
failure into an error text instead of an exception, so a rollout never stops on a tool:

- the tool raised:                 ``[text_search error: raised ValueError: boom]`` (any BaseException:
                                   a tool's ``sys.exit`` or its own KeyboardInterrupt ends the call, not
                                   the run; the user's Ctrl-C reaches the main thread, never a tool's)
- it ran past its timeout:         ``[text_search error: timed out after 2.0 s]``
- it returned something else:      ``[text_search error: returned str, not ToolResult]``
- its ToolResult is malformed:     ``[text_search error: returned a ToolResult with ...]``

and the agent loop uses ``[image_search refused: ...]`` for calls it does not make (call limits).
A call that times out cannot be killed (Python threads cannot be); its worker is abandoned and the
pool is replaced once half of its workers are stuck. Counters per tool: `ToolStats`.
"""

from __future__ import annotations

import inspect
import threading
import time
from concurrent.futures import FIRST_COMPLETED, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from typing import Any, Mapping, Protocol, Sequence, runtime_checkable

# Where a tool wants one of its returned images placed in its text (in order). With no marker the
# images go before the text. The marker count must be 0 or the number of images.
IMAGE_MARKER = "<tool_image>"


def marked_parts(text: str, n_images: int) -> list[dict]:
    """Message content parts of `text`, with an image part at each IMAGE_MARKER (or all `n_images` first when
    there is no marker), empty text parts dropped: the one layout of an observation turn, shared by the agent
    loop and every builder of SFT samples that must encode what the loop builds."""
    if IMAGE_MARKER in text:
        pieces = text.split(IMAGE_MARKER)
        parts = [{"type": "text", "text": pieces[0]}]
        for p in pieces[1:]:
            parts += [{"type": "image"}, {"type": "text", "text": p}]
    else:
        parts = [{"type": "image"}] * n_images + [{"type": "text", "text": text}]
    return [p for p in parts if p["type"] == "image" or p["text"]]


@dataclass
class ToolResult:
    text: str
    images: list = field(default_factory=list)  # PIL images, shown to the model in the next turn


@runtime_checkable
class Tool(Protocol):
    name: str

    def __call__(self, query: str, *, images: list) -> ToolResult: ...


def error_text(tool: str, reason: str) -> str:
    """The observation a failed call produces, e.g. '[text_search error: timed out after 2.0 s]'."""
    return f"[{tool} error: {reason}]"


def refusal_text(tool: str, reason: str) -> str:
    """The observation a call the loop does not make produces, e.g. '[image_search refused: ...]'."""
    return f"[{tool} refused: {reason}]"


@dataclass
class ToolStats:
    calls: int = 0  # calls made (refusals excluded)
    failures: int = 0  # raised, timed out or returned garbage
    timeouts: int = 0
    refusals: int = 0  # requested but not made (call limits, unknown tool)
    total_latency_s: float = 0.0  # over calls made; a timed-out call counts its timeout
    max_latency_s: float = 0.0

    @property
    def mean_latency_s(self) -> float:
        return self.total_latency_s / self.calls if self.calls else 0.0

    def as_dict(self) -> dict[str, float]:
        return {"calls": self.calls, "failures": self.failures, "timeouts": self.timeouts,
                "refusals": self.refusals, "mean_latency_s": self.mean_latency_s,
                "max_latency_s": self.max_latency_s}


@dataclass
class ToolOutcome:
    tool: str
    query: str
    result: ToolResult | None  # None when the call failed
    error: str | None  # the reason, e.g. "timed out after 2.0 s"; None on success
    latency_s: float

    @property
    def ok(self) -> bool:
        return self.error is None

    @property
    def error_text(self) -> str | None:
        return None if self.error is None else error_text(self.tool, self.error)


def _is_image(x) -> bool:
    try:
        from PIL import Image
    except ImportError:  # pragma: no cover - PIL is a dependency of the processors
        return False
    return isinstance(x, Image.Image)


def validate_result(result: Any) -> str | None:
    """Why `result` is not a usable ToolResult, or None when it is."""
    if not isinstance(result, ToolResult):
        return f"returned {type(result).__name__}, not ToolResult"
    if not isinstance(result.text, str):
        return f"returned a ToolResult whose text is {type(result.text).__name__}, not str"
    if not isinstance(result.images, (list, tuple)) or not all(_is_image(im) for im in result.images):
        return "returned a ToolResult whose images are not a list of PIL images"
    markers = result.text.count(IMAGE_MARKER)
    if markers and markers != len(result.images):
        return f"returned a ToolResult with {markers} {IMAGE_MARKER} markers for {len(result.images)} images"
    return None


def _describe(exc: BaseException) -> str:
    msg = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
    msg = msg[:200]
    return f"raised {type(exc).__name__}: {msg}" if msg else f"raised {type(exc).__name__}"


class ToolRunner:
    """Calls tools concurrently with per-call timeouts; never raises because of a tool."""

    def __init__(self, tools: Sequence[Tool] | Mapping[str, Tool] = (), *, timeout_s: float = 30.0,
                 max_workers: int = 16):
        if timeout_s <= 0:
            raise ValueError(f"timeout_s must be > 0, got {timeout_s}")
        if isinstance(tools, Mapping):
            self.tools = dict(tools)
        else:
            self.tools = {}
            for t in tools:
                if t.name in self.tools:
                    raise ValueError(f"two tools are named {t.name!r}")
                self.tools[t.name] = t
        self.timeout_s = float(timeout_s)
        self.max_workers = max(1, int(max_workers))
        self.stats: dict[str, ToolStats] = {name: ToolStats() for name in self.tools}
        self._pool: ThreadPoolExecutor | None = None
        self._takes_context: dict[str, bool] = {}
        self._stuck = 0  # workers held by calls that timed out and are still running
        self._lock = threading.Lock()

    def timeout_for(self, name: str) -> float:
        t = getattr(self.tools.get(name), "timeout_s", None)
        return float(t) if t else self.timeout_s

    def takes_context(self, name: str) -> bool:
        """Whether tool `name` accepts a ``context`` keyword (checked once per tool)."""
        if name not in self._takes_context:
            try:
                params = inspect.signature(self.tools[name]).parameters
            except (TypeError, ValueError):  # pragma: no cover - builtins without a signature
                params = {}
            self._takes_context[name] = "context" in params
        return self._takes_context[name]

    def _stats(self, name: str) -> ToolStats:
        return self.stats.setdefault(name, ToolStats())

    def refused(self, name: str) -> None:
        self._stats(name).refusals += 1

    def _executor(self) -> ThreadPoolExecutor:
        if self._pool is None or self._stuck * 2 >= self.max_workers:
            if self._pool is not None:
                self._pool.shutdown(wait=False, cancel_futures=True)
            self._pool = ThreadPoolExecutor(self.max_workers, thread_name_prefix="mmr1-tool")
            self._stuck = 0
        return self._pool

    def _unstick(self, _future) -> None:
        with self._lock:
            self._stuck = max(0, self._stuck - 1)

    def run(self, calls: Sequence[tuple]) -> list[ToolOutcome]:
        """Make the (tool name, query, images[, context]) calls concurrently; one outcome per call, in order.
        A context (when not None) reaches only tools that take a ``context`` keyword."""
        outcomes: list[ToolOutcome | None] = [None] * len(calls)
        started: list[float | None] = [None] * len(calls)
        todo = []
        for i, (name, query, *_) in enumerate(calls):
            if name not in self.tools:
                outcomes[i] = ToolOutcome(name, query, None, "no such tool", 0.0)
                self._record(outcomes[i])
            else:
                todo.append(i)
        if not todo:
            return outcomes  # type: ignore[return-value]
        pool = self._executor()

        def job(i: int):
            name, query, images = calls[i][:3]
            context = calls[i][3] if len(calls[i]) > 3 else None
            kwargs = {"context": context} if context is not None and self.takes_context(name) else {}
            started[i] = time.monotonic()
            try:
                res = self.tools[name](query, images=list(images or []), **kwargs)
                return res, None, time.monotonic() - started[i]
            except BaseException as e:  # noqa: BLE001 - a tool's failure (sys.exit included) is an observation
                return None, e, time.monotonic() - started[i]

        submitted = time.monotonic()
        futures = {i: pool.submit(job, i) for i in todo}
        timeout = {i: self.timeout_for(calls[i][0]) for i in todo}
        # A call still queued behind busy (or stuck) workers gives up after this long.
        waves = -(-len(todo) // self.max_workers) + 1
        queue_limit = {i: timeout[i] * waves for i in todo}
        pending = set(todo)
        while pending:
            now = time.monotonic()
            for i in sorted(pending):
                f, name, query = futures[i], calls[i][0], calls[i][1]
                if f.done():
                    res, exc, lat = f.result()
                    err = _describe(exc) if exc is not None else validate_result(res)
                    outcomes[i] = ToolOutcome(name, query, None if err else res, err, lat)
                elif started[i] is not None and now - started[i] >= timeout[i]:
                    outcomes[i] = ToolOutcome(name, query, None, f"timed out after {timeout[i]:g} s", timeout[i])
                    with self._lock:
                        self._stuck += 1
                    f.add_done_callback(self._unstick)
                elif started[i] is None and now - submitted >= queue_limit[i]:
                    if not f.cancel() and started[i] is not None:
                        continue  # it just started: give it its own timeout
                    outcomes[i] = ToolOutcome(name, query, None, f"timed out after {timeout[i]:g} s "
                                              "(no free worker)", timeout[i])
                else:
                    continue
                self._record(outcomes[i])
                pending.discard(i)
            if pending:
                now = time.monotonic()
                deadlines = [started[i] + timeout[i] if started[i] is not None else submitted + queue_limit[i]
                             for i in pending]
                wait([futures[i] for i in pending], timeout=max(0.0, min(0.05, min(deadlines) - now)),
                     return_when=FIRST_COMPLETED)
        return outcomes  # type: ignore[return-value]

    def _record(self, o: ToolOutcome) -> None:
        s = self._stats(o.tool)
        s.calls += 1
        s.failures += not o.ok
        s.timeouts += bool(o.error and o.error.startswith("timed out"))
        s.total_latency_s += o.latency_s
        s.max_latency_s = max(s.max_latency_s, o.latency_s)

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=False, cancel_futures=True)
            self._pool = None


__all__ = ["IMAGE_MARKER", "Tool", "ToolOutcome", "ToolResult", "ToolRunner", "ToolStats", "error_text",
           "refusal_text", "validate_result"]
