"""The `entities` world (MMSearch-R1's FVQA analogue): determinism, disjoint splits, answers the question text
cannot give, the familiar fraction, the search-balanced train split, distinct emblems, a complete corpus,
and teacher trajectories the MMSearch-R1 reward accepts."""

import re
from collections import Counter

import pytest

from mmr1.data.schema import count_image_parts
from mmr1.data.worlds import majority_baseline, make_world, world_names
from mmr1.data.worlds.entities import (VARIANTS, corpus, entities, format_results, question_split, render_emblem,
                                       teacher_messages, teacher_trajectory, warmup_sft)
from mmr1.errors import ConfigError
from mmr1.rewards.search import SearchReward, is_answer_turn, is_image_search_turn
from mmr1.tools import IMAGE_MARKER

N = 40  # entities in most tests: 200 questions


def render(tool, text, question):
    """A stand-in for the agent loop's ObservationFormat (keeps torch out of most tests)."""
    return f"Searched results: <information>{text}</information>\nOriginal user's question: {question}\n"


def _q(s):
    return (s.meta["entity_index"], s.meta["kind"])


def test_registered():
    assert "entities" in world_names()
    s = make_world("entities", n=3, seed=0, n_entities=N)
    assert [x.id for x in s] == ["entities-train-0-000000", "entities-train-0-000001", "entities-train-0-000002"]
    assert all(x.meta["world"] == "entities" and x.answer_type == "text" for x in s)
    with pytest.raises(ConfigError, match="unknown entities world parameter"):
        make_world("entities", n=1, grid=4)
    with pytest.raises(ConfigError):
        make_world("entities", split="dev", n=1)
    with pytest.raises(ConfigError, match="search_fraction"):
        make_world("entities", n=1, n_entities=N, familiar_fraction=1.0)  # no search-required question to balance
    bare = make_world("entities", n=1, n_entities=N, instruction=None)[0]  # as build_samples passes it
    assert bare.question_text() == bare.meta["question"]


def test_deterministic():
    a = make_world("entities", "train", n=60, seed=3, n_entities=N)
    b = make_world("entities", "train", n=60, seed=3, n_entities=N)
    assert [(s.id, s.answers, s.messages, s.meta) for s in a] == [(s.id, s.answers, s.messages, s.meta) for s in b]
    assert [s.images[0].tobytes() for s in a] == [s.images[0].tobytes() for s in b]
    prefix = make_world("entities", "train", n=10, seed=3, n_entities=N)  # sample i does not depend on n
    assert [(s.answers, s.images[0].tobytes()) for s in prefix] == [(s.answers, s.images[0].tobytes()) for s in a[:10]]
    # entity i's facts and emblem depend on (seed, i) only: a larger world extends a smaller one (the familiar
    # set is drawn per size); another seed is another world
    facts = lambda e: (e.id, e.name, e.founded, e.city, e.founder, e.mascot, e.emblem)  # noqa: E731
    assert [facts(e) for e in entities(3, 80)[:N]] == [facts(e) for e in entities(3, N)]
    assert [e.name for e in entities(4, N)] != [e.name for e in entities(3, N)]
    assert [(e.name, e.founded, e.city) for e in entities(3, N, 0.25)] == [(e.name, e.founded, e.city)
                                                                          for e in entities(3, N, 0.5)]


def test_splits_disjoint():
    world = {split: make_world("entities", split, n=400, seed=0, n_entities=N) for split in ("train", "val", "test")}
    asked = {split: {_q(s) for s in ss} for split, ss in world.items()}
    assert not asked["train"] & asked["test"] and not asked["train"] & asked["val"] and not asked["val"] & asked["test"]
    everything = {(e.index, k) for e in entities(0, N) for k in VARIANTS}
    assert asked["train"] | asked["val"] | asked["test"] == everything  # n=400 covers every pool
    for split, ss in world.items():
        assert all(question_split(*_q(s)) == split for s in ss)
    # the first len(pool) test samples are distinct questions
    test_pool = sum(question_split(*q) == "test" for q in everything)
    assert len({_q(s) for s in world["test"][:test_pool]}) == test_pool


def test_answers_need_the_image():
    train = make_world("entities", "train", n=600, seed=0, n_entities=N)
    test = make_world("entities", "test", n=200, seed=0, n_entities=N)
    ents = entities(0, N)
    for s in train[:200]:
        e = ents[s.meta["entity_index"]]
        assert s.answers == e.answers(s.category) and s.category in VARIANTS
        words = set(re.findall(r"\w+", s.question_text().lower()))
        assert all(not set(re.findall(r"\w+", a.lower())) <= words for a in s.answers)
        assert e.name not in s.question_text() and e.short_name not in s.question_text()
    # the same question text has many answers: guessing from the text (trained on train) fails
    assert len({s.meta["question"] for s in train}) == 2 * len(VARIANTS)
    assert majority_baseline(test, reference=train, per_question=True) <= 0.1
    by_question = Counter((s.meta["question"], s.answer) for s in train)
    assert max(by_question.values()) / len(train) < 0.05


def test_familiar_fraction():
    for f in (0.5, 0.3, 0.0, 1.0):
        ents = entities(0, N, f)
        assert sum(e.familiar for e in ents) == round(f * N)
    samples = make_world("entities", "test", n=300, seed=0, n_entities=N)
    ents = entities(0, N)
    for s in samples:
        assert s.meta["familiar"] == ents[s.meta["entity_index"]].familiar
        assert s.meta["needs_search"] == (not s.meta["familiar"])
        assert s.meta["search_type"] == ("search_free" if s.meta["familiar"] else "image_search")


@pytest.mark.parametrize("f", [0.5, 0.3])
def test_search_balanced_train_split(f):
    train = make_world("entities", "train", n=200, seed=0, n_entities=N, familiar_fraction=0.7, search_fraction=f)
    for k in (10, 57, 200):  # every prefix is balanced
        assert abs(sum(s.meta["needs_search"] for s in train[:k]) - f * k) < 1
    # val/test keep the natural mix: about familiar_fraction of the questions are search-free
    test = make_world("entities", "test", n=1000, seed=0, n_entities=N, familiar_fraction=0.7, search_fraction=f)
    pool = {(e.index, k) for e in entities(0, N, 0.7) for k in VARIANTS if question_split(e.index, k) == "test"}
    assert {_q(s) for s in test} == pool
    natural = make_world("entities", "train", n=300, seed=0, n_entities=N, search_fraction=None)
    assert 0.3 < sum(s.meta["needs_search"] for s in natural) / 300 < 0.7
    # eval_search_fraction balances val and test the same way, with the test split's questions only
    few = make_world("entities", "test", n=40, seed=0, n_entities=N, familiar_fraction=0.125, eval_search_fraction=0.5)
    assert sum(s.meta["needs_search"] for s in few) == 20
    assert all(question_split(*_q(s)) == "test" for s in few)


def test_images_differ_between_entities():
    ents = entities(0, 200)
    canon = [render_emblem(e.emblem, 112).tobytes() for e in ents]
    assert len(set(canon)) == 200
    assert len({e.emblem for e in ents}) == 200
    samples = make_world("entities", "train", n=300, seed=0, n_entities=N)
    seen: dict = {}
    for s in samples:
        seen.setdefault(s.images[0].tobytes(), set()).add(s.meta["entity_index"])
    assert all(len(v) == 1 for v in seen.values())  # one picture never shows two entities
    # a question image is its entity's emblem shifted a little: close to its own corpus image, far from others'
    s = samples[0]
    own = render_emblem(ents[s.meta["entity_index"]].emblem, 112)
    dx, dy = s.meta["offset"]
    assert s.images[0].crop((max(dx, 0), max(dy, 0), 112 + min(dx, 0), 112 + min(dy, 0))).tobytes() == \
        own.crop((max(-dx, 0), max(-dy, 0), 112 - max(dx, 0), 112 - max(dy, 0))).tobytes()


def test_corpus_records_complete():
    recs = corpus(seed=0, n_entities=N)
    ents = entities(0, N)
    assert len(recs) == N and len({r["id"] for r in recs}) == N and len({r["title"] for r in recs}) == N
    for r, e in zip(recs, ents):
        assert set(r) == {"id", "image", "title", "text"} and r["id"] == e.id and r["title"] == e.name
        assert r["image"].size == (112, 112) and r["image"].tobytes() == render_emblem(e.emblem).tobytes()
        for kind in VARIANTS:
            assert e.answers(kind)[0] in r["title"] + " " + r["text"]
    text = format_results(recs[:2])
    assert text.count(IMAGE_MARKER) == 2 and recs[1]["text"] in text


def test_teacher_trajectories_earn_the_full_reward():
    reward = SearchReward()
    samples = make_world("entities", "train", n=40, seed=0, n_entities=N)
    for s in samples:
        t = teacher_trajectory(s)
        if s.meta["familiar"]:
            assert len(t.turns) == 1 and not t.observations and is_answer_turn(t.turns[0])
            assert reward(t.turns, s) == 1.0
        else:
            assert len(t.turns) == 2 and is_image_search_turn(t.turns[0]) and is_answer_turn(t.turns[1])
            obs = t.observations[0]
            assert obs.tool == "image_search" and obs.query == "<img>" and len(obs.images) == 1
            assert s.answer in obs.text and obs.text.count(IMAGE_MARKER) == 1
            assert reward(t.turns, s) == pytest.approx(0.91)
            assert reward([t.turns[1]], s) == 1.0  # answering without the search would have scored more


def test_with_solution_messages():
    samples = make_world("entities", "train", n=6, seed=0, n_entities=N, with_solution=True, render=render)
    assert {s.meta["familiar"] for s in samples} == {True, False}
    for s in samples:
        assert count_image_parts(s.messages) == len(s.images)
        roles = [m["role"] for m in s.messages]
        assert roles == (["user", "assistant"] if s.meta["familiar"] else ["user", "assistant", "user", "assistant"])
        assert s.target().endswith(f"<answer>{s.answer}</answer>")
    # the default renders observations as the agent loop does
    from mmr1.rollout.agent import ObservationFormat

    unfamiliar = next(s for s in samples if not s.meta["familiar"])
    messages, images = teacher_messages(unfamiliar)
    obs = teacher_trajectory(unfamiliar).observations[0]
    expected = ObservationFormat().success("image_search", obs.text, unfamiliar.meta["question"])
    texts = [p["text"] for p in messages[2]["content"] if p["type"] == "text"]
    assert "".join(texts) == expected.replace(IMAGE_MARKER, "") and len(images) == 2


def test_warmup_sft():
    sft = warmup_sft(seed=0, render=render, n_entities=N)
    ents = entities(0, N)
    direct = [s for s in sft if s.meta["familiar"]]
    search = [s for s in sft if not s.meta["familiar"]]
    familiar_questions = {(e.index, k) for e in ents if e.familiar for k in VARIANTS}
    assert {_q(s) for s in direct} == familiar_questions  # every fact of every familiar entity, in every split
    assert len(direct) == 2 * len(familiar_questions)  # both templates
    assert all(question_split(*_q(s)) == "train" for s in search)  # only train questions need a search trajectory
    assert {_q(s) for s in search} == {(e.index, k) for e in ents if not e.familiar for k in VARIANTS
                                       if question_split(e.index, k) == "train"}
    assert all(len(s.messages) == 4 and count_image_parts(s.messages) == len(s.images) == 2 for s in search)
    test = make_world("entities", "test", n=100, seed=0, n_entities=N)
    assert not {_q(s) for s in test if not s.meta["familiar"]} & {_q(s) for s in sft}


def test_jsonl_round_trip(tmp_path):
    from mmr1.data.loaders import load_samples, save_jsonl

    samples = make_world("entities", "train", n=4, seed=0, n_entities=N, with_solution=True, render=render)
    back = load_samples(save_jsonl(samples, tmp_path / "e.jsonl")).samples
    assert [(s.messages, s.answers, s.category, s.meta) for s in back] == \
        [(s.messages, s.answers, s.category, s.meta) for s in samples]
    assert [[im.tobytes() for im in s.load_images()] for s in back] == \
        [[im.tobytes() for im in s.load_images()] for s in samples]
    assert [teacher_trajectory(s).turns for s in back] == [teacher_trajectory(s).turns for s in samples]
