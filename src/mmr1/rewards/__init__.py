"""Answer extraction, answer checking and format checks: the pure core every reward and `mmr1 eval` use."""

from .checkers import (
    KINDS,
    check_answer,
    choice_equal,
    clean_math,
    exact_match,
    math_equal,
    normalize_text,
    number_equal,
    resolve_kind,
    score_completion,
    substring_match,
    to_number,
)
from .extract import extract_answer, extract_choice
from .format import tag_format, think_answer_format

__all__ = [
    "KINDS", "check_answer", "choice_equal", "clean_math", "exact_match", "extract_answer", "extract_choice",
    "math_equal", "normalize_text", "number_equal", "resolve_kind", "score_completion", "substring_match",
    "tag_format", "think_answer_format", "to_number",
]
