"""Retrv-R1 reward, curriculum, output format and inspection parsing at hand-computed points."""

import pytest

from mmr1.retrieval.reward import (INSPECT_END as E, INSPECT_START as S, check_format, efficiency_reward,
                                   find_inspections, inspection_feedback, lambda_schedule, parse_inspection,
                                   pending_inspection, retrv_reward)

GOOD = (f"<think>The result should show a blue circle. Candidates 2 and 5 lack it. {S}3{E} "
        f"has it at the top-left; {S} 4 {E} does not.</think><answer>3</answer>")


@pytest.mark.parametrize("correct, n, k, lam, want", [
    (True, 0, 50, 1.0, 1.0),
    (True, 5, 50, 1.0, 0.9),
    (True, 5, 50, 0.5, 0.95),
    (True, 10, 20, 0.25, 0.875),
    (True, 20, 20, 1.0, 0.0),
    (False, 0, 50, 0.0, 0.0),
    (False, 3, 50, 1.0, 0.0),
])
def test_efficiency_reward_golden(correct, n, k, lam, want):
    assert efficiency_reward(correct, n, k, lam) == pytest.approx(want)


def test_efficiency_reward_rejects_nonsense():
    with pytest.raises(ValueError):
        efficiency_reward(True, 1, 0, 0.5)
    with pytest.raises(ValueError):
        efficiency_reward(True, -1, 5, 0.5)


def test_curriculum_and_fixed_lambda():
    cur = lambda_schedule("curriculum")
    assert [cur(i, 200) for i in (0, 1, 50, 100, 200, 300)] == pytest.approx([0.0, 0.005, 0.25, 0.5, 1.0, 1.0])
    fixed = lambda_schedule("fixed", 0.5)
    assert [fixed(i, 200) for i in (0, 100, 200)] == [0.5, 0.5, 0.5]
    with pytest.raises(ValueError, match="curriculum"):
        lambda_schedule("cosine")


def test_total_reward_at_known_points():
    # K = 10, gold = candidate 3 (position 2), 2 inspections, lambda = 0.5: 1 + (1 - 0.5 * 2 / 10) = 1.9
    r = retrv_reward(GOOD, gold=2, k=10, n_inspections=2, lam=0.5)
    assert r == {"reward": pytest.approx(1.9), "format": 1.0, "correct": True, "efficiency": pytest.approx(0.9),
                 "answer": 2, "reason": ""}
    assert retrv_reward(GOOD, gold=0, k=10, n_inspections=2, lam=0.5)["reward"] == 1.0  # wrong: format only
    # right answer without <think>: no format reward, the answer still counts
    r = retrv_reward("<answer>3</answer>", gold=2, k=10, n_inspections=0, lam=0.3)
    assert (r["reward"], r["format"], r["correct"]) == (1.0, 0.0, True)
    assert retrv_reward(GOOD, gold=2, k=10, n_inspections=2, lam=0.5, format_weight=0.5)["reward"] == pytest.approx(1.4)
    assert retrv_reward("no tags at all", gold=2, k=10, n_inspections=0, lam=0.0)["reward"] == 0.0


def test_format_accepts_the_documented_layout():
    f = check_format(GOOD, k=10)
    assert f.ok and f.answer == 2 and f.reason == ""
    assert check_format("  <think>plain reasoning</think>\n<answer> 7 </answer>\n", k=10).answer == 6
    assert check_format("<think>x</think><answer>0</answer>", k=10, base=0).answer == 0


@pytest.mark.parametrize("text, reason", [
    ("<answer>3</answer>", "<think> occurs 0 times"),
    ("<think>a</think><answer>3</answer><answer>4</answer>", "<answer> occurs 2 times"),
    ("intro <think>a</think><answer>3</answer>", "nothing around it"),
    ("<answer>3</answer><think>a</think>", "nothing around it"),
    ("<think> </think><answer>3</answer>", "empty reasoning"),
    (f"<think>{S}3{E}</think><answer>3</answer>", "empty reasoning"),
    ("<think>a</think><answer>[3]</answer>", "answer '[3]' is not a number"),
    ("<think>a</think><answer></answer>", "empty answer"),
    ("<think>a</think><answer>11</answer>", "answer 11 is out of range: there are 10 candidates, numbered 1 to 10"),
    ("<think>a</think><answer>0</answer>", "answer 0 is out of range"),
    (f"<think>a {S}3 and so on</think><answer>3</answer>", "unbalanced inspection tags"),
    (f"<think>a {S}1{S}2{E}{E}</think><answer>3</answer>", "unbalanced inspection tags"),
    (f"<think>a {S}twelve{E}</think><answer>3</answer>", "inspection index 'twelve' is not a number"),
    (f"<think>a {S}12{E}</think><answer>3</answer>", "inspection index 12 is out of range"),
    (f"<think>a</think><answer>{S}3{E}</answer>", "inspection call inside <answer>"),
])
def test_format_rejects_with_a_reason(text, reason):
    f = check_format(text, k=10)
    assert not f.ok and reason in f.reason and f.answer is None


def test_inspection_parsing():
    assert parse_inspection("3", 10).position == parse_inspection(" 3 ", 10).position == 2
    ins = parse_inspection(" 3 ", 10)
    assert (ins.ok, ins.index, ins.position) == (True, 3, 2)
    assert parse_inspection("10", 10).position == 9 and parse_inspection("0", 10, base=0).position == 0
    for raw, reason in [("", "empty inspection index"), ("0", "out of range"), ("11", "out of range"),
                        ("-2", "out of range"), ("2.5", "not a number"), ("3, 4", "not a number"),
                        ("x" * 40, "'xxxxxxxxxxxxxxxxxxxx...' is not a number")]:
        bad = parse_inspection(raw, 10)
        assert not bad.ok and bad.position is None and reason in bad.reason, (raw, bad.reason)
    assert inspection_feedback(parse_inspection("11", 10)) == \
        "Invalid inspection: inspection index 11 is out of range: there are 10 candidates, numbered 1 to 10."


def test_pending_and_all_inspections():
    turn = f"<think>Candidate 2 looks close. Let me check {S}2{E}"
    assert pending_inspection(turn, 5).position == 1
    assert pending_inspection(turn + "  \n", 5).position == 1
    assert pending_inspection(f"<think>check {S}9{E}", 5).reason.startswith("inspection index 9 is out of range")
    assert pending_inspection(f"{S}2{E} then more text", 5) is None  # not where generation stopped
    assert pending_inspection("no call", 5) is None
    assert "without a preceding" in pending_inspection(f"oops 3{E}", 5).reason
    assert [i.position for i in find_inspections(GOOD, 10)] == [2, 3]
