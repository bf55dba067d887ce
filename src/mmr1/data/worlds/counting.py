"""World (a), the CLEVR-counting analogue: "How many red objects / squares are in the image?"

The answer is drawn first, uniformly over `count_range`, and the scene is built around it,
so the answer never follows from the question text and no value dominates (majority ~1/6).
"""

from __future__ import annotations

import random

from ...errors import ConfigError
from .scenes import Params, Task, fill, plural, tally

VARIANTS = ("count_colour", "count_shape")
DEFAULTS = {"count_range": (0, 5)}


def check(p: Params) -> None:
    lo, hi = p.count_range
    if not 0 <= lo <= hi <= p.n_objects[1]:
        raise ConfigError(f"count_range: need 0 <= min <= max <= n_objects max {p.n_objects[1]}; got {p.count_range}")


def sample(rng: random.Random, p: Params, variant: str) -> Task:
    colours, shapes = list(p.palette), list(p.shapes)
    c = rng.randint(*p.count_range)
    if variant == "count_colour":
        target = rng.choice(colours)
        rest = [x for x in colours if x != target]
        hits = [(target, rng.choice(shapes)) for _ in range(c)]
        objects = fill(rng, p, hits, lambda: (rng.choice(rest), rng.choice(shapes)))
        return Task(f"How many {target} objects are in the image?", c, variant, {"colour": target}, objects)
    target = rng.choice(shapes)
    rest = [x for x in shapes if x != target]
    hits = [(rng.choice(colours), target) for _ in range(c)]
    objects = fill(rng, p, hits, lambda: (rng.choice(colours), rng.choice(rest)))
    return Task(f"How many {plural(target)} are in the image?", c, variant, {"shape": target}, objects)


def solve(meta: dict, style: str) -> tuple[str, int]:
    """Teacher reasoning: tally every colour (or shape) in the picture, then read off the asked one."""
    objects, query = meta["objects"], meta["query"]
    if "colour" in query:
        key, n = query["colour"], sum(1 for _, _, col, _ in objects if col == query["colour"])
        think = f"Counts by colour: {tally(objects, meta['colours'])}. So {key} {n}."
    else:
        shapes = meta.get("shapes") or sorted({s for *_, s in objects} | {query["shape"]})
        counts = ", ".join(f"{plural(x)} {sum(1 for *_, s in objects if s == x)}" for x in shapes)
        key, n = plural(query["shape"]), sum(1 for *_, s in objects if s == query["shape"])
        think = f"Counts by shape: {counts}. So {key} {n}."
    if style == "reflective":
        think += f" Wait, let me check again: {key} {n}. Yes, {n}."
    return think, n
