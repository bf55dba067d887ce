"""World (c), the FVQA analogue for MMSearch-R1 (METHODS §4.6): questions about an entity shown by its emblem.

A world of `n_entities` invented organisations, all drawn from the seed. Each has a procedural emblem
(a field colour, a stripe pattern and a central shape: distinct for every entity), a name and four facts
(founding year, home city, founder, mascot). The image shows the emblem only, so every question needs
knowledge that is not in the picture: "In which year was the organisation whose emblem is shown founded?"
The question text never names the entity; its answer depends on which emblem is shown.

Familiar and unfamiliar entities. A fixed fraction (`familiar_fraction`) of the entities is "familiar":
what a base model already knows in the paper. Here that knowledge is taught by the warm-up SFT
(`warmup_sft`): direct answers, ``<reason>…</reason><answer>…</answer>``, for every fact of every familiar
entity. Unfamiliar entities must be looked up: image search with the question image finds the entity's
page (`corpus`: one record ``{id, image, title, text}`` per entity, the search index's documents), whose
text holds the facts. Their teacher trajectory is two turns: an image search, then the answer.

Splits. A question is an (entity, fact) pair; its split is a stable hash of that pair (80/10/10), so train,
val and test never ask the same thing (a test question about a familiar entity asks a fact the warm-up
SFT taught as knowledge, like a base model's pre-training; one about an unfamiliar entity asks a fact no
training sample answers). The train split is search-balanced as in the paper: sample i needs search
for a `search_fraction` share of every prefix (default 1/2; FVQA-train is about 3,400 search-required of
5,000); val and test keep the natural mix (about `familiar_fraction` search-free) unless
`eval_search_fraction` balances them too (a world with many unfamiliar entities still gets a test set with
enough familiar questions to measure). The paper finds which
questions need search from a model's rollouts; here it is known by construction (`meta["needs_search"]`).

The first `len(pool)` samples of a split are distinct questions in a seeded order; later ones repeat them
with another template and image jitter. Question images are the emblem shifted by up to `jitter` pixels,
so an image search must match, not just look up bytes; the corpus holds the unshifted emblem.
"""

from __future__ import annotations

import hashlib
import math
import random
from dataclasses import dataclass
from functools import lru_cache
from typing import Callable

from PIL import Image, ImageDraw

from ...errors import ConfigError
from ...tools import IMAGE_MARKER, marked_parts
from ..schema import Sample, assistant_turn, count_image_parts, user_turn
from .scenes import COLOURS, SPLIT_BUCKETS, _shape, reject_unknown

NAME = "entities"
VARIANTS = ("name", "founded", "city", "founder", "mascot")  # the fact a question asks = Sample.category
STYLES = ("plain", "reflective")

# A paraphrase of MMSearch-R1's round-1 prompt (METHODS §4.2, the paper's Table 3).
SEARCH_INSTRUCTION = (
    "Answer the user's question about the image. First examine the image. If you cannot confidently identify "
    "what it shows, append the string <search><img></search> at the end of your response to search the web "
    "with the image. If you need textual knowledge you do not have, append <text_search>your query here"
    "</text_search> at the end of your response. Always reason inside <reason> and </reason> before any "
    "action. Search results are returned inside <information> and </information>. When you can answer, give "
    "the final answer inside <answer> and </answer> without detailed illustrations, for example: "
    "<answer>Titanic</answer>. Here is the image and the question: {question}")

TEMPLATES = {
    "name": ("What is the name of the organisation whose emblem is shown?",
             "Which organisation does the emblem in the image belong to?"),
    "founded": ("In which year was the organisation whose emblem is shown founded?",
                "When was the organisation with this emblem founded? Give the year."),
    "city": ("In which city is the organisation whose emblem is shown based?",
             "What is the home city of the organisation with this emblem?"),
    "founder": ("Who founded the organisation whose emblem is shown?",
                "Who is the founder of the organisation with this emblem?"),
    "mascot": ("What animal is the mascot of the organisation whose emblem is shown?",
               "Which animal does the organisation with this emblem have as its mascot?"),
}

ORG_TYPES = ("Society", "Guild", "League", "Club", "Order", "Union", "Company", "Circle", "Academy", "Fellowship")
MASCOTS = ("heron", "lynx", "otter", "falcon", "badger", "stag", "raven", "salmon", "tortoise", "wolf", "hare",
           "owl", "bison", "crane", "fox", "gecko", "ibex", "marten", "newt", "panther", "swan", "viper", "walrus",
           "yak")
_SYLLABLES = ("var", "nel", "tor", "mi", "ka", "dor", "ren", "sa", "lu", "bri", "os", "el", "an", "qui", "fen",
              "ga", "rho", "tes", "vin", "ul", "mar", "co", "da", "ther", "il", "po", "zen", "ru", "bel", "ash")
_CITY_ENDS = ("port", "ford", "holm", "gard", "mere", "wick", "stead", "ton")
PATTERNS = ("plain", "horizontal", "vertical", "diagonal", "border", "quartered")
EMBLEM_SHAPES = ("circle", "square", "triangle", "diamond", "cross", "star")
YEARS = (1650, 1999)


# ----------------------------------------------------------------------------------------- params

@dataclass(frozen=True)
class EntityParams:
    """Everything that shapes the entity world; unknown keys are a ConfigError."""

    n_entities: int = 64
    familiar_fraction: float = 0.5  # entities the warm-up SFT teaches (search-free questions)
    search_fraction: float | None = 0.5  # train split: share of questions that need search; None = natural mix
    eval_search_fraction: float | None = None  # the same for val and test (None: the natural mix)
    image_size: int = 112
    jitter: int = 4  # question images: the emblem shifted by up to this many pixels each way
    variants: tuple[str, ...] | None = None  # facts asked; None = all of VARIANTS
    instruction: str | None = SEARCH_INSTRUCTION  # "{question}" template, appended text, or None (bare question)

    @classmethod
    def make(cls, overrides: dict) -> "EntityParams":
        reject_unknown(cls, overrides, f"{NAME} world")
        p = cls(**overrides)
        p.check()
        return p

    def check(self) -> None:
        if not 2 <= self.n_entities <= 2000:
            raise ConfigError(f"n_entities: need 2 to 2000, got {self.n_entities}")
        if not 0.0 <= self.familiar_fraction <= 1.0:
            raise ConfigError(f"familiar_fraction: need a value in [0, 1], got {self.familiar_fraction}")
        for key in ("search_fraction", "eval_search_fraction"):
            v = getattr(self, key)
            if v is not None and not 0.0 <= v <= 1.0:
                raise ConfigError(f"{key}: need a value in [0, 1] or None, got {v}")
        if self.image_size < 32:
            raise ConfigError(f"image_size: need at least 32 pixels, got {self.image_size}")
        if not 0 <= self.jitter <= self.image_size // 8:
            raise ConfigError(f"jitter: need 0 to image_size / 8 = {self.image_size // 8} pixels, got {self.jitter}")
        bad = [v for v in self.variants or () if v not in VARIANTS]
        if bad or (self.variants is not None and not self.variants):
            raise ConfigError(f"variants: choose from {', '.join(VARIANTS)}; got {list(self.variants or ())}")

    @property
    def kinds(self) -> tuple[str, ...]:
        return tuple(self.variants or VARIANTS)

    def universe(self) -> dict:
        """The params that decide the entities (JSON-able, stored in each sample's meta)."""
        return {"n_entities": self.n_entities, "familiar_fraction": self.familiar_fraction,
                "image_size": self.image_size, "jitter": self.jitter}


# --------------------------------------------------------------------------------------- entities

@dataclass(frozen=True)
class Emblem:
    field: str  # colour names from scenes.COLOURS
    pattern: str
    stripe: str | None  # None for the plain pattern
    shape: str
    shape_colour: str


@dataclass(frozen=True)
class Entity:
    index: int
    id: str
    name: str  # "Varnel Guild"
    short_name: str  # "Varnel"
    founded: int
    city: str
    founder: str
    mascot: str
    familiar: bool
    emblem: Emblem

    def answers(self, kind: str) -> list[str]:
        """The canonical answer to a question about `kind`, then the other accepted answers."""
        if kind == "name":
            return [self.name, self.short_name]
        if kind == "founded":
            return [str(self.founded)]
        if kind == "city":
            return [self.city]
        if kind == "founder":
            return [self.founder, self.founder.split()[-1]]
        if kind == "mascot":
            return [self.mascot]
        raise ConfigError(f"unknown {NAME} question kind {kind!r}; choose from {', '.join(VARIANTS)}")

    def fact_sentence(self, kind: str) -> str:
        return {"name": f"Its name is {self.name}.",
                "founded": f"{self.name} was founded in {self.founded}.",
                "city": f"{self.name} is based in {self.city}.",
                "founder": f"{self.name} was founded by {self.founder}.",
                "mascot": f"The mascot of {self.name} is the {self.mascot}."}[kind]

    @property
    def title(self) -> str:
        return self.name

    @property
    def text(self) -> str:
        """The entity's web page: every fact, none of them visible in the emblem."""
        kind = self.name.split()[-1].lower()
        return (f"{self.name} is a {kind} founded in {self.founded} in the city of {self.city} by {self.founder}. "
                f"Its mascot is the {self.mascot}.")


def _word(rng: random.Random, lo: int, hi: int) -> str:
    return "".join(rng.choice(_SYLLABLES) for _ in range(rng.randint(lo, hi))).capitalize()


def _emblem(rng: random.Random) -> Emblem:
    colours = list(COLOURS)
    field = rng.choice(colours)
    pattern = rng.choice(PATTERNS)
    stripe = None if pattern == "plain" else rng.choice([c for c in colours if c != field])
    shape_colour = rng.choice([c for c in colours if c not in (field, stripe)])
    return Emblem(field, pattern, stripe, rng.choice(EMBLEM_SHAPES), shape_colour)


@lru_cache(maxsize=32)
def entities(seed: int = 0, n_entities: int = 64, familiar_fraction: float = 0.5) -> tuple[Entity, ...]:
    """The world's entities. Entity i depends only on (seed, i): a larger world extends a smaller one.
    Exactly round(familiar_fraction * n_entities) of them are familiar, chosen by the seed."""
    rng = random.Random(f"{NAME}/{seed}/universe")
    used: set = set()

    def fresh(make):
        for _ in range(10_000):
            x = make()
            if x not in used:
                used.add(x)
                return x
        raise ConfigError(f"{NAME}: ran out of distinct names or emblems; lower n_entities")

    n_familiar = round(familiar_fraction * n_entities)
    familiar = set(random.Random(f"{NAME}/{seed}/familiar").sample(range(n_entities), n_familiar))
    out = []
    for i in range(n_entities):
        short = fresh(lambda: _word(rng, 2, 3))
        name = f"{short} {rng.choice(ORG_TYPES)}"
        city = fresh(lambda: _word(rng, 1, 2) + rng.choice(_CITY_ENDS))
        last = fresh(lambda: _word(rng, 2, 3))
        founder = f"{_word(rng, 1, 2)} {last}"
        emblem = fresh(lambda: _emblem(rng))
        out.append(Entity(i, f"{NAME}-{seed}-{i:04d}", name, short, rng.randint(*YEARS), city, founder,
                          rng.choice(MASCOTS), i in familiar, emblem))
    return tuple(out)


# ---------------------------------------------------------------------------------------- pictures

def _star(draw: ImageDraw.ImageDraw, x: float, y: float, r: float, rgb) -> None:
    pts = []
    for k in range(10):
        a = -math.pi / 2 + k * math.pi / 5
        rad = r if k % 2 == 0 else 0.45 * r
        pts.append((x + rad * math.cos(a), y + rad * math.sin(a)))
    draw.polygon(pts, fill=rgb)


def render_emblem(emblem: Emblem, size: int = 112, offset: tuple[int, int] = (0, 0)) -> Image.Image:
    """The emblem on a `size` x `size` picture, the whole design shifted by `offset` pixels."""
    dx, dy = offset
    img = Image.new("RGB", (size, size), COLOURS[emblem.field])
    draw = ImageDraw.Draw(img)
    s = size
    if emblem.stripe is not None:
        c = COLOURS[emblem.stripe]
        w = s / 7
        if emblem.pattern == "horizontal":
            for k in (1, 3, 5):
                draw.rectangle([-s, dy + k * w, 2 * s, dy + (k + 1) * w], fill=c)
        elif emblem.pattern == "vertical":
            for k in (1, 3, 5):
                draw.rectangle([dx + k * w, -s, dx + (k + 1) * w, 2 * s], fill=c)
        elif emblem.pattern == "diagonal":
            for k in (-4, -2, 0, 2, 4):  # bands along x - y = const, long enough to cover any shift
                x0, y0, w2 = dx + k * s / 5, dy, s / 10
                draw.polygon([(x0 - s, y0 - s), (x0 - s + w2, y0 - s), (x0 + 2 * s + w2, y0 + 2 * s),
                              (x0 + 2 * s, y0 + 2 * s)], fill=c)
        elif emblem.pattern == "border":
            b = s / 9
            draw.rectangle([dx + b / 2, dy + b / 2, dx + s - b / 2, dy + s - b / 2], outline=c, width=round(b))
        elif emblem.pattern == "quartered":
            draw.rectangle([-s, -s, dx + s / 2, dy + s / 2], fill=c)
            draw.rectangle([dx + s / 2, dy + s / 2, 2 * s, 2 * s], fill=c)
    x, y, r = dx + s / 2, dy + s / 2, 0.27 * s
    rgb = COLOURS[emblem.shape_colour]
    if emblem.shape == "star":
        _star(draw, x, y, r * 1.15, rgb)
    else:
        _shape(draw, emblem.shape, x, y, r, rgb)
    return img


# ------------------------------------------------------------------------------------------- corpus

def corpus(seed: int = 0, n_entities: int = 64, image_size: int = 112) -> list[dict]:
    """The search index's documents: one ``{id, image, title, text}`` per entity (the unshifted emblem,
    the entity's name, its page with every fact)."""
    return [{"id": e.id, "image": render_emblem(e.emblem, image_size), "title": e.title, "text": e.text}
            for e in entities(seed, n_entities)]


IMAGE_RESULTS_HEADER = ("[Image Search Results] Web pages whose images match the query image, "
                        "most relevant first.")


def format_results(records: list[dict], header: str = IMAGE_RESULTS_HEADER, marker: bool = True) -> str:
    """The text of an image search's result: a header, then per record "k. <tool_image> title" and its
    text. `marker` puts `mmr1.tools.IMAGE_MARKER` where the record's image goes (the agent loop places the
    ToolResult's images there)."""
    lines = [header]
    for k, r in enumerate(records, 1):
        lines.append(f"{k}. {IMAGE_MARKER + ' ' if marker else ''}{r['title']}\n{r['text']}")
    return "\n".join(lines)


# ------------------------------------------------------------------------------------------- splits

def question_split(index: int, kind: str) -> str:
    """The split of the question "fact `kind` of entity `index`": a stable hash, independent of the seed."""
    bucket = int.from_bytes(hashlib.sha1(f"{NAME}/{index}/{kind}".encode()).digest()[:4], "big") % 100
    return next(name for name, b in SPLIT_BUCKETS.items() if bucket in b)


def _pools(ents: tuple[Entity, ...], kinds: tuple[str, ...], split: str, seed: int):
    """(search-free, search-required) questions of `split`, each in a seeded order."""
    qs = [(e, k) for e in ents for k in kinds if question_split(e.index, k) == split]
    rng = random.Random(f"{NAME}/{split}/{seed}/order")
    rng.shuffle(qs)
    return [q for q in qs if q[0].familiar], [q for q in qs if not q[0].familiar], qs


def _format_prompt(question: str, instruction: str | None) -> str:
    if instruction is None:
        return question
    if "{question}" in instruction:
        return instruction.replace("{question}", question)
    return f"{question} {instruction}"


def _sample(sample_id: str, source: str, e: Entity, kind: str, rng: random.Random, p: EntityParams,
            seed: int) -> Sample:
    question = rng.choice(TEMPLATES[kind])
    j = p.jitter
    offset = (rng.randint(-j, j), rng.randint(-j, j))
    meta = {"world": NAME, "seed": seed, "params": p.universe(), "entity": e.id, "entity_index": e.index,
            "name": e.name, "kind": kind, "familiar": e.familiar, "needs_search": not e.familiar,
            "search_type": "search_free" if e.familiar else "image_search", "question": question,
            "offset": list(offset)}
    return Sample(id=sample_id, messages=[user_turn(_format_prompt(question, p.instruction))],
                  images=[render_emblem(e.emblem, p.image_size, offset)], answers=e.answers(kind),
                  answer_type="text", category=kind, source=source, meta=meta)


def _needs_search(i: int, f: float) -> tuple[bool, int]:
    """Whether sample i of a balanced split needs search, and its rank among the samples of its kind:
    exactly floor(i * f) of the first i samples need search, for every i."""
    before = math.floor(i * f + 1e-9)
    search = math.floor((i + 1) * f + 1e-9) > before
    return search, (before if search else i - before)


def make_world(split: str = "train", n: int = 1000, seed: int = 0, with_solution: bool = False,
               style: str = "plain", render: Callable | None = None, **params) -> list[Sample]:
    """`n` questions of the `split` split (see the module docstring); `params` are `EntityParams` fields.

    with_solution appends the teacher turns (`teacher_messages`; `render` formats the observation turn).
    `style` is accepted for the world interface; the teacher has one style.
    """
    if split not in SPLIT_BUCKETS:
        raise ConfigError(f"unknown split {split!r}; choose one of {', '.join(SPLIT_BUCKETS)}")
    if style not in STYLES:
        raise ConfigError(f"unknown style {style!r}; choose one of {', '.join(STYLES)}")
    p = EntityParams.make(params)
    ents = entities(seed, p.n_entities, p.familiar_fraction)
    free, needs, everything = _pools(ents, p.kinds, split, seed)
    key = "search_fraction" if split == "train" else "eval_search_fraction"
    f = getattr(p, key)
    if f is not None and ((f > 0 and not needs) or (f < 1 and not free)):
        raise ConfigError(f"{NAME}: the {split} split has {len(free)} search-free and {len(needs)} search-required "
                          f"questions, too few for {key}={f}; raise n_entities or change familiar_fraction")
    if not everything:
        raise ConfigError(f"{NAME}: the {split} split has no questions; raise n_entities")
    out = []
    for i in range(n):
        rng = random.Random(f"{NAME}/{split}/{seed}/{i}")
        if f is None:
            e, kind = everything[i % len(everything)]
        else:
            search, rank = _needs_search(i, f)
            pool = needs if search else free
            e, kind = pool[rank % len(pool)]
        s = _sample(f"{NAME}-{split}-{seed}-{i:06d}", f"{NAME}-{split}-{seed}:{i}", e, kind, rng, p, seed)
        if with_solution:
            s.messages, s.images = teacher_messages(s, render)
        out.append(s)
    return out


# ------------------------------------------------------------------------------------------ teacher

@dataclass
class Observation:
    """What a tool call returns to the agent (the loop renders it as the next user turn)."""

    tool: str  # "image_search"
    query: str  # the text between the action tags ("<img>" for an image search)
    text: str  # the tool's result text, with an IMAGE_MARKER per image
    images: list  # PIL images shown with it


@dataclass
class Teacher:
    """A teacher trajectory: assistant turns; observations[k] is the tool result that follows turns[k]."""

    turns: list[str]
    observations: list[Observation]


def _entity_of(sample: Sample) -> tuple[Entity, str, int]:
    meta = sample.meta
    if meta.get("world") != NAME:
        raise ConfigError(f"sample {sample.id} is not from the {NAME} world")
    u = meta["params"]
    e = entities(meta["seed"], u["n_entities"], u["familiar_fraction"])[meta["entity_index"]]
    return e, meta["kind"], u["image_size"]


def teacher_trajectory(sample: Sample) -> Teacher:
    """Direct answer for a familiar entity; image search, then the answer, for an unfamiliar one."""
    e, kind, size = _entity_of(sample)
    answer = e.answers(kind)[0]
    if e.familiar:
        return Teacher([f"<reason>I recognise this emblem: it belongs to {e.name}. {e.fact_sentence(kind)}"
                        f"</reason><answer>{answer}</answer>"], [])
    search = ("<reason>I do not recognise this emblem, so I cannot answer from memory. I will search with the "
              "image to find the organisation it belongs to.</reason><search><img></search>")
    record = {"title": e.title, "text": e.text}
    obs = Observation("image_search", "<img>", format_results([record]), [render_emblem(e.emblem, size)])
    final = (f"<reason>The top search result shows the same emblem: it belongs to {e.name}. "
             f"{e.fact_sentence(kind)}</reason><answer>{answer}</answer>")
    return Teacher([search, final], [obs])


def _default_render():
    from ...rollout.agent import ObservationFormat  # lazy: the agent loop pulls in torch

    return ObservationFormat().success


def teacher_messages(sample: Sample, render: Callable | None = None) -> tuple[list[dict], list]:
    """(messages, images) of the sample's prompt followed by its teacher trajectory, for SFT.

    `render(tool, result_text, question) -> user text` formats an observation turn (default: the agent
    loop's `ObservationFormat().success`, so SFT sees what rollouts see); the observation's images go where
    its IMAGE_MARKERs are, as the loop places them.
    """
    t = teacher_trajectory(sample)
    first = next((i for i, m in enumerate(sample.messages) if m["role"] == "assistant"), len(sample.messages))
    messages = list(sample.messages[:first])  # the prompt, also when the sample already holds a solution
    images = list(sample.images[:count_image_parts(messages)])
    if t.observations and render is None:
        render = _default_render()
    for k, turn in enumerate(t.turns):
        messages.append(assistant_turn(turn))
        if k < len(t.observations):
            obs = t.observations[k]
            text = render(obs.tool, obs.text, sample.meta["question"])
            if text.count(IMAGE_MARKER) != len(obs.images):
                raise ConfigError(f"observation of {sample.id}: {text.count(IMAGE_MARKER)} image markers for "
                                  f"{len(obs.images)} image(s)")
            messages.append({"role": "user", "content": marked_parts(text, len(obs.images))})
            images += obs.images
    return messages, images


def warmup_sft(seed: int = 0, render: Callable | None = None, **params) -> list[Sample]:
    """The warm-up SFT set: for every familiar entity, every fact in every template (direct answers: the
    world knowledge a base model would have), then one image-search trajectory per search-required train
    question. Val and test questions about unfamiliar entities never appear."""
    p = EntityParams.make(params)
    ents = entities(seed, p.n_entities, p.familiar_fraction)
    out = []
    for e in ents:
        if not e.familiar:
            continue
        for kind in p.kinds:
            for t, question in enumerate(TEMPLATES[kind]):
                rng = random.Random(f"{NAME}/warmup/{seed}/{e.index}/{kind}/{t}")
                s = _sample(f"{NAME}-warmup-{seed}-{e.index:04d}-{kind}-{t}", f"{NAME}-warmup-{seed}", e, kind,
                            rng, p, seed)
                s.meta["question"] = question
                s.messages = [user_turn(_format_prompt(question, p.instruction))]
                s.messages, s.images = teacher_messages(s, render)
                out.append(s)
    _, needs, _ = _pools(ents, p.kinds, "train", seed)
    for e, kind in sorted(needs, key=lambda q: (q[0].index, p.kinds.index(q[1]))):
        rng = random.Random(f"{NAME}/warmup/{seed}/{e.index}/{kind}")
        s = _sample(f"{NAME}-warmup-{seed}-{e.index:04d}-{kind}", f"{NAME}-warmup-{seed}", e, kind, rng, p, seed)
        s.messages, s.images = teacher_messages(s, render)
        out.append(s)
    return out
