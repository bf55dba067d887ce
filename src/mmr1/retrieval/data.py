"""Retrieval records and a loader for the M-BEIR layout as it is published (TIGER-Lab/M-BEIR, UniIR).

M-BEIR ships three kinds of files, loaded here unchanged:

- query JSONL (``query/<split>/mbeir_<name>_<split>.jsonl``): one object a line with ``qid`` ("9:12"),
  ``query_modality`` ("text", "image" or "image,text"), ``query_txt`` (str or null), ``query_img_path``
  (path relative to the M-BEIR root, or null), ``pos_cand_list`` / ``neg_cand_list`` (candidate ``did`` s)
  and ``task_id`` (0-8); other keys (``query_src_content`` ...) are kept in ``meta``.
- candidate-pool JSONL (``cand_pool/.../mbeir_<name>_cand_pool.jsonl``): ``did``, ``modality``, ``txt``,
  ``img_path`` (and ``src_content``, kept in ``meta``).
- qrels text (``qrels/<split>/mbeir_<name>_<split>_qrels.txt``): ``qid 0 did relevance task_id`` per line,
  whitespace separated (UniIR's ``load_qrel`` reads five columns; a four-column TREC line is accepted too).

A bad record raises `DataError` naming file, line and field, so the fix is one look away.
`write_mbeir` writes the same layout (used to export the synthetic world and to test the round trip).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable

from ..errors import DataError

MODALITIES = ("text", "image", "image,text")


@dataclass
class Candidate:
    """A pool entry: text, an image (a path, or a PIL image for in-memory worlds) or both."""

    did: str
    modality: str
    text: str | None = None
    image: Any = None  # str path (relative to an image root) or PIL.Image
    meta: dict = field(default_factory=dict)

    def load_image(self, root: str | Path | None = None):
        return _load_image(self.image, root)


@dataclass
class RetrievalQuery:
    """A query and its labelled candidates (``positives`` = relevant dids)."""

    qid: str
    modality: str
    text: str | None = None
    image: Any = None
    positives: list[str] = field(default_factory=list)
    negatives: list[str] = field(default_factory=list)
    task_id: int | None = None
    meta: dict = field(default_factory=dict)

    def load_image(self, root: str | Path | None = None):
        return _load_image(self.image, root)


@dataclass
class RetrievalSet:
    """Queries, the candidate pool (did -> Candidate, in file order) and qrels (qid -> {did: relevance})."""

    queries: list[RetrievalQuery]
    pool: dict[str, Candidate]
    qrels: dict[str, dict[str, int]] = field(default_factory=dict)
    image_root: str | None = None

    def relevant(self, q: RetrievalQuery) -> set[str]:
        """Relevant dids of `q`: qrels with relevance > 0 where given, else its ``pos_cand_list``."""
        rel = self.qrels.get(q.qid)
        if rel is not None:
            return {d for d, r in rel.items() if r > 0}
        return set(q.positives)


def _load_image(image, root):
    """A path is decoded (relative to `root`); an in-memory image (the synthetic world's) is returned as it is."""
    from ..data.schema import load_image

    return load_image(image, root=root) if isinstance(image, (str, Path)) else image


# ------------------------------------------------------------------------------------------ loading


def _jsonl(path: Path) -> Iterable[tuple[int, dict]]:
    if not path.is_file():
        raise DataError("file not found", file=str(path))
    with open(path, encoding="utf-8") as f:
        for n, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                rec = json.loads(line)
            except json.JSONDecodeError as e:
                raise DataError(f"not valid JSON ({e.msg} at column {e.colno})", file=str(path), row=n) from None
            if not isinstance(rec, dict):
                raise DataError(f"expected a JSON object, got {type(rec).__name__}", file=str(path), row=n)
            yield n, rec


def _str(rec: dict, key: str, where: dict, *, required: bool = True) -> str | None:
    v = rec.get(key)
    if v is None or (isinstance(v, str) and not v.strip() and not required):
        if required:
            raise DataError("missing" if key not in rec else "is null", field=key, **where)
        return None
    if isinstance(v, (int, float)) and not isinstance(v, bool) and key in ("qid", "did"):
        return str(v)  # some exports write numeric ids
    if not isinstance(v, str):
        raise DataError(f"expected a string, got {type(v).__name__} {v!r}", field=key, **where)
    if required and not v.strip():
        raise DataError("is empty", field=key, **where)
    return v


def _modality(rec: dict, key: str, text: str | None, image: str | None, tkey: str, ikey: str, where: dict) -> str:
    m = _str(rec, key, where)
    if m not in MODALITIES:
        raise DataError(f"{m!r} is not one of {', '.join(MODALITIES)}", field=key, **where)
    if "image" in m and image is None:
        raise DataError(f"modality {m!r} but no image path", field=ikey, **where)
    if "text" in m and text is None:
        raise DataError(f"modality {m!r} but no text", field=tkey, **where)
    return m


def _dids(rec: dict, key: str, where: dict) -> list[str]:
    v = rec.get(key, [])
    if v is None:
        return []
    if not isinstance(v, list) or not all(isinstance(d, (str, int)) and not isinstance(d, bool) for d in v):
        raise DataError(f"expected a list of candidate ids, got {v!r}", field=key, **where)
    return [str(d) for d in v]


def candidate_from_record(rec: dict, where: dict) -> Candidate:
    """One pool line -> Candidate; `where` ({"file", "row"}) locates its DataError."""
    did = _str(rec, "did", where)
    text = _str(rec, "txt", where, required=False)
    img = _str(rec, "img_path", where, required=False)
    mod = _modality(rec, "modality", text, img, "txt", "img_path", where)
    meta = {k: v for k, v in rec.items() if k not in ("did", "txt", "img_path", "modality")}
    return Candidate(did=did, modality=mod, text=text, image=img, meta=meta)


def query_from_record(rec: dict, where: dict) -> RetrievalQuery:
    """One query line -> RetrievalQuery; `where` ({"file", "row"}) locates its DataError."""
    qid = _str(rec, "qid", where)
    text = _str(rec, "query_txt", where, required=False)
    img = _str(rec, "query_img_path", where, required=False)
    mod = _modality(rec, "query_modality", text, img, "query_txt", "query_img_path", where)
    task = rec.get("task_id")
    if task is not None and (isinstance(task, bool) or not isinstance(task, int)):
        raise DataError(f"expected an integer, got {task!r}", field="task_id", **where)
    meta = {k: v for k, v in rec.items() if k not in
            ("qid", "query_txt", "query_img_path", "query_modality", "pos_cand_list", "neg_cand_list", "task_id")}
    meta["line"] = where.get("row")
    return RetrievalQuery(qid=qid, modality=mod, text=text, image=img, positives=_dids(rec, "pos_cand_list", where),
                          negatives=_dids(rec, "neg_cand_list", where), task_id=task, meta=meta)


def load_mbeir_pool(path: str | Path) -> dict[str, Candidate]:
    """An M-BEIR candidate pool JSONL -> {did: Candidate}, in file order; a repeated did is an error."""
    path = Path(path)
    pool: dict[str, Candidate] = {}
    for n, rec in _jsonl(path):
        where = {"file": str(path), "row": n}
        c = candidate_from_record(rec, where)
        if c.did in pool:
            raise DataError(f"duplicate did {c.did!r}", field="did", **where)
        pool[c.did] = c
    return pool


def load_mbeir_queries(path: str | Path) -> list[RetrievalQuery]:
    """An M-BEIR query JSONL -> [RetrievalQuery]; a repeated qid is an error."""
    path = Path(path)
    out, seen = [], set()
    for n, rec in _jsonl(path):
        where = {"file": str(path), "row": n}
        q = query_from_record(rec, where)
        if q.qid in seen:
            raise DataError(f"duplicate qid {q.qid!r}", field="qid", **where)
        seen.add(q.qid)
        out.append(q)
    return out


def load_qrels(path: str | Path) -> dict[str, dict[str, int]]:
    """``qid 0 did relevance [task_id]`` lines -> {qid: {did: relevance}} (all relevances, 0 included)."""
    path = Path(path)
    if not path.is_file():
        raise DataError("file not found", file=str(path))
    qrels: dict[str, dict[str, int]] = {}
    with open(path, encoding="utf-8") as f:
        for n, line in enumerate(f, 1):
            if line.split():
                qid, did, r = qrel_from_line(line, {"file": str(path), "row": n})
                qrels.setdefault(qid, {})[did] = r
    return qrels


def qrel_from_line(line: str, where: dict) -> tuple[str, str, int]:
    """One non-blank qrels line -> (qid, did, relevance)."""
    parts = line.split()
    if len(parts) not in (4, 5):
        raise DataError(f"expected 'qid 0 did relevance [task_id]', got {len(parts)} columns: {line.strip()!r}",
                        **where)
    qid, _, did, rel = parts[:4]
    try:
        return qid, did, int(rel)
    except ValueError:
        raise DataError(f"relevance {rel!r} is not an integer", field="relevance", **where) from None


def load_mbeir(queries: str | Path, pool: str | Path, qrels: str | Path | None = None,
               image_root: str | Path | None = None, missing: str = "raise") -> RetrievalSet:
    """Queries + pool (+ qrels); every positive did must be in the pool.

    ``missing="raise"`` stops at the first positive not in the pool (naming the query's file and line);
    ``"drop"`` removes such dids (UniIR's local pools of OVEN/InfoSeek hold only their own dataset's
    candidates) and then drops queries left with no positive.
    """
    if missing not in ("raise", "drop"):
        raise ValueError(f"missing must be 'raise' or 'drop', got {missing!r}")
    qs, cands = load_mbeir_queries(queries), load_mbeir_pool(pool)
    rels = load_qrels(qrels) if qrels is not None else {}
    kept = []
    for q in qs:
        bad = [d for d in q.positives if d not in cands]
        if bad and missing == "raise":
            raise DataError(f"positive {bad[0]!r} is not in the pool {pool}", file=str(queries), row=q.meta["line"],
                            field="pos_cand_list")
        q.positives = [d for d in q.positives if d in cands]
        q.negatives = [d for d in q.negatives if d in cands]
        if q.positives or (q.qid in rels and any(r > 0 and d in cands for d, r in rels[q.qid].items())):
            kept.append(q)
    return RetrievalSet(kept, cands, rels, str(image_root) if image_root is not None else None)


# ------------------------------------------------------------------------------------------ writing


def _image_path(image, out: Path, sub: str, name: str) -> str | None:
    if image is None:
        return None
    if isinstance(image, (str, Path)):
        return str(image)
    rel = f"mbeir_images/{sub}/{name}.png"
    (out / rel).parent.mkdir(parents=True, exist_ok=True)
    image.save(out / rel)
    return rel


def write_mbeir(data: RetrievalSet, out: str | Path, name: str = "world", split: str = "test",
                task_id: int = 7) -> dict[str, Path]:
    """Write `data` in the M-BEIR layout under `out` (in-memory images become PNGs under mbeir_images/).

    Returns the three paths {"queries", "pool", "qrels"}; `load_mbeir` on them (image_root=out) gives
    the same records back. task_id 7 is M-BEIR's "image,text -> image" (CIRR, FashionIQ).
    """
    out = Path(out)
    paths = {"queries": out / "query" / split / f"mbeir_{name}_{split}.jsonl",
             "pool": out / "cand_pool" / "local" / f"mbeir_{name}_cand_pool.jsonl",
             "qrels": out / "qrels" / split / f"mbeir_{name}_{split}_qrels.txt"}
    for p in paths.values():
        p.parent.mkdir(parents=True, exist_ok=True)
    safe = lambda s: s.replace(":", "_").replace("/", "_")  # noqa: E731
    with open(paths["pool"], "w", encoding="utf-8") as f:
        for c in data.pool.values():
            f.write(json.dumps({"txt": c.text, "img_path": _image_path(c.image, out, f"{name}/cands", safe(c.did)),
                                "modality": c.modality, "did": c.did}) + "\n")
    with open(paths["queries"], "w", encoding="utf-8") as fq, open(paths["qrels"], "w", encoding="utf-8") as fr:
        for q in data.queries:
            t = q.task_id if q.task_id is not None else task_id
            fq.write(json.dumps({"qid": q.qid, "query_txt": q.text,
                                 "query_img_path": _image_path(q.image, out, f"{name}/queries", safe(q.qid)),
                                 "query_modality": q.modality, "query_src_content": None,
                                 "pos_cand_list": q.positives, "neg_cand_list": q.negatives, "task_id": t}) + "\n")
            for d in (data.qrels.get(q.qid) or {p: 1 for p in q.positives}):
                r = (data.qrels.get(q.qid) or {}).get(d, 1)
                fr.write(f"{q.qid} 0 {d} {r} {t}\n")
    return paths


__all__ = ["Candidate", "MODALITIES", "RetrievalQuery", "RetrievalSet", "candidate_from_record", "load_mbeir",
           "load_mbeir_pool", "load_mbeir_queries", "load_qrels", "qrel_from_line", "query_from_record", "write_mbeir"]
