import json

from mmr1.data.schema import Sample, user_turn
from mmr1.data.worlds import make_world
from mmr1.eval.evaluate import evaluate
from mmr1.models import load_model

from .conftest import solid_image


def test_evaluate_writes_predictions_and_metrics(tiny_dirs, tmp_path):
    lm = load_model(tiny_dirs["qwen2_vl"])
    samples = make_world("counting", "test", n=6, seed=0)
    m = evaluate(lm, samples, max_new_tokens=8, batch_size=4, out_dir=tmp_path, show_progress=False)
    assert m["n"] == 6
    assert m["accuracy"] == 0.0 and m["format_rate"] == 0.0  # an untrained model writes no tags
    assert 1 <= m["mean_tokens"] <= 8
    rows = [json.loads(line) for line in (tmp_path / "predictions.jsonl").read_text().splitlines()]
    assert [r["id"] for r in rows] == [s.id for s in samples]
    assert set(rows[0]) >= {"prediction", "extracted", "correct", "formatted", "tokens", "finish_reason"}
    assert json.loads((tmp_path / "metrics.json").read_text())["n"] == 6
    assert sum(v["n"] for v in m["per_category"].values()) == 6


def test_evaluate_skips_bad_images_when_asked(tiny_dirs, tmp_path):
    lm = load_model(tiny_dirs["qwen2_vl"])
    good = Sample(id="g", messages=[user_turn("Colour?")], images=[solid_image()], answers=["red"])
    bad = Sample(id="b", messages=[user_turn("Colour?")], images=[str(tmp_path / "missing.png")], answers=["red"],
                 source="x.jsonl:2")
    m = evaluate(lm, [good, bad], max_new_tokens=4, show_progress=False, on_error="skip")
    assert m["n"] == 1 and m["skipped_records"] == 1
    # records the loader already skipped count too, in the returned metrics and in metrics.json
    m = evaluate(lm, [good, bad], max_new_tokens=4, show_progress=False, on_error="skip", skipped=2,
                 out_dir=tmp_path / "ev")
    assert m["skipped_records"] == 3 == json.loads((tmp_path / "ev" / "metrics.json").read_text())["skipped_records"]
    import pytest

    from mmr1.errors import DataError

    with pytest.raises(DataError, match=r"x.jsonl:2 field 'images\[0\]': image file not found"):
        evaluate(lm, [good, bad], max_new_tokens=4, show_progress=False)
