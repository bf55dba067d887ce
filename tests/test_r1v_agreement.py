"""mmr1's default grading of R1-V's four recorded evaluation logs agrees with R1-V's own verdicts.

R1-V's GeoQA script records `is_correct = verify(parse(whole output), parse(ground_truth))` (math-verify's
default configs); its counting script records `int(re.search(r"<answer>\\s*(\\d+)\\s*</answer>")) ==
ground_truth`. The logs are loaded the way `mmr1 eval` loads data (format r1v) and graded with the
defaults (`rewards.checker`, `eval.answer_fallback`). Every remaining disagreement is listed with its cause
in tests/fixtures/r1v_disagreements.json; each cause carries a check that the row really is of that kind,
and a listed row that now agrees fails the test (no stale entries).
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from mmr1.config import Config
from mmr1.data.loaders import load_samples
from mmr1.eval.evaluate import uses_fallback
from mmr1.rewards import score_completion, to_number

REPO = Path(__file__).resolve().parents[1]
REAL = next((p for p in (REPO / "shared" / "real-data", REPO.parent / "shared" / "real-data") if p.is_dir()), None)
LOGS = ("r1v_counting_results_superclevr_200_qwen2vl_2b_instruct_grpo100_legacy.json",
        "r1v_counting_results_superclevr_200_qwen2vl_2b_instruct_legacy.json",
        "r1v_geoqa_test_qwen2vl_7b_grpo_2epochs_legacy.json",
        "r1v_geoqa_test_qwen2vl_7b_instruct_legacy.json")
FIXTURE = json.loads((Path(__file__).parent / "fixtures" / "r1v_disagreements.json").read_text())
MIN_AGREEMENT = 1866  # of 1,908; 1,832 before the answer fallback, the option-label and operator rules
_ROOT = re.compile(r"√|sqrt")


def _cause_holds(d: dict) -> bool:
    """The fixture's cause is true of the row (gold, our extraction, both verdicts)."""
    gold, ex = d["gold"], d["extracted"] or ""
    return {
        # R1-V read "10√{2}" as 10: a plain-text gold with a root or pi, credited by R1-V only
        "gold_coefficient": lambda: bool(re.search(r"[√π]", gold)) and d["recorded"] and not d["ours"],
        # R1-V read "10√3" as 10: a root in our (tagged) answer, credited by R1-V only
        "pred_coefficient": lambda: bool(_ROOT.search(ex)) and d["recorded"] and not d["ours"],
        # we read plain-text maths (sqrt(3)/2, pi, 1:4) R1-V could not
        "plain_math": lambda: bool(re.search(r"√|sqrt|pi|π|:|\\", ex)) and d["ours"] and not d["recorded"],
        # R1-V graded another number of the output than the tagged answer
        "reasoning_number": lambda: d["ours"] != d["recorded"],
        "not_a_number": lambda: to_number(ex or "x") is None and d["recorded"] and not d["ours"],
    }[d["cause"]]()


def _grade(name: str) -> tuple[list[bool], list[dict]]:
    """R1-V's recorded verdicts and mmr1's grading (extracted, correct) of one log, row by row."""
    raw = json.loads((REAL / name).read_text())
    recorded = [bool(r["is_correct"]) if "is_correct" in r else r["extracted_answer"] == r["ground_truth"]
                for r in raw["results"]]
    assert sum(recorded) / len(recorded) * 100 == pytest.approx(raw["accuracy"])  # we read the rule right
    cfg = Config()
    loaded = load_samples(REAL / name, format="r1v")
    assert loaded.errors == [] and len(loaded.samples) == len(recorded)
    ours = [score_completion(s.meta["model_output"], s, kind=cfg.rewards.checker,
                             fallback=uses_fallback(s, cfg.eval.answer_fallback)) for s in loaded.samples]
    return recorded, ours


@pytest.mark.skipif(REAL is None or not all((REAL / n).is_file() for n in LOGS),
                    reason="shared/real-data (R1-V logs) is not available")
def test_agreement_with_r1v_recorded_verdicts():
    listed = {(d["file"], d["row"]): d for d in FIXTURE["rows"]}
    agree = total = 0
    unexplained, stale, wrong_cause = [], [], []
    for name in LOGS:
        recorded, ours = _grade(name)
        for i, (rec, sc) in enumerate(zip(recorded, ours, strict=True)):
            total += 1
            d = listed.pop((name, i), None)
            if sc["correct"] == rec:
                agree += 1
                if d is not None:
                    stale.append((name, i))
                continue
            if d is None:
                unexplained.append((name, i, sc["extracted"], sc["correct"], rec))
            elif (d["extracted"], d["ours"], d["recorded"]) != (sc["extracted"], sc["correct"], rec) \
                    or not _cause_holds(d):
                wrong_cause.append((name, i, d["cause"]))
    assert unexplained == [], "disagreements missing from the fixture (file, row, extracted, ours, recorded)"
    assert stale == [] and listed == {}, "fixture rows that now agree or do not exist"
    assert wrong_cause == []
    assert total == 1908
    assert agree >= MIN_AGREEMENT, f"agreement {agree}/{total}"


def test_fixture_rows_are_explained_in_one_line():
    for d in FIXTURE["rows"]:
        assert d["verdict"] in ("R1-V wrong", "debatable")
        assert d["why"].strip() and "\n" not in d["why"]


def test_fallback_follows_the_r1v_eval_format(tmp_path):
    """auto: GeoQA-style records (string gold) fall back to the whole output, counting records do not."""
    geo = tmp_path / "geo.jsonl"
    geo.write_text(json.dumps({"image_path": "a.png", "question": "angle?", "ground_truth": "40°"}) + "\n"
                   + json.dumps({"image_path": "a.png", "question": "how many?", "ground_truth": 4}) + "\n")
    s_geo, s_count = load_samples(geo, format="r1v").samples
    prose = "<think>angle EOD = 2 * 20° = 40°.</think> Therefore, the answer is 40."
    assert uses_fallback(s_geo) and not uses_fallback(s_count)
    assert score_completion(prose, s_geo, fallback=uses_fallback(s_geo))["correct"]
    assert not score_completion(prose, s_geo, fallback=uses_fallback(s_geo, "off"))["correct"]
    prose4 = "<think>four things</think> So there are 4."
    assert not score_completion(prose4, s_count, fallback=uses_fallback(s_count))["correct"]
    assert score_completion(prose4, s_count, fallback=uses_fallback(s_count, "on"))["correct"]
    # a tagged answer always wins over the text outside the tags
    assert not score_completion("40 <answer>50</answer>", s_geo, fallback=True)["correct"]
