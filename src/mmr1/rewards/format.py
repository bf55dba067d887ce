"""Format checks: a regex fullmatch plus exact tag counts.

The count check matters because a non-greedy fullmatch alone accepts outputs with extra tags
(e.g. two `<answer>` blocks, the second one being what the grader reads).
"""

from __future__ import annotations

import re

_THINK_ANSWER = re.compile(r"\s*<think>(.*?)</think>\s*<answer>(.*?)</answer>\s*", re.DOTALL)
_THINK_ANSWER_COUNTS = {"<think>": 1, "</think>": 1, "<answer>": 1, "</answer>": 1}
_FINAL_ANSWER = re.compile(r"^\s*final\s*answer\s*[:：]", re.IGNORECASE)
_WORD_CHAR = re.compile(r"[^\W_]")  # a letter or digit in any script


def tag_format(text: str, pattern: str | re.Pattern, tag_counts: dict[str, int]) -> bool:
    """True when `text` fullmatches `pattern` (DOTALL) and each literal tag occurs exactly as often as given."""
    if not isinstance(text, str):
        return False
    rx = pattern if isinstance(pattern, re.Pattern) else re.compile(pattern, re.DOTALL)
    if rx.fullmatch(text) is None:
        return False
    return all(text.count(tag) == n for tag, n in tag_counts.items())


def think_answer_format(text: str, strict: bool = True) -> bool:
    """`<think>…</think> <answer>…</answer>` and nothing else (surrounding whitespace allowed).

    Exactly one of each tag, a non-empty answer (`Final Answer:` alone counts as empty). With
    `strict`, the thinking must contain at least one letter or digit, so `<think> </think>` or
    `<think>...</think>` does not earn the format reward.
    """
    if not tag_format(text, _THINK_ANSWER, _THINK_ANSWER_COUNTS):
        return False
    think, answer = _THINK_ANSWER.fullmatch(text).groups()
    if not _FINAL_ANSWER.sub("", answer, count=1).strip():
        return False
    return not strict or _WORD_CHAR.search(think) is not None
