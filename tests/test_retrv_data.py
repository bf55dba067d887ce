"""M-BEIR loader: the published layout loads as is; bad records fail with file:line and field."""

import json

import numpy as np
import pytest
from PIL import Image

from mmr1.errors import DataError
from mmr1.retrieval.data import load_mbeir, load_mbeir_pool, load_mbeir_queries, load_qrels, write_mbeir
from mmr1.retrieval.world import make_cir_world

# Records shaped like TIGER-Lab/M-BEIR's CIRR (task 7) and MSCOCO (task 0) files.
QUERIES = [
    {"qid": "7:1", "query_txt": "has two dogs instead of one", "query_img_path": "mbeir_images/cirr/dev-1.png",
     "query_modality": "image,text", "query_src_content": None, "pos_cand_list": ["7:10"],
     "neg_cand_list": ["7:11"], "task_id": 7},
    {"qid": "9:2", "query_txt": "A dog on a beach.", "query_img_path": None, "query_modality": "text",
     "query_src_content": "{\"id\": 5}", "pos_cand_list": ["9:20"], "neg_cand_list": [], "task_id": 0},
]
POOL = [
    {"txt": "", "img_path": "mbeir_images/cirr/dev-10.png", "modality": "image", "did": "7:10", "src_content": None},
    {"txt": "", "img_path": "mbeir_images/cirr/dev-11.png", "modality": "image", "did": "7:11", "src_content": None},
    {"txt": "two dogs", "img_path": "mbeir_images/coco/20.png", "modality": "image,text", "did": "9:20"},
]


def _write(path, rows):
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows))
    return path


@pytest.fixture
def files(tmp_path):
    q = _write(tmp_path / "q.jsonl", QUERIES)
    p = _write(tmp_path / "pool.jsonl", POOL)
    r = tmp_path / "qrels.txt"
    r.write_text("7:1 0 7:10 1 7\n9:2 0 9:20 1 0\n9:2 0 7:11 0 0\n")
    return q, p, r


def test_loads_the_mbeir_layout_as_is(files):
    q, p, r = files
    data = load_mbeir(q, p, r, image_root="/data/M-BEIR")
    assert [x.qid for x in data.queries] == ["7:1", "9:2"]
    q1, q2 = data.queries
    assert (q1.modality, q1.text, q1.image, q1.positives, q1.negatives, q1.task_id) == (
        "image,text", "has two dogs instead of one", "mbeir_images/cirr/dev-1.png", ["7:10"], ["7:11"], 7)
    assert (q2.modality, q2.image, q2.meta["query_src_content"]) == ("text", None, "{\"id\": 5}")
    assert list(data.pool) == ["7:10", "7:11", "9:20"]
    c = data.pool["7:10"]
    assert (c.modality, c.text, c.image) == ("image", None, "mbeir_images/cirr/dev-10.png")  # "" txt -> None
    assert data.pool["9:20"].text == "two dogs"
    assert data.qrels == {"7:1": {"7:10": 1}, "9:2": {"9:20": 1, "7:11": 0}}
    assert data.relevant(q2) == {"9:20"}  # relevance 0 is not relevant
    assert data.image_root == "/data/M-BEIR"


def test_qrels_four_columns_and_images_resolve_against_the_root(tmp_path):
    r = tmp_path / "qrels.txt"
    r.write_text("a 0 b 2\n\n")
    assert load_qrels(r) == {"a": {"b": 2}}
    Image.new("RGB", (8, 8), (1, 2, 3)).save(tmp_path / "x.png")
    p = _write(tmp_path / "pool.jsonl", [{"did": "1", "modality": "image", "img_path": "x.png", "txt": None}])
    img = load_mbeir_pool(p)["1"].load_image(tmp_path)
    assert img.size == (8, 8) and img.getpixel((0, 0)) == (1, 2, 3)


@pytest.mark.parametrize("row, field, reason", [
    ('{"qid": "1", ', None, "not valid JSON"),
    ([1, 2], None, "expected a JSON object"),
    ({"query_txt": "x", "query_modality": "text"}, "qid", "missing"),
    ({"qid": "1", "query_txt": "x", "query_modality": "audio"}, "query_modality", "'audio' is not one of"),
    ({"qid": "1", "query_txt": "x", "query_modality": "image,text"}, "query_img_path", "no image path"),
    ({"qid": "1", "query_txt": "", "query_modality": "text"}, "query_txt", "no text"),
    ({"qid": "1", "query_txt": "x", "query_modality": "text", "pos_cand_list": "7:1"}, "pos_cand_list", "list"),
    ({"qid": "1", "query_txt": 3, "query_modality": "text"}, "query_txt", "expected a string"),
    ({"qid": "1", "query_txt": "x", "query_modality": "text", "task_id": "7"}, "task_id", "integer"),
])
def test_bad_query_records_name_file_line_and_field(tmp_path, row, field, reason):
    path = _write(tmp_path / "q.jsonl", [QUERIES[1], row])
    with pytest.raises(DataError) as e:
        load_mbeir_queries(path)
    assert e.value.file == str(path) and e.value.row == 2 and e.value.field == field
    assert reason in str(e.value) and str(e.value).startswith(f"{path}:2 ")
    assert "\n" not in str(e.value)


def test_bad_pool_and_qrels_records(tmp_path):
    path = _write(tmp_path / "pool.jsonl", [POOL[0], POOL[0]])
    with pytest.raises(DataError, match=r"pool.jsonl:2 field 'did': duplicate did '7:10'"):
        load_mbeir_pool(path)
    path = _write(tmp_path / "pool2.jsonl", [{"did": "1", "modality": "image", "txt": "a"}])
    with pytest.raises(DataError, match=r"pool2.jsonl:1 field 'img_path': modality 'image' but no image path"):
        load_mbeir_pool(path)
    r = tmp_path / "qrels.txt"
    r.write_text("a 0 b 1 7\na 0 b\n")
    with pytest.raises(DataError, match=r"qrels.txt:2 expected 'qid 0 did relevance \[task_id\]', got 3 columns"):
        load_qrels(r)
    r.write_text("a 0 b yes 7\n")
    with pytest.raises(DataError, match=r"qrels.txt:1 field 'relevance': relevance 'yes' is not an integer"):
        load_qrels(r)
    with pytest.raises(DataError, match="file not found"):
        load_qrels(tmp_path / "nope.txt")


def test_positive_missing_from_the_pool_raises_or_is_dropped(files, tmp_path):
    q, _, _ = files
    p = _write(tmp_path / "small_pool.jsonl", POOL[:2])  # 9:20 missing
    with pytest.raises(DataError, match=r"q.jsonl:2 field 'pos_cand_list': positive '9:20' is not in the pool"):
        load_mbeir(q, p)
    data = load_mbeir(q, p, missing="drop")
    assert [x.qid for x in data.queries] == ["7:1"]


def test_world_round_trips_through_the_mbeir_layout(tmp_path):
    world = make_cir_world(4, seed=3)
    paths = write_mbeir(world, tmp_path, name="cir")
    assert paths["queries"] == tmp_path / "query/test/mbeir_cir_test.jsonl"
    back = load_mbeir(paths["queries"], paths["pool"], paths["qrels"], image_root=tmp_path)
    assert [q.qid for q in back.queries] == [q.qid for q in world.queries]
    assert [q.text for q in back.queries] == [q.text for q in world.queries]
    assert [q.positives for q in back.queries] == [q.positives for q in world.queries]
    assert back.qrels == world.qrels
    assert {d: c.text for d, c in back.pool.items()} == {d: c.text for d, c in world.pool.items()}
    q0, w0 = back.queries[0], world.queries[0]
    assert np.array_equal(np.asarray(q0.load_image(tmp_path)), np.asarray(w0.image))  # PNG is lossless
    d = w0.positives[0]
    assert np.array_equal(np.asarray(back.pool[d].load_image(tmp_path)), np.asarray(world.pool[d].image))
