"""A synthetic composed-image retrieval world (CIRR-style), generated from a seed.

A query is a reference scene (a few coloured shapes on a small grid) plus a modification text:

- remove:  "the same scene but with the red circle removed"
- add:     "the same scene but with a blue square added at the top-left"
- recolour: "the same scene but with the green triangle turned yellow"

The pool is shared by all queries (as in CIRR / M-BEIR). For each query it holds the target (the reference
with the modification applied) and HARD negatives, near-misses that differ from the target in one detail:
the reference unchanged, the wrong object removed, the right change in the wrong colour / shape / place, or
the right change plus one more. An embedder that compares pictures finds the neighbourhood of the reference
(all of these lie in it, so R@K is high for K a bit above the hard negatives per query), but it cannot tell
which near-miss the text asks for (R@1 stays low): the reranker's job.

Every candidate also carries a short text description of its layout (``"red circle top-left; blue square
centre"``), which stands in for its full tokens when a CPU reranker inspects it. Objects in a scene have
distinct (colour, shape) pairs, so a modification names exactly one object. Identical layouts share one
candidate, so no query has two equally right answers in the pool. Splits are disjoint by the reference
layout's hash (`scenes.split_of`), as in the other worlds.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

from ..data.worlds.scenes import COLOURS, SPLIT_BUCKETS, SHAPES, Params, reject_unknown, render, split_of
from ..errors import ConfigError
from .data import Candidate, RetrievalQuery, RetrievalSet

EDITS = ("remove", "add", "recolour")
HARD_KINDS = ("reference", "wrong_object", "wrong_colour", "wrong_shape", "wrong_place", "extra_change")
MAX_TRIES = 10_000


@dataclass(frozen=True)
class CirParams:
    """Knobs of the world; unknown keys are a ConfigError."""

    grid: int = 3
    image_size: int = 84
    colours: tuple[str, ...] = ("red", "green", "blue", "yellow", "purple")
    shapes: tuple[str, ...] = ("circle", "square", "triangle")
    n_objects: tuple[int, int] = (3, 5)  # objects in the reference scene, inclusive (3+: a removal leaves 2+)
    edits: tuple[str, ...] = EDITS
    n_hard: int = 7  # hard negatives per query (at most this many; fewer when a kind has no instance)
    n_distractors: int = 0  # extra random scenes added to the pool per query

    @classmethod
    def make(cls, overrides: dict) -> "CirParams":
        reject_unknown(cls, overrides, "retrieval world")
        p = cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in overrides.items()})
        unknown = [c for c in p.colours if c not in COLOURS] + [s for s in p.shapes if s not in SHAPES]
        if unknown:
            raise ConfigError(f"unknown colour/shape {', '.join(unknown)}")
        if len(p.colours) < 3 or len(p.shapes) < 2:
            raise ConfigError("need at least 3 colours and 2 shapes (the hard negatives need alternatives)")
        lo, hi = p.n_objects
        if not 2 <= lo <= hi <= min(p.grid * p.grid - 2, len(p.colours) * len(p.shapes) - 1):
            raise ConfigError(f"n_objects {p.n_objects}: need 2 <= min <= max <= grid*grid - 2")
        if not p.edits or any(e not in EDITS for e in p.edits):
            raise ConfigError(f"edits must be a non-empty subset of {', '.join(EDITS)}; got {list(p.edits)}")
        if p.n_hard < 0 or p.n_distractors < 0:
            raise ConfigError("n_hard and n_distractors must be >= 0")
        return p

    def scene_params(self) -> Params:
        return Params(grid=self.grid, image_size=self.image_size, colours=self.colours, shapes=self.shapes)


def place_name(row: int, col: int, grid: int) -> str:
    """'top-left', 'centre', ... on a 3x3 grid; 'row 2 column 4' otherwise."""
    if grid == 3:
        v, h = ("top", "middle", "bottom")[row], ("left", "centre", "right")[col]
        if v == "middle":
            return h
        return v if h == "centre" else f"{v}-{h}"
    return f"row {row + 1} column {col + 1}"


def describe(objects, grid: int) -> str:
    """The candidate's text: its objects in reading order."""
    return "; ".join(f"{c} {s} {place_name(r, k, grid)}" for r, k, c, s in sorted(objects)) or "empty scene"


def _key(objects) -> tuple:
    return tuple(sorted(tuple(o) for o in objects))


# ------------------------------------------------------------------------------------ edits


def _apply(objects, edit: dict) -> list[list]:
    objs = [list(o) for o in objects]
    if edit["op"] == "remove":
        return [o for o in objs if (o[2], o[3]) != (edit["colour"], edit["shape"])]
    if edit["op"] == "add":
        return sorted(objs + [[edit["row"], edit["col"], edit["colour"], edit["shape"]]])
    return [[r, k, edit["to"], s] if (c, s) == (edit["colour"], edit["shape"]) else [r, k, c, s]
            for r, k, c, s in objs]


def edit_text(edit: dict, grid: int) -> str:
    if edit["op"] == "remove":
        what = f"the {edit['colour']} {edit['shape']} removed"
    elif edit["op"] == "add":
        what = f"a {edit['colour']} {edit['shape']} added at the {place_name(edit['row'], edit['col'], grid)}"
    else:
        what = f"the {edit['colour']} {edit['shape']} turned {edit['to']}"
    return f"the same scene but with {what}"


def _free_cells(objects, grid):
    used = {(r, k) for r, k, _, _ in objects}
    return [(r, k) for r in range(grid) for k in range(grid) if (r, k) not in used]


def _unused(objects, p: CirParams):
    have = {(c, s) for _, _, c, s in objects}
    return [(c, s) for c in p.colours for s in p.shapes if (c, s) not in have]


def _random_edit(rng: random.Random, objects, p: CirParams) -> dict:
    op = rng.choice(p.edits)
    if op == "remove":
        _, _, c, s = rng.choice(objects)
        return {"op": "remove", "colour": c, "shape": s}
    if op == "add":
        r, k = rng.choice(_free_cells(objects, p.grid))
        c, s = rng.choice(_unused(objects, p))
        return {"op": "add", "colour": c, "shape": s, "row": r, "col": k}
    _, _, c, s = rng.choice(objects)
    have = {(cc, ss) for _, _, cc, ss in objects}
    to = rng.choice([x for x in p.colours if x != c and (x, s) not in have])
    return {"op": "recolour", "colour": c, "shape": s, "to": to}


def _hard_negatives(rng: random.Random, ref, edit: dict, target, p: CirParams) -> list[tuple[str, list]]:
    """(kind, layout) near-misses of the target; each differs from it."""
    have = {(c, s) for _, _, c, s in ref}
    out: list[tuple[str, list]] = [("reference", [list(o) for o in ref])]
    others = [o for o in ref if (o[2], o[3]) != (edit["colour"], edit["shape"])]
    if edit["op"] == "remove":
        if others:
            _, _, c, s = rng.choice(others)
            out.append(("wrong_object", _apply(ref, {"op": "remove", "colour": c, "shape": s})))
        for o in others[:1]:  # the right object removed, but another one recoloured too
            to = rng.choice([x for x in p.colours if x != o[2] and (x, o[3]) not in have] or [o[2]])
            if to != o[2]:
                out.append(("extra_change", _apply(target, {"op": "recolour", "colour": o[2], "shape": o[3], "to": to})))
        if len(others) >= 2:  # both removed
            _, _, c, s = rng.choice(others)
            out.append(("extra_change", _apply(target, {"op": "remove", "colour": c, "shape": s})))
    elif edit["op"] == "add":
        free = [x for x in _free_cells(ref, p.grid) if x != (edit["row"], edit["col"])]
        alt_c = [x for x in p.colours if x != edit["colour"] and (x, edit["shape"]) not in have]
        alt_s = [x for x in p.shapes if x != edit["shape"] and (edit["colour"], x) not in have]
        at = {"row": edit["row"], "col": edit["col"]}
        if alt_c:
            out.append(("wrong_colour", _apply(ref, {"op": "add", "colour": rng.choice(alt_c), "shape": edit["shape"], **at})))
        if alt_s:
            out.append(("wrong_shape", _apply(ref, {"op": "add", "colour": edit["colour"], "shape": rng.choice(alt_s), **at})))
        for r, k in rng.sample(free, min(2, len(free))):
            out.append(("wrong_place", _apply(ref, {"op": "add", "colour": edit["colour"], "shape": edit["shape"],
                                                    "row": r, "col": k})))
        if others:
            _, _, c, s = rng.choice(others)
            out.append(("extra_change", _apply(target, {"op": "remove", "colour": c, "shape": s})))
    else:
        alt = [x for x in p.colours if x not in (edit["colour"], edit["to"]) and (x, edit["shape"]) not in have]
        for to in rng.sample(alt, min(2, len(alt))):
            out.append(("wrong_colour", _apply(ref, {**edit, "to": to})))
        if others:
            o = rng.choice(others)
            if (edit["to"], o[3]) not in have:
                out.append(("wrong_object", _apply(ref, {"op": "recolour", "colour": o[2], "shape": o[3], "to": edit["to"]})))
            out.append(("extra_change", _apply(target, {"op": "remove", "colour": o[2], "shape": o[3]})))
        cells = _free_cells(target, p.grid)
        extra = _unused(target, p)
        if cells and extra:
            (r, k), (c, s) = rng.choice(cells), rng.choice(extra)
            out.append(("extra_change", _apply(target, {"op": "add", "colour": c, "shape": s, "row": r, "col": k})))
    tkey, seen, kept = _key(target), set(), []
    for kind, objs in out:
        k = _key(objs)
        if k != tkey and k not in seen and objs:
            seen.add(k)
            kept.append((kind, objs))
    rng.shuffle(kept)
    kept.sort(key=lambda x: x[0] != "reference")  # the unchanged reference is always among them
    return kept[:p.n_hard]


def _scene(rng: random.Random, p: CirParams) -> list[list]:
    n = rng.randint(*p.n_objects)
    items = rng.sample([(c, s) for c in p.colours for s in p.shapes], n)
    cells = rng.sample(range(p.grid * p.grid), n)
    return sorted([*divmod(cell, p.grid), c, s] for cell, (c, s) in zip(cells, items))


# ------------------------------------------------------------------------------------ the world


def make_cir_world(n: int = 200, split: str = "test", seed: int = 0, **params) -> RetrievalSet:
    """`n` composed-image queries over one shared pool; deterministic in (split, seed, params).

    Query i's random stream is seeded from (split, seed, i) alone, so the first k queries do not depend
    on n (the pool grows with n). Candidate dids are ``"cir:<n>"`` in pool order; query ids
    ``"cir-<split>-<seed>:<i>"``. Query meta: reference objects, the edit, the target objects and the
    kind of each hard negative; candidate meta: objects.
    """
    if split not in SPLIT_BUCKETS:
        raise ConfigError(f"unknown split {split!r}; choose one of {', '.join(SPLIT_BUCKETS)}")
    p = CirParams.make(params)
    sp = p.scene_params()
    pool: dict[str, Candidate] = {}
    by_layout: dict[tuple, str] = {}
    queries: list[RetrievalQuery] = []

    def add(objs, rng) -> str:
        k = _key(objs)
        if k not in by_layout:
            did = f"cir:{len(pool)}"
            by_layout[k] = did
            pool[did] = Candidate(did=did, modality="image,text", text=describe(objs, p.grid),
                                  image=render(objs, rng, sp), meta={"objects": [list(o) for o in sorted(objs)]})
        return by_layout[k]

    for i in range(n):
        rng = random.Random(f"cir/{split}/{seed}/{i}")
        for _ in range(MAX_TRIES):
            ref = _scene(rng, p)
            if split_of(ref) == split:
                break
        else:  # pragma: no cover - only with a tiny world
            raise ConfigError(f"no {split} scene found in {MAX_TRIES} draws; the world is too small")
        edit = _random_edit(rng, ref, p)
        target = _apply(ref, edit)
        hard = _hard_negatives(rng, ref, edit, target, p)
        tdid = add(target, rng)
        hdids = [add(objs, rng) for _, objs in hard]
        for _ in range(p.n_distractors):
            add(_scene(rng, p), rng)
        queries.append(RetrievalQuery(
            qid=f"cir-{split}-{seed}:{i}", modality="image,text", text=edit_text(edit, p.grid),
            image=render(ref, rng, sp), positives=[tdid], negatives=hdids, task_id=7,
            meta={"reference": ref, "edit": edit, "target": target, "hard_kinds": [k for k, _ in hard],
                  "reference_text": describe(ref, p.grid)}))
    qrels = {q.qid: {q.positives[0]: 1} for q in queries}
    return RetrievalSet(queries, pool, qrels)


__all__ = ["CirParams", "EDITS", "HARD_KINDS", "describe", "edit_text", "make_cir_world", "place_name"]
