"""Text and number normalisation shared by answer extraction and the checkers (no imports from either).

`unwrap` strips answer wrappers, `normalize_text` is SQuAD's normalisation, `clean_math` / `to_number` read a
plain number out of an answer with its units, degree signs and left-hand side removed.
"""

from __future__ import annotations

import re
import string

_WRAPPERS = [
    re.compile(r"^\$+(.*?)\$+$", re.S),
    re.compile(r"^\\\((.*?)\\\)$", re.S),
    re.compile(r"^\\\[(.*?)\\\]$", re.S),
    re.compile(r"^\\(?:boxed|text|textbf|mathrm|mathbf)\{(.*)\}$", re.S),
    re.compile(r"^\*\*(.*?)\*\*$", re.S),  # markdown bold
]


def unwrap(s: str) -> str:
    """Strip `$…$`, `\\(…\\)`, `\\boxed{…}`, `\\text{…}`, `**…**` around a whole answer (repeatedly)."""
    s = s.strip()
    while True:
        for rx in _WRAPPERS:
            m = rx.fullmatch(s)
            if m:
                s = m.group(1).strip()
                break
        else:
            return s


_PUNCT = set(string.punctuation)
_ARTICLES = re.compile(r"\b(a|an|the)\b")


def normalize_text(s: str) -> str:
    """SQuAD normalisation: lower case, drop punctuation, drop a/an/the, collapse whitespace."""
    s = "".join(ch for ch in str(s).lower() if ch not in _PUNCT)
    return " ".join(_ARTICLES.sub(" ", s).split())


# ---------------------------------------------------------------- cleaning and numbers

_DEGREE = re.compile(r"\^\s*\{?\s*\\circ\s*\}?|\\circ\b|\\degree\b|[°º˚]")
_TEXT_CMD = re.compile(r"\\(?:text|mathrm|mbox|textrm|operatorname)\s*\{([^{}]*)\}")
_UNIT = (r"(?:square\s+|sq\.?\s*|cubic\s+)?(?:cm|mm|km|dm|m|meters?|metres?|inch(?:es)?|ft|feet|foot|yards?|"
         r"units?|degrees?|deg|seconds?|secs?|minutes?|mins?|hours?|hrs?|kg|percent|%|"
         r"平方厘米|平方米|立方厘米|立方米|厘米|毫米|分米|千米|公里|米|海里|秒|分钟|小时|度|元)")
_POWER = r"(?:\s*(?:\^\s*\{?\s*[23]\s*\}?\^?|[²³]))?"  # cm^2, cm^{2}, cm²
_TRAILING_UNIT = re.compile(rf"(?<=[\d\s}}).π])\s*{_UNIT}{_POWER}\s*$", re.IGNORECASE)
_THOUSANDS = re.compile(r"[-+]?\d{1,3}(?:,\d{3})+(?:\.\d+)?")
_NUM = r"[-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?"
_FLOAT = re.compile(_NUM)
_FRACTION = re.compile(rf"({_NUM})\s*(?:/|:)\s*({_NUM})")  # "1/2", and ratios "1:3"
_LATEX_FRAC = re.compile(rf"([-+]?)\\[dt]?frac\{{({_NUM})\}}\{{({_NUM})\}}")
_ANY_NUMBER = re.compile(r"(?<![\d.])-?\d+(?:\.\d+)?")


def clean_math(s: str) -> str:
    """Strip what does not change the value: `$`/`\\boxed{}` wrappers, `\\text{}`, degree signs, units,
    a trailing period, and a left-hand side (`x = 40` -> `40`, `a = 3*4 = 12` -> `12`)."""
    s = _TEXT_CMD.sub(r"\1", unwrap(str(s)))
    s = _DEGREE.sub("", s)
    rhs = re.split(r"=|≈|\\approx", s)[-1]
    s = rhs if rhs.strip() else s
    prev = None
    while prev != s:
        prev = s
        s = _TRAILING_UNIT.sub("", unwrap(s)).strip()
        s = s[:-1].strip() if s.endswith(".") else s
    return s


def to_number(s) -> float | None:
    """The value of a plain number ("40", "40.0", "1,000", "1/2", "\\frac{1}{2}", "140°", "5 cm"), else None."""
    if isinstance(s, (int, float)) and not isinstance(s, bool):
        return float(s)
    if not isinstance(s, str):
        return None
    s = clean_math(s).replace(" ", "")
    if _THOUSANDS.fullmatch(s):
        s = s.replace(",", "")
    try:
        if _FLOAT.fullmatch(s):
            return float(s)
        if m := _FRACTION.fullmatch(s):
            return float(m.group(1)) / float(m.group(2))
        if m := _LATEX_FRAC.fullmatch(s):
            v = float(m.group(2)) / float(m.group(3))
            return -v if m.group(1) == "-" else v
    except (ValueError, ZeroDivisionError, OverflowError):
        return None
    return None
