"""Answer checkers: is an extracted answer right for a sample?

All pure functions. Anything that could make a wrong answer score is rejected up front: None or
empty predictions, hedges ("40 or 50", "A or B"), and for numbers a prediction with more than one
distinct number in it. math-verify runs without its signal-based timeout outside the main thread
(signals only work there), on short inputs only, inside try/except, with parses cached.
"""

from __future__ import annotations

import json
import math
import re
import string
from collections.abc import Mapping
from functools import lru_cache

from .extract import extract_answer, extract_choice, mv_timeout
from .normalize import _ANY_NUMBER, _THOUSANDS, clean_math, normalize_text, to_number, unwrap
from .format import think_answer_format

KINDS = ("auto", "math", "exact", "substring", "choice", "number", "r1v", "mathvista")

# ---------------------------------------------------------------- text (SQuAD / Search-R1 EM, SubEM)

def _as_list(answers) -> list[str]:
    if answers is None:
        return []
    if isinstance(answers, (str, int, float)):
        answers = [answers]
    return [str(a) for a in answers if a is not None]


def exact_match(pred: str | None, answers) -> bool:
    """Normalised prediction equals some normalised gold (any of the candidates)."""
    p = normalize_text(pred) if pred else ""
    return bool(p) and any(p == normalize_text(g) for g in _as_list(answers))


def substring_match(pred: str | None, answers) -> bool:
    """SubEM: some non-empty normalised gold occurs inside the normalised prediction.

    Note SubEM rewards a prediction that lists many candidates; use EM for rewards.
    """
    p = normalize_text(pred) if pred else ""
    return bool(p) and any((g := normalize_text(a)) and g in p for a in _as_list(answers))


# ---------------------------------------------------------------- numbers

def numbers_equal(p: float, g: float, precision: int | None = None) -> bool:
    """Equal up to 1e-6 relative; with `precision` (MathVista floats) both are rounded to that many decimals."""
    if precision is not None:
        return abs(round(p, precision) - round(g, precision)) < 0.5 * 10.0 ** -precision
    return math.isclose(p, g, rel_tol=1e-6, abs_tol=1e-9)


# Hedges: "40 or 50", "40, 50", "A; B" — more alternatives in the prediction than in the gold.
_ALTERNATIVES = re.compile(r"\s*(?:,|;|\||\bor\b|\band\b|或)\s*|\n+")


def _n_alternatives(s: str) -> int:
    s = _THOUSANDS.sub(lambda m: m.group(0).replace(",", ""), s)
    return sum(1 for part in _ALTERNATIVES.split(s) if part and part.strip())


def is_hedge(pred: str, gold: str) -> bool:
    return _n_alternatives(pred) > max(1, _n_alternatives(gold))


# ---------------------------------------------------------------- math-verify

_TOO_HARD = re.compile(r"\^\s*\{?\s*[\d.]{4,}|(?:\^[^^]*){3,}|!")  # huge powers / towers / factorials hang sympy


def _latexify(s: str) -> str:
    """Plain-text maths the models write ("2√3", "sqrt(3)/2", "25π/4", "2**3") in LaTeX for math-verify."""
    s = re.sub(r"√\s*\{", r"\\sqrt{", s)
    s = re.sub(r"√\s*\(([^()]*)\)", r"\\sqrt{\1}", s)
    s = re.sub(r"√\s*([\d.]+|[a-zA-Z])", r"\\sqrt{\1}", s)
    s = re.sub(r"(?<![A-Za-z\\])sqrt\s*\(([^()]*)\)", r"\\sqrt{\1}", s)
    s = re.sub(r"(?<![A-Za-z\\])pi(?![A-Za-z])|π", r"\\pi ", s)
    return s.replace("×", r"\times ").replace("÷", "/").replace("·", r"\cdot ")


def _powers(s: str) -> str:
    """Python's `**` and the superscripts ² ³ as `^`: math-verify reads `2**2` as 2 otherwise."""
    return re.sub(r"\*\*", "^", s).replace("²", "^2").replace("³", "^3")


@lru_cache(maxsize=1 << 16)
def _mv_parse(s: str) -> tuple:
    s = _powers(s)
    if not s or len(s) > 200 or _TOO_HARD.search(s):
        return ()
    from math_verify import ExprExtractionConfig, LatexExtractionConfig, parse

    try:
        out = parse(f"${_latexify(s)}$", [LatexExtractionConfig(), ExprExtractionConfig()],
                    parsing_timeout=mv_timeout())
    except Exception:
        return ()
    return tuple(out)


@lru_cache(maxsize=1 << 16)
def _mv_equal(pred: str, gold: str) -> bool:
    p, g = _mv_parse(pred), _mv_parse(gold)
    if not p or not g:
        return False
    from math_verify import verify

    try:
        return bool(verify(list(g), list(p), timeout_seconds=mv_timeout()))
    except Exception:
        return False


def _squash(s: str) -> str:
    return re.sub(r"\s+|\\left|\\right|\\!|\\,|[{}]", "", s).lower()


def math_equal(pred: str | None, gold) -> bool:
    """Mathematical equality: cleaned string match, then numbers, then math-verify (LaTeX and plain forms)."""
    if pred is None or gold is None:
        return False
    pred, gold = str(pred), str(gold)
    if not pred.strip() or is_hedge(pred, gold):
        return False
    p, g = clean_math(pred), clean_math(gold)
    if not p:
        return False
    if _squash(p) == _squash(g):
        return True
    pn, gn = to_number(p), to_number(g)
    if pn is not None and gn is not None:
        return numbers_equal(pn, gn)
    return _mv_equal(p, g)


def r1v_equal(pred: str, gold: str) -> bool:
    """R1-V's accuracy_reward (OThink-MR1 §3.1): math-verify first, then exact equality of the stripped
    answer-tag contents. R1-V hands math-verify the whole completion; this hands it the extracted answer,
    which is the same number unless the answer tag holds none and the reasoning does. Units and degree
    signs are stripped from both sides first (GeoQA's gold reads "140°", "5cm")."""
    if _mv_equal(clean_math(pred), clean_math(gold)) or pred.strip() == gold.strip():
        return True
    pn, gn = to_number(pred), to_number(gold)
    return pn is not None and gn is not None and numbers_equal(pn, gn)


# What makes the numbers in a prediction something other than its value: powers, roots, products,
# fractions, pi, a coefficient on a variable or a bracket, a sum or difference ("4.0 + PE + PF").
_OPERATOR = re.compile(r"[\^*/√π×÷·]|\\[a-zA-Z]+|sqrt|\bpi\b|\d[a-zA-Z(]|[\w)]\s*[+\-−]\s*[\w(]")
_OPTION_LABEL = re.compile(r"[(\[]?[A-Z][)\]]?[.:)]\s*\S")


def number_equal(pred: str | None, gold, precision: int | None = None) -> bool:
    """A numeric answer: the prediction must hold one number (a fraction counts as one) equal to the gold.

    More than one distinct number ("40 or 50", "3, 4", "0{3}{5}") never scores. A prediction that
    is not a plain number, or a gold that is not one, falls back to math_equal ("\\sqrt{4}" == 2)
    without the precision rule.
    """
    if pred is None or not str(pred).strip() or gold is None or is_hedge(str(pred), str(gold)):
        return False
    gn = to_number(gold)
    if gn is None:
        return math_equal(pred, gold)
    p = clean_math(str(pred))
    pn = to_number(p)
    if pn is not None:
        return numbers_equal(pn, gn, precision)
    if _OPTION_LABEL.match(p):  # "C. 8" to a question without options: an option that does not exist
        return False
    if _OPERATOR.search(p):  # "2.0^2", "√4", "2x": the number in it is not the value
        return math_equal(p, gold)
    found = {float(x) for x in _ANY_NUMBER.findall(p)}
    if len(found) > 1:
        return False
    if len(found) == 1 and numbers_equal(found.pop(), gn, precision):
        return True
    return math_equal(p, gold)


# ---------------------------------------------------------------- choices

def _gold_letter(gold: str, choices: list[str] | None) -> str | None:
    g = unwrap(str(gold)).strip().rstrip(".")
    letters = string.ascii_uppercase[: len(choices)] if choices else string.ascii_uppercase
    m = re.fullmatch(r"[(\[]?([A-Z])[)\]]?", g)
    if m and m.group(1) in letters:
        return m.group(1)
    return extract_choice(g, choices) if choices else None


def choice_equal(pred: str | None, gold, choices: list[str] | None) -> bool:
    """Same option letter; the gold may be the letter or the option's text. Several letters never score."""
    pl = extract_choice(pred, choices)
    return pl is not None and pl == _gold_letter(gold, choices)


# ---------------------------------------------------------------- MathVista's scorer

def strip_unit(pred: str, unit: str | None) -> str:
    """`pred` without a trailing `unit` (MathVista's per-question unit: "g", "years", "cm^2")."""
    if not unit or not unit.strip():
        return pred
    return re.sub(rf"\s*(?:\(?\s*{re.escape(unit.strip())}\s*\)?)\s*\.?\s*$", "", pred.strip(),
                  flags=re.IGNORECASE) or pred


def mathvista_equal(pred: str, gold: str, choices: list[str] | None, answer_type: str | None,
                    precision: int | None, unit: str | None = None) -> bool:
    """MathVista's `normalize_extracted_answer` + `safe_equal` (evaluation/calculate_score.py), on our extraction.

    Options: the letter, case-insensitive ("e", "(e)"), or the option's text; MathVista's nearest-option
    (Levenshtein) mapping is left out on purpose, so a hedge never lands on an option. integer:
    `int(float(pred)) == gold` (MathVista truncates: "1000.4" is 1000). float: both rounded to `precision`
    decimals. list: the same text without spaces. The question's unit is stripped from the prediction.
    """
    if is_hedge(pred, gold):
        return False
    if choices:
        return choice_equal(pred, gold, choices)
    atype = (answer_type or "").lower()
    p = strip_unit(unwrap(pred), unit)
    if atype == "list":
        return re.sub(r"\s+", "", p) == re.sub(r"\s+", "", str(gold))
    pn, gn = to_number(p), to_number(gold)
    if atype == "integer" and pn is not None and gn is not None:
        return math.isfinite(pn) and int(pn) == int(gn)
    if atype == "float" and pn is not None and gn is not None:
        return numbers_equal(pn, gn, precision)
    return number_equal(p, gold, precision) if gn is not None else exact_match(p, [gold])


# ---------------------------------------------------------------- dispatch

def _fields(x) -> tuple[list[str], list[str] | None, str | None, int | None]:
    """(golds, choices, answer_type, precision) from a Sample, a dict, a string/number or a list of golds."""
    if isinstance(x, Mapping):
        keys = [k for k in ("answers", "answer", "ground_truth", "solution") if x.get(k) not in (None, "", [])]
        golds = _as_list(x[keys[0]]) if keys else []
        cands = x.get("candidate_answers")
        if isinstance(cands, str):
            try:
                cands = json.loads(cands)
            except ValueError:
                cands = [cands]
        golds += _as_list(cands)
        choices, atype, prec = x.get("choices"), x.get("answer_type"), x.get("precision")
    elif hasattr(x, "answers"):
        golds, choices = _as_list(x.answers), getattr(x, "choices", None)
        atype, prec = getattr(x, "answer_type", None), getattr(x, "precision", None)
    else:
        golds, choices, atype, prec = _as_list(x), None, None, None
    # R1-V style solutions carry the gold in answer tags: "<answer> 3 </answer>"
    golds = [extract_answer(g) if "</answer>" in g else g for g in golds]
    return [g for g in golds if g and g.strip()], (list(choices) if choices else None), atype, prec


_MATH_WORDS = re.compile(r"\\[a-zA-Z]+|sqrt|pi|cm|mm|km|m\b|units?|degrees?")


def _looks_math(g: str) -> bool:
    rest = _MATH_WORDS.sub("", clean_math(g))
    return bool(re.search(r"[\d√π^]", rest)) and not re.search(r"[A-Za-z]{2,}", rest)


def resolve_kind(golds: list[str], choices, answer_type: str | None) -> str:
    """auto: choice when there are options, number for integer/float answers or numeric golds, math
    for formula-like golds, exact otherwise."""
    atype = (answer_type or "").lower()
    if choices or atype in {"multi_choice", "multiple_choice", "choice"}:
        return "choice"
    if atype in {"integer", "int", "float", "number"} or (golds and all(to_number(g) is not None for g in golds)):
        return "number"
    if golds and any(_looks_math(g) for g in golds):
        return "math"
    return "exact"


def check_answer(pred: str | None, sample_or_fields, kind: str = "auto") -> bool:
    """Is `pred` (an already extracted answer) right? None or empty never is.

    `sample_or_fields`: a Sample, a dict (answers/answer/ground_truth/solution, candidate_answers,
    choices, answer_type, precision), or the gold answer(s) themselves.
    """
    if kind not in KINDS:
        raise ValueError(f"unknown checker kind {kind!r}; expected one of {KINDS}")
    if pred is None or not str(pred).strip():
        return False
    pred = str(pred)
    golds, choices, atype, prec = _fields(sample_or_fields)
    if not golds:
        return False
    x = sample_or_fields
    meta = (x.get("meta") or {}) if isinstance(x, Mapping) else (getattr(x, "meta", None) or {})
    if kind == "auto":
        # a sample that names its benchmark's scorer is graded by it (MathVista's loader sets "mathvista")
        kind = meta.get("scorer") if meta.get("scorer") in KINDS else resolve_kind(golds, choices, atype)
    if kind == "mathvista":
        qtype = (meta.get("question_type") or "").lower()
        atype = meta.get("answer_type", atype)
        opts = choices if (choices and qtype != "free_form") else None
        return any(mathvista_equal(pred, g, opts, atype, prec, meta.get("unit")) for g in golds)
    if kind == "exact":
        return exact_match(pred, golds)
    if kind == "substring":
        return substring_match(pred, golds)
    if kind == "choice":
        return any(choice_equal(pred, g, choices) for g in golds)
    if kind == "r1v":
        return any(r1v_equal(pred, g) for g in golds)
    if kind == "number":
        prec = None if (atype or "").lower() in {"integer", "int"} else prec
        return any(number_equal(pred, g, prec) for g in golds)
    return any(math_equal(pred, g) for g in golds)


def score_completion(completion: str, sample, kind: str = "auto", fallback: bool = False) -> dict:
    """{"extracted": last <answer> content or None, "correct": bool, "formatted": think/answer format ok}.

    `fallback`: without an answer tag, grade the final answer read from the whole output (`extract_answer`).
    """
    extracted = extract_answer(completion, fallback=fallback)
    return {"extracted": extracted, "correct": check_answer(extracted, sample, kind),
            "formatted": think_answer_format(completion) if isinstance(completion, str) else False}
