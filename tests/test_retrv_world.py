"""The composed-image retrieval world and the first stage over it."""

import numpy as np
import pytest

from mmr1.data.worlds.scenes import split_of
from mmr1.errors import ConfigError
from mmr1.retrieval.data import Candidate, RetrievalQuery
from mmr1.retrieval.first_stage import FirstStage, MultimodalEncoder, evaluate_first_stage, recall_at_k
from mmr1.retrieval.world import _apply, _key, describe, edit_text, make_cir_world, place_name
from mmr1.tools.embedders import ColorGridEmbedder


def _pixels(img):
    return np.asarray(img)


def test_deterministic_and_prefix_stable():
    a, b = make_cir_world(12, seed=5), make_cir_world(12, seed=5)
    assert [q.text for q in a.queries] == [q.text for q in b.queries]
    assert all(np.array_equal(_pixels(x.image), _pixels(y.image)) for x, y in zip(a.queries, b.queries))
    assert all(np.array_equal(_pixels(a.pool[d].image), _pixels(b.pool[d].image)) for d in a.pool)
    small = make_cir_world(5, seed=5)
    assert [(q.qid, q.text, q.positives, q.negatives) for q in small.queries] == \
           [(q.qid, q.text, q.positives, q.negatives) for q in a.queries[:5]]
    other = make_cir_world(12, seed=6)
    assert [q.meta["reference"] for q in other.queries] != [q.meta["reference"] for q in a.queries]


def test_targets_follow_the_edit_text_and_hard_negatives_are_near_misses():
    w = make_cir_world(40, seed=0)
    layouts = [_key(c.meta["objects"]) for c in w.pool.values()]
    assert len(set(layouts)) == len(layouts)  # one candidate per layout: no query has two right answers
    ops = set()
    for q in w.queries:
        ref, edit, tgt = q.meta["reference"], q.meta["edit"], q.meta["target"]
        ops.add(edit["op"])
        assert q.text == edit_text(edit, 3) and q.text.startswith("the same scene but with ")
        pairs = [(c, s) for _, _, c, s in ref]
        assert len(set(pairs)) == len(pairs)  # each (colour, shape) once: the text names one object
        named = (edit["colour"], edit["shape"])
        if edit["op"] == "remove":
            assert sorted(tgt) == sorted(o for o in ref if (o[2], o[3]) != named) and len(tgt) == len(ref) - 1
            assert f"the {edit['colour']} {edit['shape']} removed" in q.text
        elif edit["op"] == "add":
            assert [edit["row"], edit["col"], *named] in tgt and len(tgt) == len(ref) + 1
            assert place_name(edit["row"], edit["col"], 3) in q.text
        else:
            assert [o for o in tgt if (o[2], o[3]) == (edit["to"], edit["shape"])] and f"turned {edit['to']}" in q.text
        assert w.pool[q.positives[0]].meta["objects"] == sorted(tgt)
        assert w.pool[q.positives[0]].text == describe(tgt, 3)
        assert q.meta["hard_kinds"][0] == "reference"
        assert w.pool[q.negatives[0]].meta["objects"] == sorted(ref)
        assert 3 <= len(q.negatives) <= 7 and q.positives[0] not in q.negatives
        assert w.qrels[q.qid] == {q.positives[0]: 1}
        assert split_of(ref) == "test"
        assert q.image.size == (84, 84) and q.modality == "image,text"
    assert ops == {"remove", "add", "recolour"}


def test_describe_apply_and_params():
    objs = [[0, 0, "red", "circle"], [1, 1, "blue", "square"]]
    assert describe(objs, 3) == "red circle top-left; blue square centre"
    assert place_name(1, 2, 3) == "right" and place_name(0, 1, 3) == "top" and place_name(2, 3, 4) == "row 3 column 4"
    assert _apply(objs, {"op": "recolour", "colour": "red", "shape": "circle", "to": "green"})[0] == [0, 0, "green", "circle"]
    w = make_cir_world(3, split="train", seed=1, image_size=64, grid=4, n_hard=2, n_distractors=1)
    assert all(len(q.negatives) <= 2 for q in w.queries) and w.queries[0].image.size == (64, 64)
    assert all(split_of(q.meta["reference"]) == "train" for q in w.queries)
    with pytest.raises(ConfigError, match="unknown retrieval world parameter"):
        make_cir_world(2, colour=("red",))
    with pytest.raises(ConfigError, match="edits"):
        make_cir_world(2, edits=("rotate",))
    with pytest.raises(ConfigError, match="unknown split"):
        make_cir_world(2, split="dev")


def test_recall_at_k_golden():
    ranked = [["a", "b", "c"], ["c", "b", "a"], ["x", "y", "z"], ["b", "a", "c"]]
    rel = [{"a"}, {"a"}, {"q"}, {"a", "c"}]
    assert recall_at_k(ranked, rel, [1, 2, 3]) == {"R@1": 0.25, "R@2": 0.5, "R@3": 0.75}


def test_concat_fusion_is_a_weighted_sum_of_cosines():
    w = make_cir_world(3, seed=2)
    emb = ColorGridEmbedder()
    enc = MultimodalEncoder(emb, text_weight=0.3)
    assert enc.fusion == "concat"
    q, c = w.queries[0], w.pool[w.queries[0].positives[0]]
    vq, vc = enc.encode([q, c])
    ci = float(emb.embed_images([q.image])[0] @ emb.embed_images([c.image])[0])
    ct = float(emb.embed_texts([q.text])[0] @ emb.embed_texts([c.text])[0])
    assert float(vq @ vc) == pytest.approx(0.7 * ci + 0.3 * ct, abs=1e-5)
    # an image-only record is just its image vector (text block zero) and stays unit length
    only = Candidate("x", "image", image=c.image)
    v = enc.encode([only])[0]
    assert np.linalg.norm(v) == pytest.approx(1.0, abs=1e-5)
    assert np.allclose(v[:emb.dim], emb.embed_images([c.image])[0], atol=1e-6) and not v[emb.dim:].any()
    with pytest.raises(ConfigError, match="needs one space for images and texts"):
        MultimodalEncoder(emb, fusion="sum").encode([q])


def test_first_stage_finds_an_exact_duplicate_first():
    w = make_cir_world(6, seed=4)
    enc = MultimodalEncoder(ColorGridEmbedder())
    stage = FirstStage(w.pool, enc)
    targets = [w.pool[q.positives[0]] for q in w.queries]
    probes = [RetrievalQuery(f"p{i}", "image,text", text=t.text, image=t.image) for i, t in enumerate(targets)]
    ranking = stage.search(probes, 3)
    assert [r[0] for r in ranking.dids] == [t.did for t in targets]
    assert ranking.scores.shape == (6, 3) and np.all(np.diff(ranking.scores, axis=1) <= 1e-6)
    with pytest.raises(ConfigError, match="top_k"):
        stage.search(probes, 0)


def test_first_stage_alone_is_mediocre_at_r1_but_good_at_r10():
    w = make_cir_world(60, seed=0)
    ranking, m = evaluate_first_stage(w, top_k=20, ks=(1, 5, 10), text_weight=0.2)
    assert set(m) == {"R@1", "R@5", "R@10", "R@20"}
    assert m["R@1"] < 0.35 and m["R@10"] > 0.8 and m["R@20"] >= m["R@10"] >= m["R@5"] >= m["R@1"]
    # the unchanged reference is the usual top-1: the edit is exactly what the embedder cannot apply
    top_is_ref = np.mean([r[0] == q.negatives[0] for r, q in zip(ranking.dids, w.queries)])
    assert top_is_ref > 0.5
