"""Loaders for the methods' public formats, the native JSONL round trip and `data check`."""

from __future__ import annotations

import io
import json
from pathlib import Path

import pytest
from PIL import Image

from mmr1.data import FORMATS, check_dataset, detect_format, load_samples, save_jsonl
from mmr1.errors import DataError
from mmr1.data.formats import parse_record
from mmr1.data.schema import Sample

FIXTURES = Path(__file__).parent / "fixtures"
REPO = Path(__file__).resolve().parents[1]
REAL = next((p for p in (REPO / "shared" / "real-data", REPO.parent / "shared" / "real-data") if p.is_dir()), None)


def make_image(w=5, h=4, seed=0) -> Image.Image:
    img = Image.new("RGB", (w, h))
    img.putdata([((x * 37 + seed) % 256, (y * 91 + seed) % 256, (x * y + seed) % 256)
                 for y in range(h) for x in range(w)])
    return img


def png_bytes(img: Image.Image) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return buf.getvalue()


def write_jsonl(path: Path, records) -> Path:
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in records))
    return path


def pixels(img: Image.Image) -> bytes:
    return img.convert("RGB").tobytes()


IMG = {"type": "image"}


def text(t):
    return {"type": "text", "text": t}


# --- one file per format -------------------------------------------------------------

def test_geometry3k_placeholder_position_and_image_first(tmp_path):
    make_image(seed=1).save(tmp_path / "a.png")
    f = write_jsonl(tmp_path / "geo.jsonl", [
        {"problem": "Find x.<image>Round to tenths.", "answer": "3.5", "images": ["a.png"]},
        {"problem": "Find y.", "answer": 12, "images": [{"bytes": None, "path": "a.png"}]},  # HF-style dict
    ])
    res = load_samples(f)
    assert (res.n_records, len(res.samples), res.errors, res.formats) == (2, 2, [], {"geometry3k": 2})
    s0, s1 = res.samples
    assert s0.messages == [{"role": "user", "content": [text("Find x."), IMG, text("Round to tenths.")]}]
    assert s0.images == [str(tmp_path / "a.png")] and s0.answers == ["3.5"]
    assert (s0.source, s0.id) == (f"{f}:1", "geo-1")
    assert s1.messages == [{"role": "user", "content": [IMG, text("Find y.")]}]
    assert s1.answers == ["12"] and s1.source == f"{f}:2"
    assert pixels(s1.load_images()[0]) == pixels(make_image(seed=1))


def test_sharegpt_llava_cot_and_mulberry_styles(tmp_path):
    make_image(seed=3).save(tmp_path / "q.png")
    make_image(seed=4).save(tmp_path / "r.png")
    target = "<think> The image shows 5 apples. </think><answer> Final Answer:5 </answer>"
    f = write_jsonl(tmp_path / "cold.jsonl", [
        {"id": "llava-7", "image": "q.png", "conversations": [
            {"from": "human", "value": "<image>\nHow many apples?"}, {"from": "gpt", "value": target}]},
        {"images": ["q.png", "r.png"], "conversations": [
            {"role": "system", "content": "Be brief."},
            {"role": "user", "content": "Compare <image> and <image>."},
            {"role": "assistant", "content": "Same."}]},
    ])
    s0, s1 = load_samples(f, format="sharegpt").samples
    assert s0.id == "llava-7"
    assert s0.messages == [{"role": "user", "content": [IMG, text("\nHow many apples?")]},
                           {"role": "assistant", "content": [text(target)]}]
    assert s0.answers == ["5"] and s0.target() == target
    assert s0.prompt_messages() == s0.messages[:1]
    assert s1.messages == [{"role": "system", "content": "Be brief."},
                           {"role": "user", "content": [text("Compare "), IMG, text(" and "), IMG, text(".")]},
                           {"role": "assistant", "content": [text("Same.")]}]
    assert s1.images == [str(tmp_path / "q.png"), str(tmp_path / "r.png")] and s1.answers == []


def test_r1v_train_and_test_rows(tmp_path):
    make_image(seed=5).save(tmp_path / "c.png")
    f = write_jsonl(tmp_path / "r1v.jsonl", [
        {"image": "c.png", "problem": "How many cubes?", "solution": "<answer> 3 </answer>"},
        {"image_path": "./c.png", "question": "Angle CED is ()", "ground_truth": "140°"},
        {"image_path": "c.png", "question": "How many items?", "ground_truth": 9},
    ])
    res = load_samples(f)
    assert res.formats == {"r1v": 3}
    s0, s1, s2 = res.samples
    assert s0.answers == ["3"] and s0.meta == {"solution": "<answer> 3 </answer>"}
    assert s0.messages == [{"role": "user", "content": [IMG, text("How many cubes?")]}]
    assert s1.answers == ["140°"] and s1.answer_type is None
    assert Path(s1.images[0]) == tmp_path / "c.png"
    assert s2.answers == ["9"] and s2.answer_type == "integer"


def test_mathvista_parquet_and_json(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    raw = png_bytes(make_image(seed=6))
    rec = {"pid": "17", "question": "What is the angle?", "choices": ["30°", "45°"], "answer": "45°",
           "answer_type": "text", "question_type": "multi_choice", "precision": None, "unit": None,
           "image": "images/17.jpg", "decoded_image": {"bytes": raw, "path": None},
           "metadata": {"category": "math-targeted-vqa", "task": "geometry problem solving", "skills": ["GEO"]}}
    free = {"pid": "18", "question": "Area?", "choices": None, "answer": "1.5", "answer_type": "float",
            "question_type": "free_form", "precision": 1.0, "image": "x.png", "metadata": {}}
    pq.write_table(pa.Table.from_pylist([rec]), tmp_path / "mv.parquet")  # as on the HF hub
    (tmp_path / "mv.json").write_text(json.dumps([free]))
    (s0,) = load_samples(tmp_path / "mv.parquet").samples
    (s1,) = load_samples(tmp_path / "mv.json").samples
    assert s0.id == "17" and s0.images == [raw] and s0.choices == ["30°", "45°"]
    assert s0.messages == [{"role": "user", "content": [IMG, text("What is the angle?\nChoices:\n(A) 30°\n(B) 45°")]}]
    assert (s0.answers, s0.answer_type, s0.precision, s0.category) == (["45°"], "multi_choice", None, "math-targeted-vqa")
    assert s0.meta["answer_type"] == "text" and s0.meta["metadata"]["skills"] == ["GEO"]
    assert (s1.answer_type, s1.precision, s1.category, s1.choices) == ("float", 1, "free_form", None)
    assert s1.images == [str(tmp_path / "x.png")]


def test_mmsearch_parquet_written_here(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    raw = png_bytes(make_image(seed=7))
    pq.write_table(pa.Table.from_pylist([{
        "prompt": [{"role": "user", "content": "Here is the image:\n<image> Who built this?"}],
        "images": [{"bytes": raw, "path": None}],
        "reward_model": {"ground_truth": "Gaudí", "candidate_answers": '["Antoni Gaudí", "Gaudí"]', "style": "rule"},
        "data_source": "mmsearch_r1/fvqa", "image_urls": ["http://x/y.jpg"]}]), tmp_path / "m.parquet")
    (s,) = load_samples(tmp_path / "m.parquet").samples
    assert s.messages == [{"role": "user", "content": [text("Here is the image:\n"), IMG, text(" Who built this?")]}]
    assert s.answers == ["Gaudí", "Antoni Gaudí"] and s.images == [raw]
    assert s.meta == {"data_source": "mmsearch_r1/fvqa", "image_urls": ["http://x/y.jpg"], "reward_style": "rule"}


def test_native_format(tmp_path):
    make_image(seed=8).save(tmp_path / "n.png")
    rec = {"id": "n1", "messages": [{"role": "user", "content": [IMG, text("Q?")]},
                                     {"role": "assistant", "content": "A"}],
           "images": ["n.png"], "answers": ["A", "a"], "choices": None, "answer_type": "text",
           "precision": None, "category": "cat", "meta": {"k": 1}}
    (s,) = load_samples(write_jsonl(tmp_path / "n.jsonl", [rec])).samples
    assert (s.id, s.messages, s.answers, s.category, s.meta) == ("n1", rec["messages"], ["A", "a"], "cat", {"k": 1})
    assert s.images == [str(tmp_path / "n.png")] and s.target() == "A"


def test_detect_format_by_keys_and_unknown():
    assert detect_format({"problem": "p", "answer": "a", "images": []}) == "geometry3k"
    assert detect_format({"problem": "p", "solution": "<answer>1</answer>", "image": "x"}) == "r1v"
    assert detect_format({"conversations": []}) == "sharegpt"
    assert detect_format({"pid": "1", "question": "q"}) == "mathvista"
    assert detect_format({"prompt": [], "reward_model": {}}) == "mmsearch"
    assert detect_format({"messages": []}) == "mmr1"
    llama_factory = {"messages": [{"role": "user", "content": "<image>Q"}], "images": ["a.png"]}
    assert detect_format(llama_factory) == "sharegpt"
    assert parse_record(llama_factory)[1].messages == [{"role": "user", "content": [IMG, text("Q")]}]
    with pytest.raises(DataError) as e:
        detect_format({"foo": 1})
    assert "unknown record format" in str(e.value)
    assert all(name in str(e.value) for name in FORMATS)


def test_placeholder_count_mismatch_is_an_error():
    with pytest.raises(DataError) as e:
        parse_record({"problem": "<image> and <image>", "answer": "1", "images": ["a.png"]})
    assert str(e.value) == "field 'problem': 2 '<image>' placeholder(s) but 1 image(s)"


# --- broken records ------------------------------------------------------------------

@pytest.fixture
def broken(tmp_path):
    """A geometry3k file: rows 1 and 7 good, every other row broken in its own way."""
    good = png_bytes(make_image(32, 32, seed=9))
    (tmp_path / "good.png").write_bytes(good)
    (tmp_path / "trunc.png").write_bytes(good[:100])
    rows = [
        {"problem": "ok 1", "answer": "1", "images": ["good.png"]},
        {"problem": "missing file", "answer": "2", "images": ["nope.png"]},
        {"problem": "truncated", "answer": "3", "images": ["trunc.png"]},
        {"problem": "no answer", "images": ["good.png"]},
        {"problem": "dict answer", "answer": {"x": 1}, "images": ["good.png"]},
        '{"problem": "bad json", "answer": ',
        {"problem": "ok 7", "answer": "7", "images": ["good.png"]},
    ]
    return write_jsonl(tmp_path / "broken.jsonl", rows)


@pytest.mark.parametrize("row,field,reason", [
    (2, "images[0]", "image file not found"),
    (3, "images[0]", "cannot decode"),
    (4, "answer", "missing"),
    (5, "answer", "expected str or int or float, got dict"),
    (6, None, "malformed JSON line"),
])
def test_broken_record_raises_with_file_row_field(broken, row, field, reason):
    lines = broken.read_text().splitlines()
    keep = [lines[0], lines[row - 1]]  # the good row first, then the bad one as row 2
    f = broken.with_name(f"one_{row}.jsonl")
    f.write_text("\n".join(keep) + "\n")
    for name in ("good.png", "trunc.png"):
        assert (broken.parent / name).exists()
    with pytest.raises(DataError) as e:
        load_samples(f, verify_images=True)
    err = e.value
    assert (err.file, err.row, err.field) == (str(f), 2, field)
    prefix = f"{f}:2 field '{field}': " if field else f"{f}:2 "
    assert str(err).startswith(prefix) and reason in str(err)


def test_broken_records_skipped_and_counted(broken):
    res = load_samples(broken, on_error="skip", verify_images=True)
    assert res.n_records == 7 and res.n_bad == 5
    assert [s.answers for s in res.samples] == [["1"], ["7"]]
    assert [s.source for s in res.samples] == [f"{broken}:1", f"{broken}:7"]
    assert [(e.row, e.field) for e in res.errors] == [
        (2, "images[0]"), (3, "images[0]"), (4, "answer"), (5, "answer"), (6, None)]


def test_images_are_lazy_by_default(broken):
    res = load_samples(broken, on_error="skip")  # no decoding: image problems go unnoticed here
    assert [s.answers[0] for s in res.samples] == ["1", "2", "3", "7"]
    with pytest.raises(DataError, match=r"broken.jsonl:2 field 'images\[0\]': image file not found"):
        res.samples[1].load_images()


def test_check_reports_every_bad_record(broken):
    rep = check_dataset(broken)
    assert not rep.ok and (rep.n_records, rep.n_ok, rep.formats) == (7, 2, {"geometry3k": 6})
    lines = rep.lines()
    assert len(lines) == 6
    assert lines[0] == f"{broken}:2 field 'images[0]': image file not found: {broken.parent / 'nope.png'}"
    assert lines[1].startswith(f"{broken}:3 field 'images[0]': cannot decode")
    assert lines[2] == f"{broken}:4 field 'answer': missing"
    assert lines[3] == f"{broken}:5 field 'answer': expected str or int or float, got dict"
    assert lines[4].startswith(f"{broken}:6 malformed JSON line")
    assert lines[5] == f"{broken}: FAILED: 7 records, 2 ok, 5 bad (formats: geometry3k=6)"


def test_check_missing_file_and_clean_file(tmp_path):
    rep = check_dataset(tmp_path / "absent.jsonl")
    assert not rep.ok and rep.lines()[0] == f"{tmp_path / 'absent.jsonl'} no such file or directory"
    make_image().save(tmp_path / "i.png")
    f = write_jsonl(tmp_path / "ok.jsonl", [{"problem": "p", "answer": "1", "images": ["i.png"]}])
    rep = check_dataset(f)
    assert rep.ok and rep.lines() == [f"{f}: OK: 1 records, 1 ok, 0 bad (formats: geometry3k=1)"]


def test_limit_and_image_root(tmp_path):
    (tmp_path / "imgs").mkdir()
    make_image().save(tmp_path / "imgs" / "i.png")
    f = write_jsonl(tmp_path / "d.jsonl", [{"problem": f"p{i}", "answer": str(i), "images": ["i.png"]}
                                           for i in range(5)])
    res = load_samples(f, limit=2, image_root=tmp_path / "imgs", verify_images=True)
    assert [s.answers[0] for s in res.samples] == ["0", "1"] and res.n_records == 2
    assert res.samples[0].images == [str(tmp_path / "imgs" / "i.png")]


def test_unknown_file_type_and_json_dict_without_list(tmp_path):
    (tmp_path / "x.csv").write_text("a,b\n")
    with pytest.raises(DataError, match="unsupported file type '.csv'"):
        load_samples(tmp_path / "x.csv")
    (tmp_path / "d.json").write_text('{"accuracy": 1}')
    with pytest.raises(DataError, match="expected a list of records"):
        load_samples(tmp_path / "d.json")


# --- real files ----------------------------------------------------------------------

def test_real_mmsearch_parquet_loads_as_is():
    res = load_samples(FIXTURES / "mmsearch_r1_mini_data.pq")
    assert res.n_records == 5 and len(res.samples) == 5 and res.formats == {"mmsearch": 5}
    s = res.samples[0]
    assert s.messages == [{"role": "user", "content": [IMG, text("What is the country of origin of this food?")]}]
    assert s.answers == ["Spain", "Kingdom of Spain", "ESP", "\U0001F1EA\U0001F1F8", "ES"]  # "Spain" deduplicated
    assert s.meta == {"data_source": "mmsearch_r1/infoseek_train_split", "image_urls": None, "reward_style": "rule"}
    assert isinstance(s.images[0], bytes) and s.images[0][:2] == b"\xff\xd8"  # JPEG, undecoded
    assert s.load_images()[0].mode == "RGB"
    assert res.samples[1].answer == "Gautama Buddha" and "Shakyamuni" in res.samples[1].answers
    assert len(res.samples[1].answers) == 28
    assert check_dataset(FIXTURES / "mmsearch_r1_mini_data.pq").ok


@pytest.fixture
def real():
    if REAL is None:
        pytest.skip("shared/real-data not present")
    return REAL


def test_real_r1v_prompts_load_and_check_reports_missing_images(real):
    f = real / "r1v_superclevr_test200_counting_problems.jsonl"
    res = load_samples(f)
    assert (res.n_records, len(res.samples)) == (200, 200)
    assert res.samples[0].answers == ["4"] and res.samples[0].answer_type == "integer"
    assert res.samples[0].question_text() == "How many different items are there in the image?"
    rep = check_dataset(f)
    assert not rep.ok and rep.n_ok == 0 and len(rep.errors) == 200
    assert rep.lines()[0] == f"{f}:1 field 'images[0]': image file not found: {real / 'images/superCLEVR_new_025000.png'}"
    assert rep.lines()[199].startswith(f"{f}:200 field 'images[0]': image file not found")

    geo = load_samples(real / "r1v_geoqa_test_prompts.jsonl")
    assert len(geo.samples) == 754 and geo.samples[0].answers == ["140°"]


def test_real_r1v_eval_logs_load_with_model_outputs(real):
    res = load_samples(real / "r1v_geoqa_test_qwen2vl_7b_grpo_2epochs_legacy.json")
    assert len(res.samples) == 754 and res.formats == {"r1v": 754}
    s = res.samples[0]
    assert s.answers == ["140°"] and s.images == ["/home/chenliang/Geo170K/images/test/0.png"]
    assert s.meta["extracted_answer"] == "40.0000000000000" and s.meta["is_correct"] is False
    assert s.meta["model_output"].endswith("<answer>40.0</answer>")
    counting = load_samples(real / "r1v_counting_results_superclevr_200_qwen2vl_2b_instruct_legacy.json")
    assert len(counting.samples) == 200 and counting.samples[0].meta["extracted_answer"] == 4


# --- HF datasets and the native round trip -------------------------------------------

def test_hf_save_to_disk_directory(tmp_path):
    from datasets import Dataset, DatasetDict, Features, Image as HFImage, List, Value

    a, b = make_image(seed=10), make_image(7, 3, seed=11)
    feats = Features({"problem": Value("string"), "answer": Value("string"), "images": List(HFImage())})
    ds = Dataset.from_dict({"problem": ["<image>Find x.", "Find y."], "answer": ["2", "5"],
                            "images": [[a], [b]]}, features=feats)
    ds.save_to_disk(str(tmp_path / "ds"))
    res = load_samples(tmp_path / "ds")
    assert [s.answers for s in res.samples] == [["2"], ["5"]]
    assert res.samples[0].messages == [{"role": "user", "content": [IMG, text("Find x.")]}]
    assert isinstance(res.samples[0].images[0], bytes)  # undecoded until asked
    assert pixels(res.samples[1].load_images()[0]) == pixels(b)
    assert res.samples[1].source == f"{tmp_path / 'ds'}:2"

    r1v = Dataset.from_dict({"image": [a], "problem": ["How many?"], "solution": ["<answer>2</answer>"]},
                            features=Features({"image": HFImage(), "problem": Value("string"),
                                               "solution": Value("string")}))
    DatasetDict({"train": r1v}).save_to_disk(str(tmp_path / "dd"))
    (s,) = load_samples(tmp_path / "dd").samples
    assert s.source == f"{tmp_path / 'dd' / 'train'}:1" and s.answers == ["2"]
    assert pixels(s.load_images()[0]) == pixels(a)


def test_save_jsonl_round_trip(tmp_path):
    make_image(seed=12).save(tmp_path / "on_disk.png")
    samples = [
        Sample(id="a", messages=[{"role": "user", "content": [IMG, text("Q1")]}], images=[make_image(seed=13)],
               answers=["1"], answer_type="integer", meta={"k": [1, 2]}),
        Sample(id="b", messages=[{"role": "system", "content": "sys"},
                                 {"role": "user", "content": [IMG, text("Q2"), IMG]},
                                 {"role": "assistant", "content": [text("<answer>x</answer>")]}],
               images=[png_bytes(make_image(seed=14)), str(tmp_path / "on_disk.png")],
               answers=["x", "X"], choices=["x", "y"], precision=2, category="c"),
    ]
    out = save_jsonl(samples, tmp_path / "out" / "data.jsonl")
    assert sorted(p.name for p in (tmp_path / "out" / "data_images").iterdir()) == ["000000_0.png", "000001_0.png"]
    first = json.loads(out.read_text().splitlines()[0])
    assert first["images"] == ["data_images/000000_0.png"]
    assert json.loads(out.read_text().splitlines()[1])["images"][1] == "../on_disk.png"
    back = load_samples(out, verify_images=True).samples
    fields = ("id", "messages", "answers", "choices", "answer_type", "precision", "category", "meta")
    for orig, new in zip(samples, back, strict=True):
        assert {k: getattr(new, k) for k in fields} == {k: getattr(orig, k) for k in fields}
        assert [pixels(i) for i in new.load_images()] == [pixels(i) for i in orig.load_images()]
    assert back[0].source == f"{out}:1"


def test_save_jsonl_real_mmsearch_round_trip(tmp_path):
    orig = load_samples(FIXTURES / "mmsearch_r1_mini_data.pq").samples[:2]
    back = load_samples(save_jsonl(orig, tmp_path / "m.jsonl", image_dir=tmp_path / "px")).samples
    assert [s.answers for s in back] == [s.answers for s in orig]
    assert back[0].meta == orig[0].meta and back[0].messages == orig[0].messages
    assert pixels(back[1].load_images()[0]) == pixels(orig[1].load_images()[0])  # JPEG decoded == PNG reloaded
