"""Grid scenes: objects on a board, their layout, their split and their picture.

A scene is a `grid` x `grid` board; each cell is empty or holds one (colour, shape).
With the defaults (4 x 4 on 112 x 112 pixels) each 28 x 28 cell is exactly what one
merged Qwen VL image token sees, so a tiny model can read the board token by token.
"""

from __future__ import annotations

import hashlib
import random
from dataclasses import dataclass, fields
from typing import Any, Callable, NamedTuple

from PIL import Image, ImageDraw

from ...errors import ConfigError

COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (220, 40, 40), "green": (30, 160, 60), "blue": (40, 90, 230), "yellow": (235, 200, 20),
    "purple": (150, 50, 190), "orange": (245, 130, 20), "cyan": (20, 200, 210), "gray": (120, 120, 120),
    "brown": (130, 80, 30), "pink": (250, 130, 190), "black": (20, 20, 20),
}
SHAPES = ("circle", "square", "triangle", "diamond", "cross")
PLURALS = {"cross": "crosses"}
BACKGROUND = (240, 240, 240)
MIN_COLOUR_DISTANCE = 80  # RGB L2 distance every pair of palette colours (and the background) keeps

# Scenes are assigned to splits by a hash of their layout, so splits are disjoint whatever the seeds.
SPLIT_BUCKETS = {"train": range(0, 80), "val": range(80, 90), "test": range(90, 100)}

R1V_INSTRUCTION = ("{question} Output the thinking process in <think> </think> and final answer "
                   "(number) in <answer> </answer> tags.")


class Task(NamedTuple):
    """What a world draws for one sample, before rendering."""

    question: str
    answer: int
    category: str  # the question variant
    query: dict  # what the question refers to (colours, shape, weights), so a teacher can re-derive the answer
    objects: list  # [[row, col, colour, shape], ...]


def plural(shape: str) -> str:
    return PLURALS.get(shape, shape + "s")


def reject_unknown(params_class, overrides: dict, what: str) -> None:
    """A world parameter the dataclass does not have is a ConfigError naming it, not a silent default."""
    known = {f.name for f in fields(params_class)}
    bad = sorted(set(overrides) - known)
    if bad:
        raise ConfigError(f"unknown {what} parameter(s) {', '.join(bad)}; known: {', '.join(sorted(known))}")


@dataclass(frozen=True)
class Params:
    """Everything that shapes a world; unknown keys are a ConfigError, not silently ignored."""

    grid: int = 4
    image_size: int = 112
    colours: Any = ("red", "green", "blue", "yellow", "purple")  # names from COLOURS, or {name: (r, g, b)}
    shapes: tuple[str, ...] = ("circle", "square", "triangle")
    n_objects: tuple[int, int] = (3, 8)  # objects per scene, inclusive
    count_range: tuple[int, int] | None = None  # counting: the answer; reasoning: each queried colour
    weights: tuple[int, int] = (2, 5)  # reasoning: points per object, inclusive
    variants: tuple[str, ...] | None = None  # question variants; None = all of the world's
    instruction: str | None = R1V_INSTRUCTION  # "{question} ..." template, or None for the bare question
    background: tuple[int, int, int] = BACKGROUND
    object_size: tuple[float, float] = (0.28, 0.38)  # object radius as a fraction of the cell, drawn per object

    @classmethod
    def make(cls, defaults: dict, overrides: dict) -> "Params":
        reject_unknown(cls, overrides, "world")
        p = cls(**{**defaults, **overrides})
        p.check()
        return p

    @property
    def palette(self) -> dict[str, tuple[int, int, int]]:
        if isinstance(self.colours, dict):
            return {k: tuple(v) for k, v in self.colours.items()}
        unknown = [c for c in self.colours if c not in COLOURS]
        if unknown:
            raise ConfigError(f"unknown colour(s) {', '.join(unknown)}; known: {', '.join(COLOURS)} "
                              "(or pass colours as {name: (r, g, b)})")
        return {c: COLOURS[c] for c in self.colours}

    def check(self) -> None:
        pal = self.palette
        if len(pal) < 2:
            raise ConfigError("colours: need at least 2")
        rgbs = list(pal.items()) + [("background", tuple(self.background))]
        for i, (a, ca) in enumerate(rgbs):
            for b, cb in rgbs[i + 1:]:
                if sum((x - y) ** 2 for x, y in zip(ca, cb)) ** 0.5 < MIN_COLOUR_DISTANCE:
                    raise ConfigError(f"colours: {a} {ca} and {b} {cb} are too close to tell apart")
        bad = [s for s in self.shapes if s not in SHAPES]
        if bad or len(self.shapes) < 2:
            raise ConfigError(f"shapes: need at least 2 of {', '.join(SHAPES)}; got {list(self.shapes)}")
        lo, hi = self.n_objects
        if not 1 <= lo <= hi <= self.grid * self.grid:
            raise ConfigError(f"n_objects: need 1 <= min <= max <= grid*grid = {self.grid ** 2}; got {self.n_objects}")
        lo_r, hi_r = self.object_size
        if not 0.1 <= lo_r <= hi_r <= 0.5:
            raise ConfigError(f"object_size: need 0.1 <= min <= max <= 0.5 (radius / cell); got {self.object_size}")
        if self.image_size < 8 * self.grid:
            raise ConfigError(f"image_size {self.image_size} too small for a {self.grid}x{self.grid} grid")


def fill(rng: random.Random, p: Params, hits: list[tuple[str, str]], miss: Callable[[], tuple[str, str]] | None):
    """Add distractors drawn by `miss()` up to a random scene size, then place everything on the board."""
    lo, hi = p.n_objects
    n = rng.randint(max(lo, len(hits)), hi) if miss else len(hits)
    return place(rng, hits + [miss() for _ in range(n - len(hits))], p.grid)


def place(rng: random.Random, items: list[tuple[str, str]], grid: int) -> list[list]:
    """Put (colour, shape) items in distinct random cells; returns [[row, col, colour, shape], ...] in reading order."""
    cells = rng.sample(range(grid * grid), len(items))  # random cells in random order
    return sorted([*divmod(cell, grid), c, s] for cell, (c, s) in zip(cells, items))


def split_of(objects: list[list]) -> str:
    """The split a layout belongs to: a stable hash of the layout, independent of seeds and jitter."""
    key = ";".join(f"{r},{c},{col},{s}" for r, c, col, s in sorted(objects)).encode()
    bucket = int.from_bytes(hashlib.sha1(key).digest()[:4], "big") % 100
    return next(name for name, b in SPLIT_BUCKETS.items() if bucket in b)


def render(objects: list[list], rng: random.Random, p: Params) -> Image.Image:
    """Draw the board; each object gets a small random size/position jitter that stays inside its cell."""
    img = Image.new("RGB", (p.image_size, p.image_size), tuple(p.background))
    draw = ImageDraw.Draw(img)
    pal = p.palette
    cell = p.image_size / p.grid
    for row, col, colour, shape in objects:
        r = min(cell * rng.uniform(*p.object_size), cell / 2 - 1)  # stays inside its cell
        slack = max(0.0, cell / 2 - r - 1)
        cx = (col + 0.5) * cell + rng.uniform(-slack, slack)
        cy = (row + 0.5) * cell + rng.uniform(-slack, slack)
        _shape(draw, shape, cx, cy, r, pal[colour])
    return img


def _shape(draw: ImageDraw.ImageDraw, shape: str, x: float, y: float, r: float, rgb) -> None:
    if shape == "circle":
        draw.ellipse([x - r, y - r, x + r, y + r], fill=rgb)
    elif shape == "square":
        h = 0.85 * r  # a bit smaller than the circle's box so the areas look alike
        draw.rectangle([x - h, y - h, x + h, y + h], fill=rgb)
    elif shape == "triangle":
        draw.polygon([(x, y - r), (x + r, y + 0.8 * r), (x - r, y + 0.8 * r)], fill=rgb)
    elif shape == "diamond":
        draw.polygon([(x, y - r), (x + r, y), (x, y + r), (x - r, y)], fill=rgb)
    elif shape == "cross":
        w = 0.3 * r
        draw.rectangle([x - r, y - w, x + r, y + w], fill=rgb)
        draw.rectangle([x - w, y - r, x + w, y + r], fill=rgb)
    else:
        raise ConfigError(f"unknown shape {shape!r}; known: {', '.join(SHAPES)}")


def tally(objects: list[list], colours: list[str]) -> str:
    """'red 2, green 0, blue 1' over the whole palette, in palette order.

    Every colour gets its count, zeros included: each entry is one image read the model is
    taught, which is what makes the worlds learnable from pixels by a tiny model.
    """
    return ", ".join(f"{c} {sum(1 for _, _, col, _ in objects if col == c)}" for c in colours)
