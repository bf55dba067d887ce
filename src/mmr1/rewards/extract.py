"""Pull the graded answer out of a completion.

Only the LAST closed `<answer>…</answer>` counts: a model that writes several answer blocks is
graded on its final word (the format check rejects such outputs anyway, so a format-gated reward
gives them 0). Text outside the tags is never read, nor is an answer tag inside `<think>…</think>`:
only what follows the last `</think>` is searched, and an unterminated `<think>` yields None.

`fallback=True` is for grading evaluations whose published scorer reads the whole output (R1-V's GeoQA
script runs math-verify's default `parse` on it): when no answer tag yields an answer, the final answer
is the one that parse finds anywhere in the text. Training rewards never fall back: there the strict
format is the point.
"""

from __future__ import annotations

import logging
import re
import string
import threading

from .normalize import normalize_text, to_number, unwrap

_OPEN, _CLOSE = "<answer>", "</answer>"
# Vision-R1 answers read `<answer> Final Answer:X </answer>`.
_FINAL_ANSWER = re.compile(r"^\s*final\s*answer\s*[:：]\s*", re.IGNORECASE)


def mv_timeout() -> int | None:
    """math-verify's timeouts use signal.alarm, which raises outside the main thread: none there."""
    return 3 if threading.current_thread() is threading.main_thread() else None


class _DropTimeoutWarning(logging.Filter):
    """Running without math-verify's signal timeout off the main thread is deliberate; don't warn about it."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "Timeout is disabled" not in record.getMessage()


for _name in ("math_verify.parser", "math_verify.grader"):
    logging.getLogger(_name).addFilter(_DropTimeoutWarning())


def fallback_answer(text: str | None) -> str | None:
    """The final answer R1-V's GeoQA evaluation reads from a whole output: math-verify's `parse` with its
    default extraction (LaTeX and plain expressions), as the matched text. None when it finds nothing."""
    if not isinstance(text, str) or not text.strip():
        return None
    from math_verify import parse

    try:
        found = parse(text, parsing_timeout=mv_timeout())
    except Exception:
        return None
    if len(found) < 2 or not isinstance(found[1], str) or not found[1].strip():
        return None
    return found[1].strip()


def extract_answer(text: str | None, fallback: bool = False) -> str | None:
    """Content of the last `<answer>…</answer>`, stripped, without a leading `Final Answer:`.

    None when there is no closed answer tag after the thinking; "" for an empty one (never scores).
    With `fallback`, a missing answer tag is replaced by `fallback_answer` of the whole text.
    """
    if not isinstance(text, str):
        return None
    tagged = _tagged_answer(text)
    if tagged is None and fallback:
        return fallback_answer(text)
    return tagged


def _tagged_answer(text: str) -> str | None:
    think_end = text.rfind("</think>")
    if think_end >= 0:
        text = text[think_end + len("</think>"):]
    elif "<think>" in text:
        return None
    end = text.rfind(_CLOSE)
    if end < 0:
        return None
    start = text.rfind(_OPEN, 0, end)
    if start < 0:
        return None
    return _FINAL_ANSWER.sub("", text[start + len(_OPEN):end].strip(), count=1).strip()


# A capital letter standing alone; "I"/"A" followed by a lowercase word are the pronoun/article.
_LETTER = re.compile(r"(?<![A-Za-z0-9])([A-Z])(?![A-Za-z0-9])")
_WORDLIKE = re.compile(r"\s+(?!(?:or|and|nor)\b)[a-z]")
_BARE = re.compile(r"[(\[]?([A-Za-z])[)\]]?[.:]?")
_LABELLED = re.compile(r"[(\[]?([A-Z])(?:[)\]]|[.:])\s*(.+)", re.S)


def extract_choice(text: str | None, choices: list[str] | None = None) -> str | None:
    """A multiple-choice letter from "B", "(B)", "B.", "B) 12", "The answer is B", or a choice's text.

    None when there is no letter or it is ambiguous ("A or B", several letters), when the letter
    is out of range, or when a labelled answer contradicts itself ("B. <text of C>").
    """
    if not isinstance(text, str):
        return None

    letters = string.ascii_uppercase[: len(choices)] if choices else string.ascii_uppercase
    s = unwrap(text)
    if not s:
        return None

    def same(a: str, b: str) -> bool:
        x, y = to_number(a), to_number(b)
        if x is not None and y is not None:
            return abs(x - y) <= 1e-9 * max(1.0, abs(y))
        return normalize_text(a) != "" and normalize_text(a) == normalize_text(b)

    m = _BARE.fullmatch(s)
    if m:
        letter = m.group(1).upper()
        return letter if letter in letters else None
    m = _LABELLED.fullmatch(s)
    if m and m.group(1) in letters:
        letter, rest = m.group(1), m.group(2)
        if choices:
            hits = {letters[i] for i, c in enumerate(choices) if same(rest, str(c))}
            if hits and letter not in hits:
                return None
        return letter
    if choices:
        hits = [letters[i] for i, c in enumerate(choices) if same(s, str(c))]
        if len(hits) == 1:
            return hits[0]
    found = {m.group(1) for m in _LETTER.finditer(s)
             if not (m.group(1) in "AI" and _WORDLIKE.match(s, m.end()))}
    found &= set(letters)
    return found.pop() if len(found) == 1 else None
