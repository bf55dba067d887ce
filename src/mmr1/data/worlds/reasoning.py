"""World (b), the GeoQA analogue: a small computation over two quantities read from the image.

Variants: a weighted score, a difference (ordered so it is >= 0) and a total. Counts per
queried colour are drawn from `count_range` and the scene is built around them, so the
question text alone does not give the answer.
"""

from __future__ import annotations

import random

from ...errors import ConfigError
from .scenes import Params, Task, fill, tally

VARIANTS = ("weighted_sum", "difference", "total")
DEFAULTS = {"count_range": (0, 4)}


def check(p: Params) -> None:
    lo, hi = p.count_range
    if not 0 <= lo <= hi or 2 * lo > p.n_objects[1] or hi == 0:
        raise ConfigError(f"count_range: need 0 <= min <= max, max >= 1, 2*min <= n_objects max; got {p.count_range}")
    wlo, whi = p.weights
    if not 1 <= wlo < whi:
        raise ConfigError(f"weights: need 1 <= min < max (two distinct weights); got {p.weights}")


def _counts(rng: random.Random, p: Params, variant: str) -> tuple[int, int]:
    """Counts (a, b) of the two queried colours, drawn so each variant's answer is spread out."""
    lo, hi = p.count_range
    cap = p.n_objects[1]
    while True:
        if variant == "difference":  # the difference itself is uniform
            d = rng.randint(0, hi - lo)
            b = rng.randint(lo, hi - d)
            a = b + d
        elif variant == "total":  # the total itself is uniform
            t = rng.randint(max(1, 2 * lo), min(2 * hi, cap))
            a = rng.randint(max(lo, t - hi), min(hi, t))
            b = t - a
        else:
            a, b = rng.randint(lo, hi), rng.randint(lo, hi)
        if 0 < a + b <= cap:
            return a, b


def sample(rng: random.Random, p: Params, variant: str) -> Task:
    colours, shapes = list(p.palette), list(p.shapes)
    c1, c2 = rng.sample(colours, 2)
    a, b = _counts(rng, p, variant)
    rest = [x for x in colours if x not in (c1, c2)]
    hits = [(c1, rng.choice(shapes)) for _ in range(a)] + [(c2, rng.choice(shapes)) for _ in range(b)]
    objects = fill(rng, p, hits, (lambda: (rng.choice(rest), rng.choice(shapes))) if rest else None)
    query = {"op": variant, "colours": [c1, c2]}
    if variant == "weighted_sum":
        w1, w2 = rng.sample(range(p.weights[0], p.weights[1] + 1), 2)
        query["weights"] = [w1, w2]
        q = (f"Each {c1} object is worth {_points(w1)} and each {c2} object is worth {_points(w2)}. "
             "What is the total score?")
        return Task(q, a * w1 + b * w2, variant, query, objects)
    if variant == "difference":
        return Task(f"How many more {c1} objects than {c2} objects are there?", a - b, variant, query, objects)
    return Task(f"How many {c1} and {c2} objects are there in total?", a + b, variant, query, objects)


def _points(w: int) -> str:
    return f"{w} point" if w == 1 else f"{w} points"


def solve(meta: dict, style: str) -> tuple[str, int]:
    """Teacher reasoning: tally every colour, read the two asked counts, compute."""
    objects, query = meta["objects"], meta["query"]
    c1, c2 = query["colours"]
    a, b = (sum(1 for _, _, col, _ in objects if col == c) for c in (c1, c2))
    if query["op"] == "weighted_sum":
        w1, w2 = query["weights"]
        ans = a * w1 + b * w2
        steps = f"{a} * {w1} = {a * w1}. {b} * {w2} = {b * w2}. {a * w1} + {b * w2} = {ans}."
    elif query["op"] == "difference":
        ans = a - b
        steps = f"{a} - {b} = {ans}."
    else:
        ans = a + b
        steps = f"{a} + {b} = {ans}."
    think = f"Counts by colour: {tally(objects, meta['colours'])}. So {c1} {a}, {c2} {b}. {steps}"
    if style == "reflective":
        think += f" Wait, let me check again: {c1}: {a}, {c2}: {b}. Yes, {ans}."
    return think, ans
