"""Deterministic synthetic worlds that ship with the library, so every recipe runs offline.

`counting` is the CLEVR-counting analogue and `reasoning` the GeoQA analogue (OThink-MR1's
two task types). The same (world, split, n, seed, params) always gives the same samples and
pixel-identical images; sample i does not depend on n, and splits are disjoint by layout.
`entities` (MMSearch-R1's FVQA analogue) builds its own samples: see `entities.py`.
"""

from __future__ import annotations

import random
from collections import Counter
from typing import Callable, NamedTuple

from ...errors import ConfigError
from ..schema import Sample, assistant_turn, user_turn
from . import counting, entities, reasoning
from .scenes import COLOURS, R1V_INSTRUCTION, SHAPES, SPLIT_BUCKETS, Params, render, split_of

__all__ = ["WORLDS", "World", "make_world", "teacher_solution", "world_names", "majority_baseline", "describe",
           "format_prompt", "corpus_text", "COLOURS", "SHAPES", "R1V_INSTRUCTION", "STYLES"]

STYLES = ("plain", "reflective")
MAX_TRIES = 10_000  # redraws per sample to land in the requested split (~1.25 for train, ~10 for test)


class World(NamedTuple):
    name: str
    variants: tuple[str, ...]  # question variants = Sample.category values
    defaults: dict  # world-specific Params defaults
    check: Callable  # (Params) -> None, raises ConfigError
    sample: Callable  # (rng, Params, variant) -> Task
    solve: Callable  # (meta, style) -> (think text, answer)


WORLDS: dict[str, World] = {
    name: World(name, m.VARIANTS, m.DEFAULTS, m.check, m.sample, m.solve)
    for name, m in (("counting", counting), ("reasoning", reasoning))
}


# Worlds that build their own samples (own params, splits and multi-turn teacher): make_world(name, ...) is theirs.
BUILDERS: dict[str, Callable] = {"entities": entities.make_world}


def world_names() -> list[str]:
    return sorted([*WORLDS, *BUILDERS])


def _world(name: str) -> World:
    if name not in WORLDS:
        raise ConfigError(f"unknown world {name!r}; choose one of {', '.join(world_names())}")
    return WORLDS[name]


def format_prompt(question: str, instruction: str | None = R1V_INSTRUCTION) -> str:
    """The user text: `instruction` with {question} filled in, or appended after it, or the bare question."""
    if instruction is None:
        return question
    if "{question}" in instruction:
        return instruction.replace("{question}", question)
    return f"{question} {instruction}"


def make_world(name: str, split: str = "train", n: int = 1000, seed: int = 0, with_solution: bool = False,
               style: str = "plain", teacher_miss: float = 0.0, **params) -> list[Sample]:
    """`n` samples of world `name`; `params` override the Params defaults (grid, colours, shapes, ...).

    Each sample's random stream is seeded from (name, split, seed, index) alone, so the first k
    samples are the same whatever n is; scenes whose layout hashes to another split are redrawn.
    `teacher_miss`: see `teacher_solution`.
    """
    if not 0.0 <= teacher_miss < 1.0:
        raise ConfigError(f"teacher_miss: need 0 <= p < 1 (the chance the teacher overlooks an object); "
                          f"got {teacher_miss}")
    if name in BUILDERS:
        if teacher_miss:
            raise ConfigError(f"teacher_miss applies to the grid worlds ({', '.join(WORLDS)}), not {name!r}")
        return BUILDERS[name](split=split, n=n, seed=seed, with_solution=with_solution, style=style, **params)
    world = _world(name)
    if split not in SPLIT_BUCKETS:
        raise ConfigError(f"unknown split {split!r}; choose one of {', '.join(SPLIT_BUCKETS)}")
    if style not in STYLES:
        raise ConfigError(f"unknown style {style!r}; choose one of {', '.join(STYLES)}")
    p = Params.make(world.defaults, params)
    world.check(p)
    variants = tuple(p.variants or world.variants)
    bad = [v for v in variants if v not in world.variants]
    if bad:
        raise ConfigError(f"unknown {name} variant(s) {', '.join(bad)}; choose from {', '.join(world.variants)}")
    colours = list(p.palette)
    out = []
    for i in range(n):
        rng = random.Random(f"{name}/{split}/{seed}/{i}")
        for _ in range(MAX_TRIES):
            task = world.sample(rng, p, rng.choice(variants))
            if split_of(task.objects) == split:
                break
        else:
            raise ConfigError(f"{name}: no {split} scene found in {MAX_TRIES} draws; the world is too small")
        sample = Sample(
            id=f"{name}-{split}-{seed}-{i:06d}", messages=[user_turn(format_prompt(task.question, p.instruction))],
            images=[render(task.objects, rng, p)], answers=[str(task.answer)], answer_type="integer",
            category=task.category, source=f"{name}-{split}-{seed}:{i}",
            meta={"objects": task.objects, "world": name, "query": task.query, "colours": colours,
                  "shapes": list(p.shapes), "question": task.question})
        if with_solution:
            sample.messages.append(assistant_turn(teacher_solution(sample, style, teacher_miss)))
        out.append(sample)
    return out


def teacher_solution(sample: Sample, style: str = "plain", miss: float = 0.0) -> str:
    """`<think>objects by colour, the asked ones, the computation</think><answer>N</answer>`, from meta alone.

    style="reflective" adds a "Wait, let me check again: ..." self-check (Vision-R1 cold start).
    miss > 0 makes the teacher imperfect, as distilled cold-start data is: it overlooks each object
    with that probability (drawn from the sample id, so the data is reproducible) and reasons
    consistently from what it saw, so a crowded colour is undercounted most often. The sample's
    gold answer is unchanged: the RL reward still checks against it.
    """
    if style not in STYLES:
        raise ConfigError(f"unknown style {style!r}; choose one of {', '.join(STYLES)}")
    meta = sample.meta
    if miss:
        rng = random.Random(f"teacher/{sample.id}")
        meta = {**meta, "objects": [o for o in meta["objects"] if rng.random() >= miss]}
    think, answer = _world(meta["world"]).solve(meta, style)
    return f"<think>{think}</think><answer>{answer}</answer>"


def majority_baseline(samples: list[Sample], reference: list[Sample] | None = None,
                      per_question: bool = False) -> float:
    """Accuracy on `samples` of always answering the most common answer of `reference` (default: samples).

    per_question=True guesses the most common answer for the same question text: a text-only
    baseline. Pass train samples as `reference` then, as in-sample it overfits rare questions.
    """
    if not samples:
        return 0.0
    key = (lambda s: s.meta.get("question", s.question_text())) if per_question else (lambda s: None)
    counts: dict = {}
    for s in reference if reference is not None else samples:
        counts.setdefault(key(s), Counter())[s.answer] += 1
    guess = {k: c.most_common(1)[0][0] for k, c in counts.items()}
    return sum(s.answer == guess.get(key(s)) for s in samples) / len(samples)


def describe(samples: list[Sample]) -> dict[str, int]:
    """Answer histogram, in numeric order: shows at a glance whether one value dominates."""
    def order(answer: str):
        numeric = answer.lstrip("-").isdigit()
        return (not numeric, int(answer) if numeric else 0, answer)

    hist = Counter(s.answer for s in samples)
    return dict(sorted(hist.items(), key=lambda kv: order(kv[0])))


def corpus_text(n: int = 8, seed: int = 0) -> str:
    """Prompts and teacher solutions of every world, for `build_tokenizer(extra_text=...)` to learn their words."""
    lines = []
    for name in sorted(WORLDS):  # the grid worlds: the tiny tokenizer's corpus stays as it was
        for style in STYLES:
            for s in make_world(name, "train", n, seed, with_solution=True, style=style):
                lines += [s.question_text(), s.target()]
    return "\n".join(lines)
