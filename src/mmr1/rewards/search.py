"""MMSearch-R1's reward over a whole multi-turn search trajectory (METHODS §4.3).

What is scored is the list of the trajectory's ASSISTANT turns, in order, as the paper's scorer gets it
(`mmsearch_r1_score.compute_score(prediction: list, ...)`: the verl reward manager recovers the
per-turn assistant strings by splitting the response at its mask runs). Observations (tool output and
the injected user text) are never read. A reward function receives one of:

- a list of turn strings;
- an object with ``.turns`` whose items have ``.text`` (`mmr1.rollout.agent.Trajectory`);
- one string: the turns joined by newlines (`Trajectory.text`). It is split back into turns after
  every ``</search>`` / ``</text_search>`` followed by a newline: the agent loop cuts a turn right after
  its first closing action tag and only a tool action lets the trajectory go on, so every turn but the
  last ends with one of those tags and none has one inside (`split_turns`).

Per-turn grammar [CODE `mmsearch_r1_score.py`], each checked on the stripped turn by a DOTALL regex
plus exact tag counts:

- answer turn:        ``^<reason>.*</reason>.*<answer>.*</answer>$``, one ``<reason>``/``</reason>``, one
  ``<answer>``/``</answer>``, no ``<search><img></search>``, no ``<text_search>``/``</text_search>``;
- image-search turn:  ``^<reason>.*</reason>.*<search><img></search>$``, one reason pair, one
  ``<search><img></search>``, no answer tag, no text-search tag;
- text-search turn:   ``^<reason>.*</reason>.*<text_search>.*</text_search>$``, one reason pair, one
  text-search pair, no answer tag, no ``<search><img></search>``.

Format = 1 only for [answer], [image search, answer], [text search, answer] and
[image search, text search, answer]. Searches counted: the turns before the last one that hold
``<search><img></search>`` or both text-search tags (a lone first turn is counted too, as in the
code); a turn with both counts once. The graded answer is the last ``<answer>(.*?)</answer>`` of the
LAST turn, stripped; Score = 1 when it matches the ground truth or a candidate answer after SQuAD
normalisation (EM: equal; SubEM: a gold inside the answer), else 0. An empty answer never scores.

Two penalty variants, as pure functions (p = search penalty, α = format weight, both 0.1 in the paper):

- v2 (`reward_v2`, the released scorer): ``Score *= (1 - p)`` once (or once per search with
  ``per_search``) only when a search was counted AND the answer is correct, then
  ``(1 - α)·Score + α·Format``. Correct without search 1.0, correct with search 0.91, wrong 0.1.
- v1 (`reward_v1`, the early image-search scorer, commit 15b1ee7): ``Score -= p`` whenever a search was
  used, right or wrong: ``0.9·(Score − 0.1) + 0.1·Format`` with search, else ``0.9·Score + 0.1·Format``.
  Its format check counts pairs over the whole assistant text (`format_v1`): 2 ``<reason>…</reason>``
  and 1 ``<answer>…</answer>`` when searching, else 1 and 1; the pairs are found with the code's
  non-DOTALL ``<reason>.*?</reason>``, so a reason that spans lines is not counted.

The penalty p can follow a schedule of the RL step (`SearchPenaltyWarmup`: −p → +p, a search bonus at
first); `SearchReward.step` is the step the trainer sets. `LLMJudge` is the optional model-judged Score
(the paper's GPT-4o Yes/No rubric, App. G.2) through any OpenAI-compatible endpoint.

Deviations from the code, all in degenerate cases: more than 3 turns (the code raises) scores format 0;
no turns gives reward α·0 + (1 − α)·0 = 0 (the code asserts); an empty or punctuation-only answer never
matches (the code would match it to a candidate that normalises to "").
"""

from __future__ import annotations

import logging
import re
import threading
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Callable

from ..algos.schedules import Schedule, make_schedule
from .checkers import _fields, exact_match, substring_match

log = logging.getLogger("mmr1")

IMAGE_SEARCH = "<search><img></search>"
TEXT_OPEN, TEXT_CLOSE = "<text_search>", "</text_search>"
REASON_OPEN, REASON_CLOSE = "<reason>", "</reason>"
ANSWER_OPEN, ANSWER_CLOSE = "<answer>", "</answer>"

_DIRECT = re.compile(r"<reason>.*</reason>.*<answer>.*</answer>", re.DOTALL)
_IMAGE = re.compile(r"<reason>.*</reason>.*<search><img></search>", re.DOTALL)
_TEXT = re.compile(r"<reason>.*</reason>.*<text_search>.*</text_search>", re.DOTALL)
_ANSWER = re.compile(r"<answer>(.*?)</answer>", re.DOTALL)
_TURN_END = re.compile(r"(?:</search>|</text_search>)\n")

MODES = ("EM", "SubEM")
VARIANTS = ("v2", "v1")


# ------------------------------------------------------------------------------------------ turns

def split_turns(text: str) -> list[str]:
    """Assistant turns from their newline-joined text (`Trajectory.text`): cut after every
    ``</search>\\n`` and ``</text_search>\\n`` (the newline is the joiner and is dropped)."""
    turns, start = [], 0
    for m in _TURN_END.finditer(text):
        turns.append(text[start:m.end() - 1])
        start = m.end()
    turns.append(text[start:])
    return turns


def as_turns(x: Any) -> list[str]:
    """The assistant turns of a trajectory given as a list of strings, a `Trajectory` (``.turns`` of
    objects with ``.text``) or their newline-joined text."""
    if isinstance(x, str):
        return split_turns(x)
    if hasattr(x, "turns"):
        x = x.turns
    if isinstance(x, Sequence):
        return [t if isinstance(t, str) else str(getattr(t, "text", t)) for t in x]
    raise TypeError(f"expected the assistant turns (list of str, Trajectory or str), got {type(x).__name__}")


def _counts(s: str, **tags: int) -> bool:
    return all(s.count(tag) == n for tag, n in tags.items())


def is_answer_turn(turn: str) -> bool:
    """``<reason>…</reason>…<answer>…</answer>``: one reason and one answer pair, no search tag."""
    s = turn.strip()
    return (_DIRECT.fullmatch(s) is not None
            and s.count(REASON_OPEN) == 1 and s.count(REASON_CLOSE) == 1
            and s.count(ANSWER_OPEN) == 1 and s.count(ANSWER_CLOSE) == 1
            and IMAGE_SEARCH not in s and TEXT_OPEN not in s and TEXT_CLOSE not in s)


def is_image_search_turn(turn: str) -> bool:
    """``<reason>…</reason>…<search><img></search>``: one reason pair, one image search, no answer, no text search."""
    s = turn.strip()
    return (_IMAGE.fullmatch(s) is not None
            and s.count(REASON_OPEN) == 1 and s.count(REASON_CLOSE) == 1 and s.count(IMAGE_SEARCH) == 1
            and ANSWER_OPEN not in s and ANSWER_CLOSE not in s and TEXT_OPEN not in s and TEXT_CLOSE not in s)


def is_text_search_turn(turn: str) -> bool:
    """``<reason>…</reason>…<text_search>…</text_search>``: one reason pair, one text-search pair, no answer
    or image search."""
    s = turn.strip()
    return (_TEXT.fullmatch(s) is not None
            and s.count(REASON_OPEN) == 1 and s.count(REASON_CLOSE) == 1
            and s.count(TEXT_OPEN) == 1 and s.count(TEXT_CLOSE) == 1
            and ANSWER_OPEN not in s and ANSWER_CLOSE not in s and IMAGE_SEARCH not in s)


def _image_searched(turn: str) -> bool:
    return IMAGE_SEARCH in turn


def _text_searched(turn: str) -> bool:
    return TEXT_OPEN in turn and TEXT_CLOSE in turn


@dataclass(frozen=True)
class TurnFormat:
    score: float  # 1.0 for an allowed turn sequence, else 0.0
    search_count: int  # turns counted as a search (a turn holding both kinds counts once)
    image_searches: int
    text_searches: int


def format_reward(turns: Sequence[str]) -> TurnFormat:
    """The v2 per-turn format check and search counts (see the module docstring)."""
    turns = [t.strip() for t in turns]
    n = len(turns)
    counted = turns if n == 1 else turns[:-1]
    ok = False
    if n == 1:
        ok = is_answer_turn(turns[0])
    elif n == 2:
        ok = (is_image_search_turn(turns[0]) or is_text_search_turn(turns[0])) and is_answer_turn(turns[1])
    elif n == 3:
        ok = is_image_search_turn(turns[0]) and is_text_search_turn(turns[1]) and is_answer_turn(turns[2])
    return TurnFormat(float(ok), sum(_image_searched(t) or _text_searched(t) for t in counted),
                      sum(_image_searched(t) for t in counted), sum(_text_searched(t) for t in counted))


_REASON_PAIR = re.compile(r"<reason>.*?</reason>")  # no DOTALL, as in the early code
_ANSWER_PAIR = re.compile(r"<answer>.*?</answer>")


def format_v1(turns: Sequence[str]) -> float:
    """The early scorer's format check over the newline-joined assistant text: 2 reason pairs and 1 answer
    pair when a search was used, else 1 and 1 (pairs on one line each, as its non-DOTALL regex finds them)."""
    s = "\n".join(turns)
    reasons, answers = len(_REASON_PAIR.findall(s)), len(_ANSWER_PAIR.findall(s))
    want = 2 if searched_v1(turns) else 1
    return float(reasons == want and answers == 1)


def searched_v1(turns: Sequence[str]) -> bool:
    """The early scorer's "search used": the search tag anywhere in the assistant text (text search added)."""
    s = "\n".join(turns)
    return _image_searched(s) or _text_searched(s)


def extract_final_answer(turns: Sequence[str]) -> str | None:
    """The last ``<answer>(.*?)</answer>`` of the LAST turn, stripped; None when it has none."""
    if not turns:
        return None
    found = _ANSWER.findall(turns[-1])
    return found[-1].strip() if found else None


# ------------------------------------------------------------------------------------ the formulas

def answer_score(answer: str | None, golds, mode: str = "EM") -> float:
    """1.0 when `answer` matches a gold (ground truth or candidate) after SQuAD normalisation, else 0.0.
    EM: equal; SubEM: some gold occurs inside the answer. None or empty never matches."""
    if mode not in MODES:
        raise ValueError(f"reward mode must be one of {MODES}, got {mode!r}")
    check = exact_match if mode == "EM" else substring_match
    return float(bool(answer) and check(answer, golds))


def reward_v2(score: float, search_count: int, format_score: float, penalty: float = 0.1,
              format_weight: float = 0.1, per_search: bool = False) -> float:
    """MMSearch-R1's released reward: the search penalty multiplies CORRECT answers only.

        if search_count > 0 and score > 0.99:  score *= (1 - penalty) ** (search_count if per_search else 1)
        reward = (1 - format_weight) * score + format_weight * format_score
    """
    if search_count > 0 and score > 0.99:
        score = score * (1.0 - penalty) ** (search_count if per_search else 1)
    return (1.0 - format_weight) * score + format_weight * format_score


def reward_v1(score: float, searched: bool, format_score: float, penalty: float = 0.1,
              format_weight: float = 0.1) -> float:
    """MMSearch-R1's early reward: the penalty is subtracted whenever a search was used, right or wrong.

        reward = (1 - format_weight) * (score - penalty * searched) + format_weight * format_score
               = 0.9·(Score − 0.1) + 0.1·Format with search, 0.9·Score + 0.1·Format without (p = α = 0.1)
    """
    return (1.0 - format_weight) * (score - (penalty if searched else 0.0)) + format_weight * format_score


# ------------------------------------------------------------------------------------------- judge

# A paraphrase of the paper's Table 7 rubric (METHODS §4.7: Yes/No, candidate answers allowed,
# more-specific answers count as correct); the exact wording is not in METHODS.
JUDGE_PROMPT = (
    "You are grading an answer to a factual question about an image.\n"
    "Question: {question}\n"
    "Ground-truth answer: {ground_truth}\n"
    "Other acceptable answers: {candidates}\n"
    "Answer to grade: {answer}\n"
    "The answer is correct if it means the same as the ground-truth answer or one of the acceptable answers, "
    "allowing for different wording, aliases and abbreviations. An answer that is more specific than the "
    "ground truth but consistent with it is also correct. An answer that is vaguer, different, or hedges "
    "between several answers is not correct.\n"
    "Is the answer correct? Reply with exactly one word: Yes or No.")

_THINK = re.compile(r"<think>.*?</think>", re.DOTALL)
_LEADING = re.compile(r"^[\s*_\"'`#>\[\](){}:.\-]*(yes|no)\b(?!\s*(?:/|or\b))", re.IGNORECASE)
_WORD = re.compile(r"\b(yes|no)\b", re.IGNORECASE)


def parse_verdict(text: Any) -> bool | None:
    """A judge's Yes/No as True/False; None when there is no clear verdict.

    Reasoning in ``<think>…</think>`` is dropped (an unterminated one gives None). A reply that starts
    with Yes/No (after quotes, markdown or brackets; not "Yes or No", "Yes/No") is that verdict; otherwise
    the reply must hold the word yes or no, not both. Anything else (empty, "maybe", "Yes or No", non-text) is None.
    """
    if not isinstance(text, str):
        return None
    s = _THINK.sub(" ", text)
    if "<think>" in s:
        return None
    m = _LEADING.match(s)
    if m:
        return m.group(1).lower() == "yes"
    words = {w.lower() for w in _WORD.findall(s)}
    if len(words) == 1:
        return words.pop() == "yes"
    return None


@dataclass
class LLMJudge:
    """Score by an LLM judge through an OpenAI-compatible endpoint (`mmr1.clients.ChatClient`).

    ``judge(question, answer, golds)`` returns True/False, or None when the call failed (after the client's
    retries) or the reply holds no clear verdict; `SearchReward` then falls back to its rule check.
    The paper's judge: GPT-4o, temperature 0, top_p 0.1.
    """

    client: Any  # mmr1.clients.ChatClient (anything with .chat(messages, **params) -> {"content": ...})
    prompt: str = JUDGE_PROMPT
    temperature: float = 0.0
    top_p: float = 0.1
    max_tokens: int | None = 32
    calls: int = 0
    failed: int = 0  # calls that raised
    unparsed: int = 0  # replies without a clear verdict
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def messages(self, question: str, answer: str, golds: Sequence[str]) -> list[dict]:
        golds = list(golds)
        text = self.prompt.format(question=question or "(not given)", answer=answer,
                                  ground_truth=golds[0] if golds else "",
                                  candidates="; ".join(golds[1:]) or "(none)")
        return [{"role": "user", "content": text}]

    def __call__(self, question: str, answer: str, golds: Sequence[str]) -> bool | None:
        params = {"temperature": self.temperature, "top_p": self.top_p}
        if self.max_tokens is not None:
            params["max_tokens"] = self.max_tokens
        with self._lock:
            self.calls += 1
        try:
            reply = self.client.chat(self.messages(question, answer, golds), **params)
            verdict = parse_verdict(reply.get("content") if isinstance(reply, Mapping) else None)
        except Exception as e:  # noqa: BLE001 - a judge outage must not stop training
            with self._lock:
                self.failed += 1
            log.warning("LLM judge call failed (%s: %s); using the rule check", type(e).__name__, e)
            return None
        if verdict is None:
            with self._lock:
                self.unparsed += 1
        return verdict


# ---------------------------------------------------------------------------------------- the reward

@dataclass(frozen=True)
class SearchScore:
    """Everything one trajectory's reward is made of (for logging search rates and format rates)."""

    answer: str | None
    correct: bool
    format: float
    search_count: int
    image_searches: int
    text_searches: int
    penalty: float  # the search penalty used (after the schedule)
    reward: float
    judged: bool = False  # the Score came from the LLM judge


def golds_of(sample) -> list[str]:
    """Ground truth then candidate answers of a Sample, a dict (answers/answer/ground_truth and
    candidate_answers, or an FVQA parquet row's `reward_model`), or the gold answer(s) themselves."""
    if isinstance(sample, Mapping) and isinstance(sample.get("reward_model"), Mapping):
        sample = sample["reward_model"]
    return _fields(sample)[0]


def _question(sample) -> str:
    meta = getattr(sample, "meta", None) or (sample.get("meta") if isinstance(sample, Mapping) else None) or {}
    if meta.get("question"):
        return str(meta["question"])
    if hasattr(sample, "question_text"):
        return sample.question_text()
    if isinstance(sample, Mapping):
        return str(sample.get("question") or sample.get("problem") or "")
    return ""


@dataclass
class SearchReward:
    """MMSearch-R1's reward as a reward function ``(trajectory, sample) -> float``.

    variant "v2" (default): per-turn format, multiplicative penalty on correct answers; "v1": the early
    count-based format and subtractive penalty. mode "EM" or "SubEM" against the sample's answers (a Sample's
    `answers` hold the ground truth then the candidates; a dict may give answer/ground_truth and
    candidate_answers, a JSON string as in the FVQA parquet). `penalty`: a number, a schedule or a schedule
    spec (``{"kind": "search_penalty_warmup", "p": 0.1, "warmup_steps": 20}``), read at ``self.step`` (the
    1-based RL step the trainer sets; ``total`` is passed to the schedule). `judge`: an `LLMJudge` (or any
    ``(question, answer, golds) -> bool | None``) that decides correctness; with ``judge_shortcut`` a rule
    match is accepted without asking it.
    """

    variant: str = "v2"
    mode: str = "EM"
    penalty: Any = 0.1
    format_weight: float = 0.1
    per_search: bool = False
    judge: Callable | None = None
    judge_shortcut: bool = True
    step: int = 1
    total: int = 0

    def __post_init__(self):
        if self.variant not in VARIANTS:
            raise ValueError(f"variant must be one of {VARIANTS}, got {self.variant!r}")
        if self.mode not in MODES:
            raise ValueError(f"reward mode must be one of {MODES}, got {self.mode!r}")
        self.penalty = make_schedule(self.penalty)

    def penalty_at(self, step: int | None = None) -> float:
        sched: Schedule = self.penalty
        return float(sched.value(self.step if step is None else step, self.total))

    def details(self, trajectory, sample) -> SearchScore:
        turns = as_turns(trajectory)
        golds = golds_of(sample)
        answer = extract_final_answer(turns)
        correct, judged = bool(answer_score(answer, golds, self.mode)), False
        if self.judge is not None and answer and not (correct and self.judge_shortcut):
            verdict = self.judge(_question(sample), answer, golds)
            if verdict is not None:
                correct, judged = bool(verdict), True
        fmt = format_reward(turns)
        p = self.penalty_at()
        if self.variant == "v2":
            reward = reward_v2(float(correct), fmt.search_count, fmt.score, p, self.format_weight, self.per_search)
            form = fmt.score
        else:
            form = format_v1(turns)
            reward = reward_v1(float(correct), searched_v1(turns), form, p, self.format_weight)
        return SearchScore(answer, correct, form, fmt.search_count, fmt.image_searches, fmt.text_searches, p,
                           reward, judged)

    def __call__(self, trajectory, sample) -> float:
        return self.details(trajectory, sample).reward


# Ready-made reward functions for `rewards.custom` ("mmr1.rewards.search:mmsearch_reward": 1.0): the paper's
# settings (EM, p = α = 0.1, no warm-up). A recipe that wants the warm-up or a judge builds its own SearchReward.
mmsearch_reward = SearchReward()
mmsearch_reward_v1 = SearchReward(variant="v1")

