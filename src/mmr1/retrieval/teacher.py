"""Four-phase chain-of-thought for Retrv-R1's activation SFT (METHODS §1.4 stage 2, §5.5).

Every CoT has the paper's fixed structure: (1) hypothesise the ideal result, (2) eliminate clear negatives,
(3) inspect and verify the hard candidates, (4) answer with the index, in the output format of
`reward` (``<think> … <inspection-index-start>i<inspection-index-end> … </think><answer>i</answer>``).

Two teachers:

- `world_cot`, programmatic, for the synthetic composed-image world (`world.make_cir_world`): it reads the
  scene structure in the query's meta (edit, target) and each candidate's objects, and is terse (a tiny
  model has to learn it): phase 1 names the target's handle, phase 2 rules out the candidates whose handle
  (object count and shapes, what "inspect" mode shows) differs from it, phase 3 inspects the survivors in
  the order shown until one is exactly the target, saying "match" or "no" for each, phase 4 names it. It
  never uses the gold label to pick what to inspect, so its inspections are ones a model could have chosen;
  a CoT that would need more than `max_inspections` calls is not produced (None).
- `api_cot`, over an OpenAI-compatible endpoint (`clients.ChatClient`, e.g. Qwen2.5-VL-72B as in the
  paper) for real data: the endpoint sees the query, every candidate's full content, the handles the
  reranker will see and the gold index, and writes the CoT; it is kept only if `reward.check_format`
  accepts it, it answers the gold index and stays within the inspection limit (`validate_cot`).

`cot_sample` turns a CoT into a multi-turn SFT `Sample`: the text is cut after each inspection call, and
each cut is followed by the REAL inspection tool's observation (`inspect.InspectTool` on the prompt's
`RerankContext`, rendered by the same `ObservationFormat`), as `mmsearch.with_tool_observations` does for
search, so SFT trains on exactly the tokens a rollout through the agent loop builds.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Sequence

from ..data.schema import Sample
from ..errors import DataError
from .data import Candidate, RetrievalQuery
from .inspect import INSPECT_TOOL, InspectTool, inspection_format
from .prompts import (RerankPrompt, build_rerank_prompt, candidate_handle, marked_parts, openai_content,
                      scene_handle)
from .reward import INSPECT_END, INSPECT_START, check_format, find_inspections, pending_inspection

_CALL_END = re.compile(re.escape(INSPECT_END))
_WHAT = {"shape": "shapes", "colour": "colours"}


@dataclass
class TeacherCoT:
    """A CoT as the agent loop would see it: assistant `turns`, every one but the last ending with an
    inspection call; the 0-based `answer` and `inspected` positions."""

    turns: list[str]
    answer: int
    inspected: list[int] = field(default_factory=list)
    source: str = "world"

    @property
    def text(self) -> str:
        """The turns joined as `Trajectory.text` joins them (what the reward reads)."""
        return "\n".join(self.turns)


# --------------------------------------------------------------------------------- shared helpers


def _numbers(xs: Sequence[int]) -> str:
    xs = [str(x) for x in xs]
    return xs[0] if len(xs) == 1 else ", ".join(xs[:-1]) + " and " + xs[-1]


def split_turns(text: str) -> list[str]:
    """Cut a CoT after each inspection call (where the loop stops a turn); each turn stripped, so the
    tokens of a turn do not depend on the whitespace the cut left."""
    turns, start = [], 0
    for m in _CALL_END.finditer(text):
        turns.append(text[start:m.end()].strip())
        start = m.end()
    turns.append(text[start:].strip())
    return [t for t in turns if t]


def validate_cot(text: str, k: int, gold: int, base: int = 1, max_inspections: int | None = None,
                 source: str = "api") -> tuple[TeacherCoT | None, str | None]:
    """(TeacherCoT, None) when `text` passes `check_format`, answers `gold` (0-based) and makes at most
    `max_inspections` inspection calls; else (None, the reason)."""
    if not isinstance(text, str) or not text.strip():
        return None, "empty reply"
    turns = split_turns(text)
    joined = "\n".join(turns)
    fmt = check_format(joined, k, base)
    if not fmt.ok:
        return None, f"format: {fmt.reason}"
    if fmt.answer != gold:
        return None, f"wrong answer: {fmt.answer + base} (gold {gold + base})"
    calls = find_inspections(joined, k, base)
    if max_inspections is not None and len(calls) > max_inspections:
        return None, f"too many inspections: {len(calls)} > {max_inspections}"
    return TeacherCoT(turns, gold, [c.position for c in calls], source), None


def cot_sample(prompt: RerankPrompt, cot: TeacherCoT, tool=None, fmt=None, sample_id: str | None = None) -> Sample:
    """The SFT sample of `prompt` + `cot`, each inspection followed by the real tool's observation (see the
    module docstring). `fmt` must be the ObservationFormat the rollouts use (default `inspection_format()`)."""
    tool = tool or InspectTool()
    fmt = fmt or inspection_format()
    ctx = prompt.context
    msgs, images = [], []
    for i, turn in enumerate(cot.turns):
        msgs.append({"role": "assistant", "content": [{"type": "text", "text": turn}]})
        ins = pending_inspection(turn, ctx.k, ctx.base)
        if ins is None or i == len(cot.turns) - 1:
            continue
        res = tool(ins.raw.strip(), images=list(prompt.images), context=ctx)
        text = fmt.success(INSPECT_TOOL, res.text, "")
        msgs.append({"role": "user", "content": marked_parts(text, len(res.images))})
        images += list(res.images)
    s = prompt.sample(extra_messages=msgs, extra_images=images, sample_id=sample_id)
    s.meta.update({"inspected": list(cot.inspected), "teacher": cot.source})
    return s


# --------------------------------------------------------------------------------- the world teacher


def _objs(objects) -> set[tuple]:
    return {tuple(o) for o in objects}


def world_cot(prompt: RerankPrompt, query: RetrievalQuery, max_inspections: int = 5,
              inspect_single: bool = False) -> TeacherCoT | None:
    """The programmatic four-phase CoT for a synthetic-world query (see the module docstring); None when the
    gold candidate is not shown or finding it would take more than `max_inspections` inspections.

    In "inspect" mode the hard candidates are inspected (one turn per call); in "full" mode their details
    are already in the prompt, so they are verified inline in one turn. With one survivor of phase 2 and
    `inspect_single` False, phase 3 has nothing to verify and no inspection is made.
    """
    meta = query.meta
    cands = prompt.context.candidates
    if "target" not in meta or any("objects" not in c.meta for c in cands):
        raise DataError("the programmatic reranker teacher needs the synthetic world's scene structure; use "
                        "api_cot for other data", file=query.qid)
    gold, base = prompt.gold, prompt.context.base
    if gold is None:
        return None
    target = meta["target"]
    if _objs(cands[gold].meta["objects"]) != _objs(target):
        raise DataError(f"the gold candidate {cands[gold].did} is not the query's target scene", file=query.qid)
    by = prompt.meta.get("scene_by", "shape")
    t_handle = scene_handle(target, by)
    handles = prompt.handles or [scene_handle(c.meta["objects"], by) for c in cands]
    num = lambda i: i + base  # noqa: E731
    text = f"<think> Phase 1: the ideal result has {t_handle}."
    count = [i for i, c in enumerate(cands) if len(c.meta["objects"]) != len(target)]
    other = [i for i in range(len(cands)) if i not in count and handles[i] != t_handle]
    out = [f"{_numbers([num(i) for i in xs])} ({why})" for xs, why in ((count, "count"), (other, _WHAT.get(by, by)))
           if xs]
    text += (" Phase 2: out " + "; ".join(out) + ".") if out else " Phase 2: none out."
    hard = [i for i in range(len(cands)) if i not in count and i not in other]
    turns, inspected = [], []
    if len(hard) == 1 and not inspect_single:
        text += f" Phase 3: only {num(hard[0])} fits, nothing left to verify."
    else:
        text += f" Phase 3: check {_numbers([num(i) for i in hard])}."
        for i in hard:
            verdict = f"Candidate {num(i)}: {'match' if _objs(cands[i].meta['objects']) == _objs(target) else 'no'}."
            if prompt.mode == "inspect":
                if len(inspected) >= max_inspections:
                    return None
                turns.append(f"{text} {INSPECT_START}{num(i)}{INSPECT_END}")
                inspected.append(i)
                text = verdict
            else:
                text += " " + verdict
            if i == gold:
                break
    text += f" Phase 4: candidate {num(gold)}. </think><answer>{num(gold)}</answer>"
    turns.append(text)
    return TeacherCoT([t.strip() for t in turns], gold, inspected, "world")


def world_teacher_samples(data, ranking, mode: str = "inspect", *, max_inspections: int = 5, base: int = 1,
                          inspect_single: bool = False, scene_by: str = "shape", tool=None,
                          fmt=None) -> tuple[list[Sample], dict]:
    """SFT samples for every query of a synthetic `RetrievalSet` over its first-stage `Ranking`;
    returns (samples, counts of kept / gold_not_shown / over_limit)."""
    from .prompts import rerank_prompts

    by_qid = {q.qid: q for q in data.queries}
    prompts = rerank_prompts(data, ranking, mode, base=base, scene_by=scene_by,
                             max_inspections=max_inspections if mode == "inspect" else None)
    out, stats = [], {"kept": 0, "gold_not_shown": 0, "over_limit": 0}
    for p in prompts:
        if p.gold is None:
            stats["gold_not_shown"] += 1
            continue
        cot = world_cot(p, by_qid[p.qid], max_inspections, inspect_single)
        if cot is None:
            stats["over_limit"] += 1
            continue
        out.append(cot_sample(p, cot, tool, fmt))
        stats["kept"] += 1
    return out, stats


# --------------------------------------------------------------------------------- the API teacher

API_INSTRUCTION = (
    "You are writing a worked example for training a reranker. Above are a query and {k} candidates numbered "
    "{first} to {last}, each with its full content. The correct candidate is number {gold_n}.\n"
    "The reranker itself first sees only these short handles:\n{handles}\n"
    "and must inspect a candidate to see its full image and text.\n"
    "Write the reasoning the reranker should produce, as if it did not know the answer, in exactly this "
    "format:\n"
    "<think> Phase 1: describe what the ideal result looks like. Phase 2: rule out the candidates whose handles "
    "clearly do not match. Phase 3: verify the remaining hard candidates; for each, first write "
    + INSPECT_START + "N" + INSPECT_END + " with its number N, then say what its details show and whether it "
    "matches. Phase 4: name the best candidate. </think><answer>{gold_n}</answer>\n"
    "Rules: at most {max_inspections} inspections; the answer is the number alone; nothing before <think> or "
    "after </answer>; never say that you were told the answer.")


@dataclass
class ApiCoT:
    """One endpoint reply: its text, the CoT when kept, else the reason it was dropped."""

    text: str
    cot: TeacherCoT | None
    reason: str | None

    @property
    def kept(self) -> bool:
        return self.cot is not None


def api_messages(query: RetrievalQuery, candidates: Sequence[Candidate], gold: int, *, base: int = 1,
                 image_root: str | None = None, max_inspections: int = 5, handle_words: int = 8,
                 scene_by: str = "shape", with_images: bool = True) -> list[dict]:
    """The teacher request: the "full" prompt's content (images as data URLs, or dropped with
    `with_images=False` for a text-only endpoint) followed by `API_INSTRUCTION`."""
    full = build_rerank_prompt(query, candidates, "full", base=base, image_root=image_root)
    content = openai_content(full.messages, full.images)
    if not with_images:
        content = [p for p in content if p["type"] == "text"]
    handles = "\n".join(f"({i + base}) {candidate_handle(c, handle_words, scene_by)}"
                        for i, c in enumerate(candidates))
    k = len(candidates)
    content.append({"type": "text", "text": "\n\n" + API_INSTRUCTION.format(
        k=k, first=base, last=base + k - 1, gold_n=gold + base, handles=handles, max_inspections=max_inspections)})
    return [{"role": "user", "content": content}]


def api_cot(client, query: RetrievalQuery, candidates: Sequence[Candidate], gold: int, *, base: int = 1,
            image_root: str | None = None, max_inspections: int = 5, max_tokens: int = 2048,
            temperature: float = 0.6, handle_words: int = 8, scene_by: str = "shape",
            with_images: bool = True) -> ApiCoT:
    """Ask a `ChatClient` for the four-phase CoT of `query` over `candidates` (gold: 0-based position) and keep
    it only if `validate_cot` passes. Endpoint failures raise `clients.APIError` (retry later)."""
    if not 0 <= gold < len(candidates):
        raise ValueError(f"gold position {gold} is outside the {len(candidates)} candidates")
    msgs = api_messages(query, candidates, gold, base=base, image_root=image_root, max_inspections=max_inspections,
                        handle_words=handle_words, scene_by=scene_by, with_images=with_images)
    reply = client.chat(msgs, max_tokens=max_tokens, temperature=temperature)
    text = (reply.get("content") or "").strip()
    cot, reason = validate_cot(text, len(candidates), gold, base, max_inspections, source="api")
    return ApiCoT(text, cot, reason)


__all__ = ["API_INSTRUCTION", "ApiCoT", "TeacherCoT", "api_cot", "api_messages", "cot_sample", "split_turns",
           "validate_cot", "world_cot", "world_teacher_samples"]
