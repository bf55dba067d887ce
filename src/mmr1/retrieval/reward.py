"""Retrv-R1's output format, inspection-call parsing and reward (METHODS §1.3, §1.5, §1.6).

The output format (the paper's exact one is not published; this is the choice, METHODS §1.6):

    <think> ...reasoning, with inspection calls <inspection-index-start>3<inspection-index-end>... </think>
    <answer>3</answer>

- Candidates are numbered from 1 (``base=1``), the way listwise rerank prompts show them: "(1) ... (K)".
- Inspection calls sit inside ``<think>``; each holds one integer index (surrounding spaces allowed).
  When the model emits one, the agent loop appends that candidate's full tokens (loss mask 0) and resumes.
- The answer is one integer index, bare: ``<answer>3</answer>`` (no brackets).
- Format checks run on the MODEL'S text only; whatever the loop injected after an inspection call is
  not part of it (the loop knows those spans and leaves them out).

Reward (§1.5): ``r = w_f · r_format + 1(correct) · (1 − λ · N_ins / K)``, with λ from the curriculum
λ_i = i / N_iter (`mmr1.algos.schedules.RetrvLambda`) or fixed (the ablation). N_ins counts every
inspection call the loop served (repeats included: each cost context), so with the inspection limit
<= K the efficiency factor stays in [1 − λ, 1].
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from ..algos.schedules import Constant, RetrvLambda

INSPECT_START, INSPECT_END = "<inspection-index-start>", "<inspection-index-end>"
SPECIAL_TOKENS = (INSPECT_START, INSPECT_END)

_CALL = re.compile(re.escape(INSPECT_START) + r"(.*?)" + re.escape(INSPECT_END), re.DOTALL)
_LAYOUT = re.compile(r"\s*<think>(.*)</think>\s*<answer>(.*)</answer>\s*", re.DOTALL)
_INT = re.compile(r"\s*([+-]?\d+)\s*")


@dataclass(frozen=True)
class Inspection:
    """One parsed inspection call: ``position`` is the 0-based candidate row, or None with a ``reason``."""

    raw: str
    index: int | None = None  # as written (base-numbered)
    position: int | None = None
    reason: str | None = None

    @property
    def ok(self) -> bool:
        return self.reason is None


def parse_index(raw: str, k: int, base: int = 1, what: str = "inspection index") -> tuple[int | None, str | None]:
    """(0-based position, None) for a valid index in [base, base + k - 1], else (None, reason)."""
    if not raw.strip():
        return None, f"empty {what}: write one number from {base} to {base + k - 1}"
    m = _INT.fullmatch(raw)
    if m is None:
        shown = raw.strip() if len(raw.strip()) <= 20 else raw.strip()[:20] + "..."
        return None, f"{what} {shown!r} is not a number: write one number from {base} to {base + k - 1}"
    idx = int(m.group(1))
    if not base <= idx <= base + k - 1:
        return None, f"{what} {idx} is out of range: there are {k} candidates, numbered {base} to {base + k - 1}"
    return idx - base, None


def parse_inspection(raw: str, k: int, base: int = 1) -> Inspection:
    """Parse the text between the inspection tags."""
    pos, reason = parse_index(raw, k, base)
    return Inspection(raw=raw, index=None if pos is None else pos + base, position=pos, reason=reason)


def pending_inspection(turn: str, k: int, base: int = 1) -> Inspection | None:
    """The call a generated turn ends with (the loop stops generation at INSPECT_END), or None.

    Only a call at the very end (trailing whitespace allowed) is pending: one in the middle of a turn was
    not stopped at, so it was never served.
    """
    stripped = turn.rstrip()
    if not stripped.endswith(INSPECT_END):
        return None
    start = stripped.rfind(INSPECT_START)
    if start < 0:
        return Inspection(raw="", reason=f"{INSPECT_END} without a preceding {INSPECT_START}")
    return parse_inspection(stripped[start + len(INSPECT_START):-len(INSPECT_END)], k, base)


def find_inspections(text: str, k: int, base: int = 1) -> list[Inspection]:
    """Every complete inspection call in `text`, in order."""
    return [parse_inspection(m.group(1), k, base) for m in _CALL.finditer(text)]


def inspection_feedback(ins: Inspection) -> str:
    """The observation the loop injects for a bad call (instead of candidate tokens): one clear line."""
    return f"Invalid inspection: {ins.reason}."


@dataclass(frozen=True)
class FormatCheck:
    ok: bool
    reason: str = ""
    answer: int | None = None  # 0-based position of the answered candidate when ok


def check_format(text: str, k: int, base: int = 1) -> FormatCheck:
    """Whether the model's text follows the format above (answer and every call in range 1..K)."""
    if not isinstance(text, str):
        return FormatCheck(False, "not a string")
    for tag in ("<think>", "</think>", "<answer>", "</answer>"):
        if text.count(tag) != 1:
            return FormatCheck(False, f"{tag} occurs {text.count(tag)} times, expected once")
    m = _LAYOUT.fullmatch(text)
    if m is None:
        return FormatCheck(False, "expected <think>...</think><answer>N</answer> and nothing around it")
    think, answer = m.groups()
    if not re.search(r"[^\W_]", _CALL.sub("", think)):
        return FormatCheck(False, "empty reasoning in <think>")
    if think.count(INSPECT_START) != think.count(INSPECT_END) or \
            len(_CALL.findall(think)) != think.count(INSPECT_START):
        return FormatCheck(False, "unbalanced inspection tags")
    if INSPECT_START in answer or INSPECT_END in answer:
        return FormatCheck(False, "inspection call inside <answer>")
    for ins in find_inspections(think, k, base):
        if not ins.ok:
            return FormatCheck(False, ins.reason or "")
    pos, reason = parse_index(answer, k, base, what="answer")
    if reason:
        return FormatCheck(False, reason)
    return FormatCheck(True, "", pos)


def efficiency_reward(correct: bool, n_inspections: int, k: int, lam: float) -> float:
    """r_r = 1(correct) · (1 − λ · N_ins / K)."""
    if k < 1:
        raise ValueError(f"K must be >= 1, got {k}")
    if n_inspections < 0:
        raise ValueError(f"N_ins must be >= 0, got {n_inspections}")
    return (1.0 - lam * n_inspections / k) if correct else 0.0


def retrv_reward(text: str, gold: int, k: int, n_inspections: int, lam: float, base: int = 1,
                 format_weight: float = 1.0) -> dict:
    """The total reward of one completion: {"reward", "format", "correct", "efficiency", "answer", "reason"}.

    `gold` is the 0-based position of the right candidate among the K shown. A completion that breaks the
    format earns no format reward; it is still scored on its answer if one can be read (a clean index in
    <answer>), as the two parts are separate in the paper.
    """
    fmt = check_format(text, k, base)
    answer = fmt.answer
    if answer is None:
        m = re.search(r"<answer>(.*?)</answer>", text or "", re.DOTALL)
        answer = parse_index(m.group(1), k, base)[0] if m else None
    correct = answer is not None and answer == gold
    eff = efficiency_reward(correct, n_inspections, k, lam)
    return {"reward": format_weight * float(fmt.ok) + eff, "format": float(fmt.ok), "correct": correct,
            "efficiency": eff, "answer": answer, "reason": fmt.reason}


def lambda_schedule(kind: str = "curriculum", fixed: float = 0.5):
    """λ as a `Schedule` (call it with (step, total)): curriculum λ_i = i / N_iter, or a constant."""
    if kind == "curriculum":
        return RetrvLambda()
    if kind == "fixed":
        return Constant(float(fixed))
    raise ValueError(f"lambda schedule must be 'curriculum' or 'fixed', got {kind!r}")


__all__ = ["FormatCheck", "INSPECT_END", "INSPECT_START", "Inspection", "SPECIAL_TOKENS", "check_format",
           "efficiency_reward", "find_inspections", "inspection_feedback", "lambda_schedule", "parse_index",
           "parse_inspection", "pending_inspection", "retrv_reward"]
