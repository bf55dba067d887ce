"""`mmr1 data check` on M-BEIR files: queries, candidate pool and qrels are recognised and checked against
each other; a broken reference is named by file, line and field."""

from __future__ import annotations

import json

from mmr1.cli import main
from mmr1.data.check import check_dataset, check_mbeir, mbeir_kind
from mmr1.retrieval.data import write_mbeir
from mmr1.retrieval.world import make_cir_world


def _files(tmp_path):
    return write_mbeir(make_cir_world(4, seed=3), tmp_path, name="cir")


def test_kinds_are_recognised(tmp_path):
    paths = _files(tmp_path)
    assert {k: mbeir_kind(p) for k, p in paths.items()} == {"queries": "queries", "pool": "pool", "qrels": "qrels"}
    (tmp_path / "other.jsonl").write_text(json.dumps({"problem": "x", "answer": "1"}) + "\n")
    assert mbeir_kind(tmp_path / "other.jsonl") is None


def test_cli_checks_the_three_files_together(tmp_path, capsys):
    paths = _files(tmp_path)
    assert main(["data", "check", str(paths["queries"]), str(paths["pool"]), str(paths["qrels"])]) == 0
    out = capsys.readouterr().out
    assert "OK" in out and "mbeir-queries=4" in out and "mbeir-qrels=" in out and "mbeir-pool=" in out
    # one file alone is checked on its own (no pool: references are not checked, and it says so)
    report = check_dataset(paths["queries"])
    assert report.ok and report.n_records == 4 and any("not checked" in n for n in report.notes)


def test_planted_broken_references_are_named(tmp_path, capsys):
    paths = _files(tmp_path)
    qrels = paths["qrels"].read_text().splitlines()
    qid, _, did, rel, task = qrels[1].split()
    qrels[1] = f"{qid} 0 9:nowhere {rel} {task}"  # a qrel naming a missing candidate
    qrels.append(f"1:ghost 0 {did} 1 {task}")      # and one naming a missing query
    paths["qrels"].write_text("\n".join(qrels) + "\n")
    queries = [json.loads(x) for x in paths["queries"].read_text().splitlines()]
    queries[2]["pos_cand_list"] = ["9:lost"]
    paths["queries"].write_text("\n".join(json.dumps(q) for q in queries) + "\n")
    assert main(["data", "check", str(paths["queries"]), str(paths["pool"]), str(paths["qrels"])]) == 1
    out = capsys.readouterr().out
    assert f"{paths['qrels']}:2 field 'did': candidate '9:nowhere' is not in the pool" in out
    assert f"{paths['qrels']}:{len(qrels)} field 'qid': query '1:ghost' is not in the query file(s)" in out
    assert f"{paths['queries']}:3 field 'pos_cand_list': candidate '9:lost' is not in the pool" in out
    assert "FAILED" in out and "3 bad" in out


def test_bad_lines_images_and_duplicates_are_each_reported(tmp_path):
    paths = _files(tmp_path)
    pool = paths["pool"].read_text().splitlines()
    first = json.loads(pool[0])
    pool.append(json.dumps(first))                                   # duplicate did
    pool.append("{not json")                                         # malformed line
    pool.append(json.dumps({**first, "did": "9:x", "img_path": "mbeir_images/none.png"}))  # missing image
    pool.append(json.dumps({"did": "9:y", "modality": "text"}))      # text modality, no text
    paths["pool"].write_text("\n".join(pool) + "\n")
    report = check_mbeir([paths["pool"]])
    lines = report.lines()
    n = len(pool)
    assert report.n_records == n and report.n_ok == n - 4
    assert any(f":{n - 3} field 'did': duplicate did" in x for x in lines)
    assert any(f":{n - 2} malformed JSON line" in x for x in lines)
    assert any(f":{n - 1} field 'img_path': image file not found: mbeir_images/none.png" in x for x in lines)
    assert any(f":{n} field 'txt': modality 'text' but no text" in x for x in lines)
