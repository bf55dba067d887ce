"""Pull the graded answer out of a completion.

Only the LAST closed `<answer>…</answer>` counts: a model that writes several answer blocks is
graded on its final word (the format check rejects such outputs anyway, so a format-gated reward
gives them 0). Text outside the tags is never read, nor is an answer tag inside `<think>…</think>`:
only what follows the last `</think>` is searched, and an unterminated `<think>` yields None.
"""

from __future__ import annotations

import re
import string

from .normalize import normalize_text, to_number, unwrap

_OPEN, _CLOSE = "<answer>", "</answer>"
# Vision-R1 answers read `<answer> Final Answer:X </answer>`.
_FINAL_ANSWER = re.compile(r"^\s*final\s*answer\s*[:：]\s*", re.IGNORECASE)


def extract_answer(text: str | None) -> str | None:
    """Content of the last `<answer>…</answer>`, stripped, without a leading `Final Answer:`.

    None when there is no closed answer tag after the thinking; "" for an empty one (never scores).
    """
    if not isinstance(text, str):
        return None
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
