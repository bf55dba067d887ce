"""Vision-R1's hard formatting result reward (HFRRF, METHODS §2.4) as configured: `rewards.combine=product`.

r = 1 only when the format is right AND the answer is right, else 0. The library has no separate HFRRF:
with the default weights (1, 1) the product of the binary `accuracy` and `format` rewards is exactly it.
Every completion is scored the way the GRPO loop scores it: `score(build_rewards(cfg.rewards), ...)`
with `cfg.rewards.combine`. Each expected value below is worked out by hand from METHODS §2.4; the
comments marked "differs" say where the library is stricter than a literal reading of METHODS' regex
`<think>.*</think>\\s*<answer>.*</answer>` and why.
"""

from __future__ import annotations

import pytest

from mmr1.config import load_config
from mmr1.data.formats import parse_record
from mmr1.data.schema import Sample, user_turn
from mmr1.rewards.functions import build_rewards, score

CFG = load_config(None, ["rewards.combine=product"])


def hfrrf(texts: list[str], sample: Sample, cfg=CFG) -> list[float]:
    rewards = build_rewards(cfg.rewards)
    return score(rewards, texts, [sample] * len(texts), cfg.rewards.combine, cfg.rewards.on_error).total.tolist()


def geo(answer, problem="<image>Find x.") -> Sample:
    """A Vision-R1-rl / geometry3k record, read by the library's own loader."""
    return parse_record({"problem": problem, "answer": answer, "images": ["g.png"]}, "geometry3k")[1]


def ok(answer: str, think: str = "Count the sides, then solve.") -> str:
    """Vision-R1's target shape: `<think> … </think><answer> Final Answer:X </answer>`."""
    return f"<think> {think} </think><answer> Final Answer:{answer} </answer>"


THREE = geo("3")
HALF = geo("0.5")
MC = Sample(id="mc", messages=[user_turn("What is the angle?\nChoices:\n(A) 30°\n(B) 45°\n(C) 60°")],
            answers=["45°"], choices=["30°", "45°", "60°"], answer_type="multi_choice")


def test_config_is_the_hfrrf():
    assert (CFG.rewards.combine, CFG.rewards.format_weight, CFG.rewards.accuracy_weight) == ("product", 1.0, 1.0)
    assert [r.name for r in build_rewards(CFG.rewards)] == ["accuracy", "format"]


@pytest.mark.parametrize("text,expected", [
    # right answer, right format
    ("<think>3 sides</think><answer>3</answer>", 1.0),
    (ok("3"), 1.0),  # "Final Answer:" is stripped before grading, as METHODS §2.4 says
    ("<think>a</think>\n\n<answer>\nFinal answer: 3\n</answer>\n", 1.0),  # \s* between the blocks; case of the prefix
    # right answer, broken format: 0 whatever the answer
    ("<think>so x is 3 <answer>3</answer>", 0.0),  # missing </think>
    ("<answer>3</answer>", 0.0),  # no thinking at all
    ("<think>x = 3</think><answer>3</answer> because x = 3", 0.0),  # text after </answer>
    ("<think>x = 3</think>So: <answer>3</answer>", 0.0),  # text between </think> and <answer>
    ("<think>x = 3</think><answer>3", 0.0),  # unclosed answer
    # differs: METHODS' `<think>.*</think>` accepts an empty think block; the library's format reward
    # wants at least one letter or digit in it (think_answer_format strict=True), so these earn 0
    ("<think></think><answer>3</answer>", 0.0),
    ("<think> ... </think><answer>3</answer>", 0.0),
    # differs: METHODS' greedy `<answer>.*</answer>` would fullmatch two answer blocks; the library
    # requires exactly one of each tag, so a second (or a repeated) answer block earns 0
    ("<think>r</think><answer>5</answer><answer>3</answer>", 0.0),
    ("<think>r</think><answer>3</answer><answer>3</answer>", 0.0),
    ("<think>r</think><answer>3</answer>\n<think>r</think><answer>3</answer>", 0.0),
    # right format, wrong answer
    (ok("4"), 0.0),
    (ok("30"), 0.0),
    ("<think>x = 3</think><answer>x = 4</answer>", 0.0),
    # empty answers: 0 (the format reward also refuses them)
    ("<think>r</think><answer></answer>", 0.0),
    ("<think>r</think><answer>   </answer>", 0.0),
    ("<think>r</think><answer> Final Answer: </answer>", 0.0),
    # hedging in a well-formed answer
    (ok("3 or 4"), 0.0),
    (ok("3, 4"), 0.0),
    (ok("2 and 3"), 0.0),
    # the answer only in the reasoning
    ("<think>The answer is 3.</think><answer>I am not sure</answer>", 0.0),
    ("<think>The answer is 3.</think>", 0.0),
    # an answer tag hidden inside <think>: two <answer> tags, and the graded one is "unsure"
    ("<think>maybe <answer>3</answer></think><answer>unsure</answer>", 0.0),
])
def test_hfrrf_integer_answer(text, expected):
    assert hfrrf([text], THREE) == [expected]


@pytest.mark.parametrize("text,sample,expected", [
    # LaTeX against a decimal gold and the reverse; \boxed and $…$ wrappers
    (ok(r"\frac{1}{2}"), HALF, 1.0),
    (ok(r"$\dfrac{1}{2}$"), HALF, 1.0),
    (ok("1/2"), HALF, 1.0),
    (ok(r"\boxed{0.5}"), HALF, 1.0),
    (ok(r"\frac{1}{3}"), HALF, 0.0),
    (ok("0.5"), geo(r"\frac{1}{2}"), 1.0),
    (ok(r"\sqrt{12}"), geo(r"2\sqrt{3}"), 1.0),  # math-verify: equal values in different forms
    (ok(r"2\sqrt{2}"), geo(r"2\sqrt{3}"), 0.0),
    # units on either side
    (ok("5 cm"), geo("5"), 1.0),
    (ok("5"), geo("5 cm"), 1.0),
    (ok("5 cm^2"), geo("5"), 1.0),
    (ok("6 cm"), geo("5"), 0.0),
    (ok("140°"), geo("140"), 1.0),
    # a geometry3k-style letter gold with no choices listed: exact match after SQuAD normalisation
    (ok("B"), geo("B", "<image>Find x. Choices: A: 2 B: 3 C: 4 D: 5"), 1.0),
    (ok("(B)"), geo("B", "<image>Find x. Choices: A: 2 B: 3 C: 4 D: 5"), 1.0),
    (ok("C"), geo("B", "<image>Find x. Choices: A: 2 B: 3 C: 4 D: 5"), 0.0),
])
def test_hfrrf_math_forms_and_units(text, sample, expected):
    assert hfrrf([text], sample) == [expected]


@pytest.mark.parametrize("answer,expected", [
    ("B", 1.0), ("(B)", 1.0), ("B.", 1.0), ("B. 45°", 1.0), ("45°", 1.0), ("The answer is B", 1.0),
    ("A", 0.0), ("C", 0.0), ("30°", 0.0),
    ("B. 60°", 0.0),  # the letter and the option text disagree
    ("A or B or C", 0.0), ("A, B", 0.0), ("B or C", 0.0),  # hedging over options
    ("D", 0.0),  # no option D
])
def test_hfrrf_multiple_choice(answer, expected):
    assert hfrrf([ok(answer)], MC) == [expected]


def test_hfrrf_mc_hedge_with_broken_format_is_zero_twice_over():
    assert hfrrf(["<answer>A or B or C</answer>", "<think>r</think><answer>A or B or C</answer>"], MC) == [0.0, 0.0]


def test_product_is_what_makes_it_hard():
    """The same completions under the default `combine=sum`: partial credit, which HFRRF has none of."""
    texts = [ok("3"), "<think>r</think><answer>5</answer><answer>3</answer>", ok("4"), "no tags"]
    assert hfrrf(texts, THREE) == [1.0, 0.0, 0.0, 0.0]
    summed = load_config(None, [])
    assert summed.rewards.combine == "sum"
    assert hfrrf(texts, THREE, summed) == [2.0, 1.0, 1.0, 0.0]
    # the per-function rewards the GRPO loop logs, for the product config
    sc = score(build_rewards(CFG.rewards), texts, [THREE] * 4, CFG.rewards.combine, CFG.rewards.on_error)
    assert sc.per_fn["accuracy"].tolist() == [1.0, 1.0, 0.0, 0.0]
    assert sc.per_fn["format"].tolist() == [1.0, 0.0, 1.0, 0.0]
    assert sc.errors == {}
