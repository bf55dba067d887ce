"""Reranker prompts for Retrv-R1 (METHODS §1.1 fine stage, §1.3, §1.6): a query and its top-K candidates
as one user turn in the repo's message schema (`mmr1.data.schema.Sample`), plus the per-prompt context
the inspection tool needs.

Modes (how a candidate appears in the prompt):

- ``"full"``: every candidate's full content inline (its image as real image tokens, then its text). The
  "w/o ICM" baseline: right but K times a few hundred tokens.
- ``"inspect"``: every candidate by its number and a short handle only (a few words); the model asks for a
  candidate's full content with ``<inspection-index-start>N<inspection-index-end>`` and the agent loop
  injects exactly what "full" mode shows for it (`candidate_block`), so full tokens are the same tokens in
  both places.
- ``"compressed"``: each candidate is its number + `n_compressed` (2 by default: content, relationship)
  placeholder tokens (`models.overrides.PLACEHOLDER`), whose input embeddings the ICM's outputs replace
  before the LM runs (`compressed.CompressedReranker` attaches them to the prompt). With
  ``max_inspections`` > 0 (or None) the instruction offers inspection as in "inspect" mode
  (compression + inspection); ``max_inspections=0`` is compression only.

Numbering: candidates are numbered from ``base`` (1 by default, `retrv.index_base`), in the order shown,
the same numbers the inspection calls and the answer use (`reward.parse_index`).

Handles (what "inspect" mode shows): a candidate's ``meta["handle"]`` when given; for the synthetic world
(candidates with ``meta["objects"]``) the object count and shape counts, e.g. "5 objects: 2 circles,
1 square, 2 triangles" (`scene_handle`): enough to rule out near-misses that changed the count or a shape,
not enough to tell a recoloured or moved object apart, so the hard ones still need an inspection; for other
data the first `handle_words` words of the text, or "an image" for an image-only candidate.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Sequence

from ..data.schema import Sample, assistant_turn
from ..data.worlds.scenes import plural
from ..models.overrides import PLACEHOLDER
from ..tools import IMAGE_MARKER, marked_parts
from .data import Candidate, RetrievalQuery
from .reward import INSPECT_END, INSPECT_START

MODES = ("full", "inspect", "compressed")
SCENE_HANDLES = ("shape", "colour", "count")

INSTRUCTION = (
    "You are a reranker. Below are a query and {k} candidates retrieved for it, numbered {first} to {last}. "
    "Find the candidate that matches the query best.\n"
    "Reason inside <think> </think> in four phases:\n"
    "1. Hypothesise: describe what the ideal result looks like.\n"
    "2. Eliminate: rule out the candidates that clearly do not match.\n"
    "3. Verify: check the remaining hard candidates carefully{verify}.\n"
    "4. Answer: name the best candidate.\n"
    "Then write its number alone inside <answer> </answer>, for example <answer>{first}</answer>.")
VERIFY_INSPECT = (
    "; to see a candidate's full image and text, write " + INSPECT_START + "N" + INSPECT_END +
    " with its number N and stop: its details will be shown to you, then continue your reasoning{limit}")


@dataclass
class RerankContext:
    """What the inspection tool needs for one prompt: the K candidates in the order shown, numbered from
    `base`, and where their image paths are relative to."""

    candidates: list[Candidate]
    base: int = 1
    image_root: str | None = None

    @property
    def k(self) -> int:
        return len(self.candidates)


@dataclass
class RerankPrompt:
    """One reranking prompt: `messages` + `images` (the loop's prompt), the inspection `context`, and the
    gold candidate's 0-based position among those shown (None when no relevant candidate is shown)."""

    messages: list[dict]
    images: list
    context: RerankContext
    mode: str
    qid: str = ""
    gold: int | None = None
    handles: list[str] = field(default_factory=list)  # each candidate's handle (shown in "inspect" mode)
    meta: dict = field(default_factory=dict)

    @property
    def prompt(self) -> tuple:
        """(messages, images): what `AgentLoop.run` takes."""
        return self.messages, self.images

    @property
    def k(self) -> int:
        return self.context.k

    def sample(self, turns: Sequence[str] = (), extra_messages: Sequence[dict] = (), extra_images: Sequence = (),
               sample_id: str | None = None) -> Sample:
        """A Sample of this prompt (+ assistant `turns`, or ready-made messages and their images)."""
        msgs = list(self.messages) + [assistant_turn(t) for t in turns] + list(extra_messages)
        answers = [str(self.gold + self.context.base)] if self.gold is not None else []
        return Sample(id=sample_id or self.qid, messages=msgs, images=list(self.images) + list(extra_images),
                      answers=answers, answer_type="integer", category=self.mode,
                      meta={"qid": self.qid, "gold": self.gold, "k": self.k, "base": self.context.base,
                            "mode": self.mode, **self.meta})


# ------------------------------------------------------------------------------------------ pieces


def scene_handle(objects: Sequence[Sequence], by: str = "shape") -> str:
    """'5 objects: 2 circles, 1 square, 2 triangles' for a synthetic-world layout (``by="shape"``), or its
    colour counts (``by="colour"``: '5 objects: 1 blue, 2 red, ...'), or the count alone (``by="count"``).

    Shapes are the default: over the world's first-stage top-10 they leave 1-5 hard candidates for most
    queries (about 1-3 inspections to reach the target), where colour counts already single out the target
    for about a third of the queries (no inspection needed) and the count alone leaves up to 9.
    """
    if by not in SCENE_HANDLES:
        raise ValueError(f"scene handle must be one of {', '.join(SCENE_HANDLES)}, got {by!r}")
    n = len(objects)
    head = f"{n} object{'s' if n != 1 else ''}"
    if by == "count" or not n:
        return head
    if by == "colour":
        counts = Counter(o[2] for o in objects)
        return head + ": " + ", ".join(f"{counts[c]} {c}" for c in sorted(counts))
    counts = Counter(o[3] for o in objects)
    return head + ": " + ", ".join(f"{counts[x]} {x if counts[x] == 1 else plural(x)}" for x in sorted(counts))


def candidate_handle(c: Candidate, words: int = 8, scene_by: str = "shape") -> str:
    """The short handle "inspect" mode shows (see the module docstring)."""
    if c.meta.get("handle"):
        return str(c.meta["handle"])
    if "objects" in c.meta:
        return scene_handle(c.meta["objects"], scene_by)
    if c.text and "text" in c.modality:
        toks = c.text.split()
        return " ".join(toks[:words]) + (" ..." if len(toks) > words else "")
    return "an image"


def candidate_block(c: Candidate, index: int, image_root: str | None = None) -> tuple[str, list]:
    """A candidate's full content as (text with an IMAGE_MARKER where its image goes, [image]): what "full"
    mode shows inline and what an inspection of it injects."""
    img = c.load_image(image_root) if ("image" in c.modality and c.image is not None) else None
    text = f"Candidate {index}:"
    if img is not None:
        text += " " + IMAGE_MARKER
    if c.text and "text" in c.modality:
        text += "\n" + c.text if img is not None else " " + c.text
    return text, [img] if img is not None else []


def query_block(q: RetrievalQuery, image_root: str | None = None) -> tuple[str, list]:
    """The query as (text with a marker for its image, [image])."""
    img = q.load_image(image_root) if ("image" in q.modality and q.image is not None) else None
    text = "Query:" + (" " + IMAGE_MARKER if img is not None else "")
    if q.text and "text" in q.modality:
        text += ("\n" if img is not None else " ") + q.text
    return text, [img] if img is not None else []


def instruction(k: int, mode: str, base: int = 1, max_inspections: int | None = None) -> str:
    verify = ""
    if mode == "inspect" or (mode == "compressed" and max_inspections != 0):
        limit = f" (at most {max_inspections} inspections)" if max_inspections is not None else ""
        verify = VERIFY_INSPECT.format(limit=limit)
    return INSTRUCTION.format(k=k, first=base, last=base + k - 1, verify=verify)


# ------------------------------------------------------------------------------------------ prompts


def build_rerank_prompt(query: RetrievalQuery, candidates: Sequence[Candidate], mode: str = "inspect", *,
                        relevant: set[str] | None = None, base: int = 1, image_root: str | None = None,
                        max_inspections: int | None = None, handle_words: int = 8,
                        scene_by: str = "shape", n_compressed: int = 2) -> RerankPrompt:
    """The reranking prompt of `query` over `candidates` (the first stage's top-K, best first).

    `relevant` (dids; default the query's positives) sets `gold`: the first relevant candidate's position.
    `n_compressed`: placeholder tokens per candidate in "compressed" mode (the ICM's tokens_per_candidate).
    """
    if mode not in MODES:
        raise ValueError(f"mode must be one of {', '.join(MODES)}, got {mode!r}")
    if not candidates:
        raise ValueError(f"query {query.qid}: no candidates to rerank")
    cands = list(candidates)
    k = len(cands)
    text, images = query_block(query, image_root)
    handles = [candidate_handle(c, handle_words, scene_by) for c in cands]
    text = instruction(k, mode, base, max_inspections) + "\n\n" + text + "\n\nCandidates:"
    for i, c in enumerate(cands):
        if mode == "full":
            block, ims = candidate_block(c, i + base, image_root)
            text += "\n" + block
            images += ims
        elif mode == "compressed":
            text += f"\n({i + base}) " + PLACEHOLDER * n_compressed
        else:
            text += f"\n({i + base}) {handles[i]}"
    rel = set(query.positives) if relevant is None else set(relevant)
    gold = next((i for i, c in enumerate(cands) if c.did in rel), None)
    messages = [{"role": "user", "content": marked_parts(text, len(images))}]
    return RerankPrompt(messages, images, RerankContext(cands, base, image_root), mode, query.qid, gold, handles,
                        {"scene_by": scene_by, **({"n_compressed": n_compressed} if mode == "compressed" else {})})


def rerank_prompts(data, ranking, mode: str = "inspect", **kw) -> list[RerankPrompt]:
    """One prompt per query of a `RetrievalSet` over its first-stage `Ranking` (same query order)."""
    by_qid = {q.qid: q for q in data.queries}
    kw.setdefault("image_root", data.image_root)
    return [build_rerank_prompt(by_qid[qid], [data.pool[d] for d in dids], mode, relevant=data.relevant(by_qid[qid]),
                                **kw) for qid, dids in zip(ranking.qids, ranking.dids)]


def openai_content(messages: list[dict], images: list) -> list[dict]:
    """A user turn of this module as OpenAI content parts (images as base64 data URLs), for teachers."""
    from ..clients import image_part

    out, k = [], 0
    for m in messages:
        content = m["content"] if isinstance(m["content"], list) else [{"type": "text", "text": m["content"]}]
        for p in content:
            if p.get("type") == "image":
                out.append(image_part(images[k]))
                k += 1
            else:
                out.append({"type": "text", "text": p.get("text", "")})
    return out


__all__ = ["INSTRUCTION", "MODES", "SCENE_HANDLES", "RerankContext", "RerankPrompt", "build_rerank_prompt", "candidate_block",
           "candidate_handle", "instruction", "marked_parts", "openai_content", "query_block", "rerank_prompts",
           "scene_handle"]
