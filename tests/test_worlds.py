"""The synthetic worlds: deterministic, split-disjoint, answers that need the image, teacher that agrees."""

import re
from collections import Counter

import pytest

from mmr1.data.worlds import (COLOURS, WORLDS, describe, majority_baseline, make_world, teacher_solution,
                              world_names)
from mmr1.data.worlds.scenes import BACKGROUND, split_of
from mmr1.errors import ConfigError

SOLUTION = re.compile(r"^<think>.*</think><answer>.*</answer>$", re.DOTALL)


def _layout(s):
    return tuple(map(tuple, s.meta["objects"]))


def _recompute(s):
    """The answer from meta['objects'] and the question's query, independently of the world code."""
    objs, q = s.meta["objects"], s.meta["query"]
    if "colour" in q:
        return sum(o[2] == q["colour"] for o in objs)
    if "shape" in q:
        return sum(o[3] == q["shape"] for o in objs)
    a, b = (sum(o[2] == c for o in objs) for c in q["colours"])
    return {"weighted_sum": lambda: a * q["weights"][0] + b * q["weights"][1],
            "difference": lambda: a - b, "total": lambda: a + b}[s.category]()


def test_registry():
    assert world_names() == ["counting", "entities", "reasoning"]
    assert sorted(WORLDS) == ["counting", "reasoning"]  # scene worlds; entities has its own builder


@pytest.mark.parametrize("name", ["counting", "reasoning"])
def test_deterministic(name):
    a, b = make_world(name, n=50, seed=3), make_world(name, n=50, seed=3)
    assert [s.id for s in a] == [s.id for s in b]
    assert [s.answers for s in a] == [s.answers for s in b]
    assert [s.messages for s in a] == [s.messages for s in b]
    assert [s.images[0].tobytes() for s in a] == [s.images[0].tobytes() for s in b]
    assert a[0].id == f"{name}-train-3-000000"
    prefix = make_world(name, n=10, seed=3)  # sample i does not depend on n
    assert [s.images[0].tobytes() for s in prefix] == [s.images[0].tobytes() for s in a[:10]]
    c = make_world(name, n=50, seed=4)
    assert [s.meta["objects"] for s in a] != [s.meta["objects"] for s in c]
    assert sum(x.images[0].tobytes() != y.images[0].tobytes() for x, y in zip(a, c)) > 45


@pytest.mark.parametrize("name", ["counting", "reasoning"])
def test_splits_disjoint(name):
    train = make_world(name, "train", n=1000, seed=0)
    test = make_world(name, "test", n=200, seed=0)
    other_seed = make_world(name, "test", n=200, seed=1)
    train_layouts = {_layout(s) for s in train}
    assert not train_layouts & {_layout(s) for s in test + other_seed}
    assert all(split_of(s.meta["objects"]) == "train" for s in train)
    assert all(s.id.startswith(f"{name}-test-") for s in test)


@pytest.mark.parametrize("name", ["counting", "reasoning"])
def test_answers_and_teacher(name):
    samples = make_world(name, n=300, seed=0, with_solution=True)
    cats = Counter(s.category for s in samples)
    assert set(cats) == set(WORLDS[name].variants)
    for s in samples:
        assert s.answer_type == "integer" and s.meta["world"] == name
        assert s.answer == str(_recompute(s))
        assert int(s.answer) >= 0
        assert s.messages[-1]["role"] == "assistant"
        for style in ("plain", "reflective"):
            sol = teacher_solution(s, style)
            assert SOLUTION.match(sol)
            assert re.search(r"<answer>(.*)</answer>", sol).group(1) == s.answer
        assert s.target() == teacher_solution(s)
        assert "Wait" in teacher_solution(s, "reflective") and "Wait" not in s.target()
        assert s.question_text().endswith("in <answer> </answer> tags.")


def test_teacher_tallies_every_colour_and_shape():
    from mmr1.data.worlds import counting, reasoning

    objects = [[0, 0, "red", "circle"], [0, 1, "red", "square"], [1, 1, "blue", "circle"]]
    meta = {"objects": objects, "colours": ["red", "green", "blue"], "shapes": ["circle", "square", "triangle"]}
    assert counting.solve({**meta, "query": {"colour": "red"}}, "plain") == (
        "Counts by colour: red 2, green 0, blue 1. So red 2.", 2)
    assert counting.solve({**meta, "query": {"colour": "green"}}, "reflective") == (
        "Counts by colour: red 2, green 0, blue 1. So green 0. Wait, let me check again: green 0. Yes, 0.", 0)
    assert counting.solve({**meta, "query": {"shape": "circle"}}, "plain") == (
        "Counts by shape: circles 2, squares 1, triangles 0. So circles 2.", 2)
    think, ans = reasoning.solve({**meta, "query": {"colours": ["red", "blue"], "op": "weighted_sum",
                                                     "weights": [3, 4]}}, "plain")
    assert (think, ans) == ("Counts by colour: red 2, green 0, blue 1. So red 2, blue 1. "
                            "2 * 3 = 6. 1 * 4 = 4. 6 + 4 = 10.", 10)


def test_imperfect_teacher_overlooks_objects_and_keeps_the_gold_answer():
    clean = make_world("counting", n=600, seed=0, with_solution=True)
    noisy = make_world("counting", n=600, seed=0, with_solution=True, teacher_miss=0.2)
    assert [s.answer for s in noisy] == [s.answer for s in clean]  # the RL reward checks the gold answer
    assert noisy[0].target() == make_world("counting", n=1, seed=0, with_solution=True, teacher_miss=0.2)[0].target()
    said = [int(re.search(r"<answer>(\d+)</answer>", s.target()).group(1)) for s in noisy]
    assert all(SOLUTION.match(s.target()) for s in noisy)
    assert all(0 <= int(s.answer) - n for s, n in zip(noisy, said))  # it only misses, never invents
    right = {k: [n == int(s.answer) for s, n in zip(noisy, said) if int(s.answer) == k] for k in range(6)}
    assert all(right[0])  # nothing to overlook
    rate = {k: sum(v) / len(v) for k, v in right.items()}
    # each object is kept with p = 0.8, so a count of k is reported right with ~0.8**k
    for k in (1, 3, 5):
        assert abs(rate[k] - 0.8 ** k) < 0.12, (k, rate[k])
    assert rate[5] < 0.5  # the teacher's most common tally of a crowded colour is wrong: RL has something to fix
    with pytest.raises(ConfigError, match="teacher_miss"):
        make_world("counting", n=1, teacher_miss=1.0)
    with pytest.raises(ConfigError, match="teacher_miss"):
        make_world("entities", n=1, teacher_miss=0.1)


def test_counting_not_dominated():
    samples = make_world("counting", n=1000, seed=0)
    assert majority_baseline(samples) <= 0.35
    test = make_world("counting", "test", n=500, seed=0)
    assert majority_baseline(test, reference=samples, per_question=True) <= 0.35
    assert sum(describe(samples).values()) == 1000


def test_reasoning_not_dominated():
    samples = make_world("reasoning", n=1000, seed=0)
    assert majority_baseline(samples) <= 0.3
    assert all(s.answer.isdigit() for s in samples)


@pytest.mark.parametrize("object_size", [(0.28, 0.38), (0.5, 0.5)])
def test_images(object_size):
    for s in make_world("counting", n=20, seed=0, object_size=object_size):
        img = s.images[0]
        assert img.mode == "RGB" and img.size == (112, 112)
        occupied = {(o[0], o[1]): COLOURS[o[2]] for o in s.meta["objects"]}
        for r in range(4):
            for c in range(4):
                cell = img.crop((c * 28, r * 28, c * 28 + 28, r * 28 + 28))
                pixels = {rgb for _, rgb in cell.getcolors()}
                if (r, c) in occupied:  # the object's colour is drawn and stays inside its cell
                    assert occupied[(r, c)] in pixels
                else:
                    assert pixels == {BACKGROUND}


def test_params():
    s = make_world("counting", n=5, image_size=224, grid=4, colours=["red", "blue"], shapes=["circle", "cross"],
                   instruction=None, variants=["count_shape"])[0]
    assert s.images[0].size == (224, 224) and s.category == "count_shape"
    assert s.question_text().startswith("How many") and s.question_text().endswith("image?")
    with pytest.raises(ConfigError):
        make_world("counting", n=1, colour=["red"])  # typo'd key
    with pytest.raises(ConfigError):
        make_world("counting", n=1, colours={"red": (200, 0, 0), "red2": (210, 10, 10)})  # too close
    with pytest.raises(ConfigError, match="object_size"):
        make_world("counting", n=1, object_size=(0.3, 0.6))  # would spill into the next cell
    with pytest.raises(ConfigError):
        make_world("nope", n=1)
    with pytest.raises(ConfigError):
        make_world("counting", split="dev", n=1)
