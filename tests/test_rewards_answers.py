"""Answer extraction, checkers and format checks: hand cases, reward-hacking attempts, and
conformance with the verdicts R1-V's own evaluation recorded on real Qwen2-VL outputs."""

from __future__ import annotations

import re
import threading
from pathlib import Path

import pytest

from mmr1.data.schema import Sample
from mmr1.rewards import (
    check_answer,
    clean_math,
    exact_match,
    extract_answer,
    extract_choice,
    math_equal,
    normalize_text,
    number_equal,
    resolve_kind,
    score_completion,
    substring_match,
    tag_format,
    think_answer_format,
    to_number,
)

REPO = Path(__file__).resolve().parents[1]
REAL = next((p for p in (REPO / "shared" / "real-data", REPO.parent / "shared" / "real-data") if p.is_dir()), None)


# ---------------------------------------------------------------- format

@pytest.mark.parametrize("text,strict,expected", [
    ("<think>2+2=4</think><answer>4</answer>", True, True),
    ("  <think>\ncount them\n</think>\n\n<answer> 4 </answer>\n", True, True),
    ("<think>思考</think><answer>4</answer>", True, True),
    ("<think></think><answer>4</answer>", False, True),
    ("<think></think><answer>4</answer>", True, False),     # empty thinking
    ("<think> ... !? </think><answer>4</answer>", True, False),  # punctuation only
    ("<think>x</think><answer></answer>", True, False),      # empty answer
    ("<think>x</think><answer>  </answer>", True, False),
    ("<think>x</think><answer> Final Answer: </answer>", True, False),
    ("<think>x</think><answer> Final Answer: 4 </answer>", True, True),
    ("<answer>4</answer>", True, False),                      # no thinking
    ("<think>x</think>", True, False),                        # no answer
    ("<think>x</think><answer>4</answer> trailing words", True, False),
    ("preamble <think>x</think><answer>4</answer>", True, False),
    ("<think>x</think><answer>3</answer><answer>4</answer>", True, False),  # two answers
    ("<think>x</think><think>y</think><answer>4</answer>", True, False),    # two thinks
    ("<think>x <answer>3</answer></think><answer>4</answer>", True, False),  # answer hidden in think
    ("<think>x</think><answer>4", True, False),                              # unclosed
])
def test_think_answer_format(text, strict, expected):
    assert think_answer_format(text, strict=strict) is expected


def test_tag_format_mmsearch_turn():
    pat = r"<reason>.*</reason>.*<answer>.*</answer>"
    counts = {"<reason>": 1, "</reason>": 1, "<answer>": 1, "</answer>": 1, "<search>": 0}
    assert tag_format("<reason>r</reason> <answer>Spain</answer>", pat, counts) is True
    assert tag_format("<reason>r</reason><reason>s</reason><answer>Spain</answer>", pat, counts) is False
    assert tag_format("<reason>r</reason><search><img></search><answer>a</answer>", pat, counts) is False
    assert tag_format("x<reason>r</reason><answer>a</answer>", pat, counts) is False
    assert tag_format(None, pat, counts) is False
    assert tag_format("<search><img></search>", re.compile(r"<search><img></search>"), {"<search>": 1}) is True


# ---------------------------------------------------------------- extraction

@pytest.mark.parametrize("text,expected", [
    ("<think>t</think><answer>42</answer>", "42"),
    ("<answer>\n    4\n    </answer>", "4"),
    ("<think>t</think><answer> Final Answer: 140° </answer>", "140°"),      # Vision-R1 form
    ("<answer>final answer：12</answer>", "12"),
    ("<answer>1</answer> then <answer>2</answer>", "2"),                   # the last one counts
    ("<answer>1<answer>2</answer>", "2"),
    ("<think>t</think><answer></answer>", ""),
    ("<think>the answer is 40</think>", None),                              # no answer tag
    ("<think>t <answer>40</answer></think> I am done", None),               # only inside think
    ("<think>t <answer>40</answer> and the output was cut", None),          # unterminated think
    ("<think>t <answer>3</answer></think><answer>4</answer>", "4"),
    ("<answer>4", None),
    ("4", None),
    ("", None),
    (None, None),
])
def test_extract_answer(text, expected):
    assert extract_answer(text) == expected


@pytest.mark.parametrize("text,choices,expected", [
    ("B", None, "B"),
    ("b", ["x", "y"], "B"),
    ("(B)", None, "B"),
    ("B.", None, "B"),
    ("$\\boxed{C}$", None, "C"),
    ("**D**", None, "D"),
    ("B) 12", ["10", "12"], "B"),
    ("(B) 12", ["10", "12"], "B"),
    ("B. 12.0", ["10", "12"], "B"),
    ("B. 10", ["10", "12"], None),            # the label contradicts the text
    ("B: something else", ["10", "12"], "B"),
    ("The answer is B", None, "B"),
    ("The answer is (C).", ["p", "q", "r"], "C"),
    ("I think the answer is B", None, "B"),
    ("A triangle has three sides, so C", ["a", "b", "c"], "C"),
    ("12", ["10", "12"], "B"),                 # the choice text itself
    ("the Tuileries Palace", ["Louvre", "Tuileries Palace"], "B"),
    ("A or B", None, None),
    ("A, B", ["x", "y", "z"], None),
    ("A and C", ["x", "y", "z"], None),
    ("B or C, the answer is B", ["x", "y", "z"], None),
    ("E", ["x", "y", "z"], None),              # out of range
    ("maybe", ["x", "y"], None),
    ("", ["x"], None),
    (None, ["x"], None),
])
def test_extract_choice(text, choices, expected):
    assert extract_choice(text, choices) == expected


# ---------------------------------------------------------------- text checkers

def test_normalize_text():
    assert normalize_text("  The  Kingdom of SPAIN! ") == "kingdom of spain"
    assert normalize_text("An apple, a day.") == "apple day"
    assert normalize_text("Sakya-muni") == "sakyamuni"
    assert normalize_text("theory") == "theory"  # articles only as whole words


def test_exact_and_substring_match():
    golds = ["Spain", "Kingdom of Spain", "ES"]
    assert exact_match("the kingdom of Spain.", golds) is True
    assert exact_match("spain", "Spain") is True
    assert exact_match("Spain and Portugal", golds) is False
    assert exact_match("", golds) is False and exact_match(None, golds) is False
    assert exact_match("...", ["!"]) is False  # both normalise to "": never a match
    assert substring_match("It is in Spain, I think", golds) is True
    assert substring_match("Portugal", golds) is False
    assert substring_match("anything", ["", "the"]) is False  # empty golds never match
    assert substring_match(None, golds) is False


# ---------------------------------------------------------------- numbers and maths

@pytest.mark.parametrize("s,expected", [
    ("40", 40.0), ("40.0", 40.0), ("-3.5", -3.5), (".5", 0.5), ("1,000", 1000.0), ("1/2", 0.5),
    ("\\frac{1}{2}", 0.5), ("-\\frac{3}{4}", -0.75), ("140°", 140.0), ("40^\\circ", 40.0), ("5 cm", 5.0),
    ("3米", 3.0), ("12海里", 12.0), ("50%", 50.0), ("$\\boxed{7}$", 7.0), ("x = 40", 40.0), ("1:4", 0.25),
    ("2e3", 2000.0), (4, 4.0), ("2√{3}", None), ("40 or 50", None), ("1,2", None), ("abc", None), ("1/0", None),
])
def test_to_number(s, expected):
    assert to_number(s) == expected


def test_clean_math():
    assert clean_math("$\\boxed{140^{\\circ}}$") == "140"
    assert clean_math("\\text{5 cm}") == "5"
    assert clean_math("9πcm^{2}") == "9π"
    assert clean_math("(√{3}+1)小时") == "(√{3}+1)"
    assert clean_math("AB = 1.8 * 9 / 1.5 = 10.8.") == "10.8"


@pytest.mark.parametrize("pred,gold,expected", [
    ("140", "140°", True), ("140°", "140", True), ("40.0", "40", True), ("1/2", "0.5", True),
    ("0.5", "\\frac{1}{2}", True), ("$3$", "3", True), ("\\boxed{5}", "5", True), ("4", "4cm", True),
    ("2√3", "2√{3}", True), ("2sqrt(3)", "2\\sqrt{3}", True), ("sqrt(3)/2", "\\frac{√{3}}{2}", True),
    ("9pi", "9πcm^{2}", True), ("25π/4", "\\frac{25}{4}π", True), ("10√{3}m", "10√{3}米", True),
    ("x+1", "1+x", True), ("3\\sqrt{3}", "3√{3}", True),
    ("10.0", "10√{2}", False),            # a coefficient is not the value
    ("17.32", "10√{3}", False),           # decimal approximations of irrationals do not count
    ("2.0^2", "2", False), ("sqrt(1/3)", "\\frac{1}{3}", False), ("41", "40", False),
    ("40 or 50", "50", False), ("40, 50", "50", False), ("50; 40", "50", False),  # hedges
    ("4.0 + PE + PF", "4", False), ("", "4", False), (None, "4", False), ("4", None, False),
])
def test_math_equal(pred, gold, expected):
    assert math_equal(pred, gold) is expected


def test_math_equal_keeps_tuple_golds():
    assert math_equal("(1, 2)", "(1,2)") is True
    assert math_equal("(1, 2) or (2, 1)", "(1,2)") is False


def test_math_equal_rejects_inputs_that_would_hang_sympy():
    assert math_equal("9^9^9^9", "1") is False
    assert math_equal("2^{99999999}", "1") is False
    assert math_equal("(" * 300 + "1", "1") is False


def test_math_equal_is_thread_safe():
    """math-verify's signal timeout raises off the main thread; we must still answer correctly there."""
    results = {}

    def work(i, pred, gold):
        results[i] = math_equal(pred, gold)

    cases = [("2\\sqrt{12}", "4\\sqrt{3}"), ("\\frac{9\\pi}{4}", "2.25π"), ("x+2", "2+x"), ("7", "8")]
    threads = [threading.Thread(target=work, args=(i, *c)) for i, c in enumerate(cases)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert results == {0: True, 1: True, 2: True, 3: False}


@pytest.mark.parametrize("pred,gold,precision,expected", [
    ("8", 8, None, True), ("8.0", "8", None, True), ("C. 8", "8", None, False), ("8 objects", "8", None, True),
    ("There are 8", "8", None, True), ("\\sqrt{64}", "8", None, True), ("1,000", "1000", None, True),
    ("the count is -8", "8", None, False), ("-8", "-8", None, True),
    ("8 or 9", "8", None, False), ("8, 9", "8", None, False), ("8 9", "8", None, False),
    ("0{3}{5}", "8", None, False),        # garbage math-verify would read as 0+3+5
    ("A. 8 B. 9", "8", None, False), ("eight", "8", None, False), ("9", "8", None, False),
    ("1.449", "1.45", 2, True), ("1.4", "1.45", 2, False), ("1.46", "1.45", None, False),
    ("8", "eight", None, False),          # the gold is not a number
])
def test_number_equal(pred, gold, precision, expected):
    assert number_equal(pred, gold, precision) is expected


# ---------------------------------------------------------------- dispatch

def test_resolve_kind():
    assert resolve_kind(["B"], ["x", "y"], None) == "choice"
    assert resolve_kind(["B"], None, "multi_choice") == "choice"
    assert resolve_kind(["3"], None, None) == "number"
    assert resolve_kind(["140°"], None, None) == "number"
    assert resolve_kind(["1.5"], None, "float") == "number"
    assert resolve_kind(["2√{3}"], None, None) == "math"
    assert resolve_kind(["\\frac{\\sqrt{3}}{2}"], None, None) == "math"
    assert resolve_kind(["Spain", "ES"], None, None) == "exact"
    assert resolve_kind(["Windows 95"], None, None) == "exact"


def test_check_answer_with_samples_and_dicts():
    mc = Sample(id="1", messages=[], answers=["12"], choices=["10", "12", "14"], answer_type="multi_choice")
    assert check_answer("B", mc) is True
    assert check_answer("(B) 12", mc) is True
    assert check_answer("12", mc) is True
    assert check_answer("A", mc) is False
    assert check_answer("A or B", mc) is False
    assert check_answer("B, C", mc) is False
    flt = Sample(id="2", messages=[], answers=["1.45"], answer_type="float", precision=2)
    assert check_answer("1.449", flt) is True and check_answer("1.4", flt) is False
    assert check_answer("1.449", {"answer": "1.45", "precision": 2}) is True  # precision without answer_type
    integer = Sample(id="3", messages=[], answers=["3"], answer_type="integer", precision=None)
    assert check_answer("3.0", integer) is True and check_answer("3.7", integer) is False
    mmsearch = {"ground_truth": "Spain", "candidate_answers": '["Kingdom of Spain", "ES"]'}
    assert check_answer("the Kingdom of Spain", mmsearch) is True
    assert check_answer("es", mmsearch) is True
    assert check_answer("It is Spain", mmsearch) is False
    assert check_answer("It is Spain", mmsearch, kind="substring") is True
    assert check_answer("3", {"solution": "<answer> 3 </answer>"}) is True  # R1-V training rows
    assert check_answer("40", "140°") is False and check_answer("140", "140°") is True
    assert check_answer("2√3", ["2\\sqrt{3}"]) is True
    assert check_answer("B", {"answer": "B", "choices": ["x", "y"]}) is True
    assert check_answer("4", Sample(id="4", messages=[], answers=[])) is False  # no gold: nothing scores
    with pytest.raises(ValueError, match="unknown checker kind"):
        check_answer("4", "4", kind="fuzzy")


@pytest.mark.parametrize("kind", ["auto", "math", "exact", "substring", "choice", "number"])
def test_empty_or_missing_prediction_never_scores(kind):
    for pred in (None, "", "   "):
        assert check_answer(pred, {"answers": [""], "choices": ["a"]}, kind) is False
        assert check_answer(pred, "4", kind) is False


# ---------------------------------------------------------------- score_completion and reward hacking

def hfrrf(completion: str, sample) -> float:
    """Vision-R1's hard product of format and accuracy, as a reward would combine them."""
    s = score_completion(completion, sample)
    return float(s["formatted"] and s["correct"])


def test_score_completion():
    s = score_completion("<think>80+60=140</think>\n<answer> Final Answer: 140° </answer>", {"answer": "140°"})
    assert s == {"extracted": "140°", "correct": True, "formatted": True}
    s = score_completion("<answer>4</answer>", 4)
    assert s == {"extracted": "4", "correct": True, "formatted": False}
    s = score_completion(None, "4")
    assert s == {"extracted": None, "correct": False, "formatted": False}


@pytest.mark.parametrize("completion", [
    "<think>it is 4</think><answer></answer>",                        # empty answer
    "<think>it is 4</think><answer> Final Answer: </answer>",
    "<think>it is 4</think><answer>3 or 4</answer>",                  # hedge
    "<think>it is 4</think><answer>3, 4, 5</answer>",
    "<think>it is 4</think><answer>3 4</answer>",
    "<think>the answer is 4</think>",                                 # answer only in thinking
    "<think>x <answer>4</answer></think>done",
    "<think>it is 4</think><answer>4</answer><answer>4</answer>",     # several answer tags
    "<think>it is 4</think><answer>3</answer><answer>4</answer>",
    "<think>it is 4</think><answer>4</answer> <think>more</think>",
    "<think></think><answer>4</answer>",                              # degenerate thinking
])
def test_hacks_never_earn_the_hard_reward(completion):
    assert hfrrf(completion, {"answer": "4"}) == 0.0


def test_several_answer_tags_grade_the_last_but_fail_format():
    s = score_completion("<think>x</think><answer>3</answer><answer>4</answer>", "4")
    assert s == {"extracted": "4", "correct": True, "formatted": False}
    s = score_completion("<think>x</think><answer>4</answer><answer>3</answer>", "4")
    assert s == {"extracted": "3", "correct": False, "formatted": False}


def test_choice_hedges_never_score():
    mc = {"answer": "B", "choices": ["10", "12", "14"]}
    assert hfrrf("<think>x</think><answer>B</answer>", mc) == 1.0
    for hedge in ("A or B", "B, C", "A B C", "A and B", "ABC"):
        assert hfrrf(f"<think>x</think><answer>{hedge}</answer>", mc) == 0.0


# Conformance with R1-V's recorded verdicts on its four real evaluation logs: tests/test_r1v_agreement.py.


# ---------------------------------------------------------------- operators, units and the answer fallback

@pytest.mark.parametrize("pred,gold,expected", [
    ("2.0^2", "2", False), ("2^2", "2", False), ("2.0^2", "4", True), ("2**2", "4", True), ("2**2", "2", False),
    ("3²", "9", True), ("√4", "2", True), ("√4", "4", False), ("sqrt(16)", "16", False), ("x^2", "2", False),
    ("2x", "2", False), ("4.0 + PE + PF", "4", False), ("10√3", "10", False), ("40 apples", "40", True),
])
@pytest.mark.parametrize("kind", ["auto", "number", "math", "r1v"])
def test_powers_roots_and_operators_are_parsed_never_ignored(pred, gold, expected, kind):
    assert check_answer(pred, gold, kind) is expected


@pytest.mark.parametrize("pred,gold", [("140", "140°"), ("5", "5cm"), ("3.5", "3.5 cm"), ("40", "40 degrees"),
                                       ("\\frac{1}{2}", "\\frac{1}{2}cm²")])
def test_r1v_checker_strips_units_from_the_gold(pred, gold):
    assert check_answer(pred, gold, "r1v")
    assert not check_answer("41", gold, "r1v")


def test_option_label_without_options_never_scores_a_number():
    # R1-V's counting scorer needs a bare integer; "C. 8" names an option that does not exist
    assert not check_answer("C. 8", 8, "number") and check_answer("8", 8, "number")


def test_answer_fallback_reads_the_final_answer_outside_tags_only_when_asked():
    prose = "<think>angle BOC = 2 * 20 = 40</think> Therefore, the answer is 40."
    assert extract_answer(prose) is None
    assert extract_answer(prose, fallback=True) == "40"
    assert extract_answer("<think>x</think><answer> 7 </answer> the answer is 9", fallback=True) == "7"
    assert extract_answer("no numbers at all", fallback=True) is None
    assert score_completion(prose, "40")["correct"] is False          # training rewards: strict
    assert score_completion(prose, "40", fallback=True)["correct"] is True
