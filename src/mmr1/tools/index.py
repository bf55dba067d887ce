"""A local multimodal search index: the offline backend of MMSearch-R1's tools (METHODS §4).

A corpus is a sequence of records ``{"id", "image", "title", "text"}`` (dicts or `Record`): the image
is a path, a PIL image, raw bytes, a ``{"bytes"|"path"}`` dict (Hugging Face datasets) or None (a
text-only page). `build_index(records, out_dir, embedder)` writes a self-contained directory::

    meta.json         format version, embedder spec, counts, BM25 parameters, skipped records
    records.jsonl     one line per kept record: id, title, text, thumb (relative path or null)
    thumbs/           a thumbnail per record with an image (JPEG, longest side `thumb_size`)
    image.faiss       inner-product FAISS index over L2-normalised image embeddings (= cosine)
    image_rows.npy    FAISS row -> record row
    bm25/             Okapi BM25 (bm25s, Lucene's variant, k1=1.5, b=0.75): its JSON vocabulary and parameters
                      and .npy score matrix (no pickles)
    text.faiss        dense text embeddings, only when the embedder can embed text

The build is resumable and atomic: it works in ``<out_dir>.partial/``, committing chunks of
`chunk_size` records as it goes (a rerun with the same records and settings reuses every committed
chunk), and renames the finished directory to `out_dir` at the end, so `out_dir` is either absent,
the old index, or the complete new one.

A bad record raises `DataError` naming its id, position and field (``on_error="raise"``), or is
skipped and counted (``on_error="skip"``; the reasons of the first few land in meta.json).

`SearchIndex.load(out_dir)` answers `search_image(img, k)` and `search_text(query, k, mode)` with
ranked `Hit`s; mode "bm25", "dense" (the embedder's text vectors) or "hybrid" (reciprocal rank fusion
of the two, k=60).
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import os
import shutil
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence

import numpy as np

from ..errors import DataError, MMR1Error
from .embedders import can_embed_text, embedder_from_spec, make_embedder, tokenize

log = logging.getLogger(__name__)

FORMAT_VERSION = 2  # 2: BM25 by bm25s (bm25/); a version-1 index says to rebuild it
MAX_SKIP_REASONS = 20


class SearchIndexError(MMR1Error):
    """An index directory is missing, incomplete, or was built differently from what is asked."""


# ------------------------------------------------------------------------------------------- BM25


class BM25:
    """Okapi BM25 over lowercase word tokens, by `bm25s` (Lucene's variant, k1=1.5, b=0.75 by default):

    score(D, Q) = sum over query tokens q (repeats count) of idf(q) * tf(q, D) / (tf(q, D) + k1 * (1 - b + b *
    |D| / avgdl)) with idf(q) = ln(1 + (N - n(q) + 0.5) / (n(q) + 0.5)), N documents, n(q) of them holding q.
    bm25s precomputes every (term, document) score into a sparse matrix, so a query is a few row sums.
    Tokens are this module's `tokenize` (the same for documents and queries); query words the corpus never
    saw score nothing.
    """

    def __init__(self, retriever, n_docs: int, k1: float = 1.5, b: float = 0.75):
        self._bm, self.n_docs, self.k1, self.b = retriever, int(n_docs), float(k1), float(b)
        self.vocab: dict[str, int] = dict(retriever.vocab_dict) if retriever is not None else {}

    @classmethod
    def fit(cls, docs: Iterable[Sequence[str]], k1: float = 1.5, b: float = 0.75) -> "BM25":
        import bm25s

        docs = [list(d) for d in docs]
        if not docs:
            return cls(None, 0, k1, b)
        bm = bm25s.BM25(k1=k1, b=b, method="lucene")
        bm.index(docs, show_progress=False)
        return cls(bm, len(docs), k1, b)

    def scores(self, query: str | Sequence[str]) -> np.ndarray:
        """BM25 score of every document for `query` (a string or its tokens)."""
        toks = tokenize(query) if isinstance(query, str) else list(query)
        ids = [self.vocab[t] for t in toks if t in self.vocab and t != ""]
        if not ids or self._bm is None:
            return np.zeros(self.n_docs, dtype=np.float64)
        return np.asarray(self._bm.get_scores([int(i) for i in ids]), dtype=np.float64)

    def search(self, query: str | Sequence[str], k: int) -> list[tuple[int, float]]:
        """The top-k (document, score) pairs with a positive score, best first (ties: lower document first)."""
        s = self.scores(query)
        pos = np.flatnonzero(s > 0)
        if not len(pos) or k <= 0:
            return []
        order = pos[np.lexsort((pos, -s[pos]))][:k]
        return [(int(d), float(s[d])) for d in order]

    def save(self, directory: Path) -> None:
        """bm25s's own files (JSON params and vocabulary, .npy score matrix, no pickles) under `bm25/`."""
        out = Path(directory) / "bm25"
        out.mkdir(parents=True, exist_ok=True)
        (out / "mmr1.json").write_text(json.dumps({"n_docs": self.n_docs, "k1": self.k1, "b": self.b}))
        if self._bm is not None:
            self._bm.save(str(out), allow_pickle=False)

    @classmethod
    def load(cls, directory: Path) -> "BM25":
        import bm25s

        out = Path(directory) / "bm25"
        info = json.loads((out / "mmr1.json").read_text(encoding="utf-8"))
        bm = bm25s.BM25.load(str(out), allow_pickle=False) if info["n_docs"] else None
        return cls(bm, info["n_docs"], info["k1"], info["b"])


# ----------------------------------------------------------------------------------------- records


@dataclass
class Record:
    id: str
    title: str
    text: str
    image: Any = None  # a path, PIL image, bytes, {"bytes"|"path"} dict, or None


@dataclass
class Hit:
    id: str
    title: str
    text: str
    thumbnail: str | None  # absolute path of the thumbnail in the index directory, or None
    score: float
    rank: int  # 1-based

    def image(self):
        """The thumbnail as a PIL image (RGB), or None."""
        if self.thumbnail is None:
            return None
        from PIL import Image

        with Image.open(self.thumbnail) as im:
            return im.convert("RGB")


@dataclass
class BuildReport:
    out_dir: str
    records: int  # kept
    images: int  # kept records with an image
    skipped: int
    reused_chunks: int  # committed chunks a resumed build did not redo
    dense_text: bool
    seconds: float
    skip_reasons: list = field(default_factory=list)


def _field(rec: Any, name: str) -> Any:
    if isinstance(rec, dict):
        return rec.get(name)
    return getattr(rec, name, None)


def _check(rec: Any, pos: int, source: str | None) -> tuple[str, str, str, Any, int | None]:
    """(id, title, text, image value, JSONL line) of a record, or DataError naming the record and the field."""
    if not isinstance(rec, (dict, Record)):
        raise DataError(f"record #{pos}: expected a dict or Record, got {type(rec).__name__}", file=source)
    row = rec.get("_line") if isinstance(rec, dict) else None  # the JSONL line, from read_records
    rid = _field(rec, "id")
    if rid is None or (isinstance(rid, str) and not rid.strip()) or not isinstance(rid, (str, int)):
        raise DataError(f"record #{pos}: missing or empty id", file=source, row=row, field="id")
    rid = str(rid)
    vals = []
    for name in ("title", "text"):
        v = _field(rec, name)
        if not isinstance(v, str) or not v.strip():
            what = "missing" if v is None else ("empty" if isinstance(v, str) else f"not a string ({type(v).__name__})")
            raise DataError(f"record {rid!r} (#{pos}): {name} is {what}", file=source, row=row, field=name)
        vals.append(v.strip())
    return rid, vals[0], vals[1], _field(rec, "image"), row


def load_image(value: Any, base_dir: Path | None = None):
    """A record's image value (path, bytes, PIL image or HF {"bytes", "path"} dict) as an RGB PIL image, None
    staying None: the data loaders' `image_ref` + `load_image`, which raise a DataError if it is unreadable."""
    from ..data.formats import image_ref
    from ..data.schema import load_image as decode

    if value is None:
        return None
    if isinstance(value, os.PathLike):
        value = Path(value)
    return decode(image_ref(value, "image"), root=base_dir)


def read_records(path: str | Path) -> Iterable[dict]:
    """Records from a JSONL file (one JSON object per line; relative image paths are relative to the file)."""
    path = Path(path)
    if not path.is_file():
        raise DataError("no such file", file=str(path))
    with open(path, encoding="utf-8") as f:
        for i, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                rec = json.loads(line)
            except json.JSONDecodeError as e:
                raise DataError(f"not valid JSON: {e}", file=str(path), row=i) from None
            if isinstance(rec, dict):
                if isinstance(rec.get("image"), str):
                    p = Path(rec["image"]).expanduser()
                    rec["image"] = str(p if p.is_absolute() else path.parent / p)
                rec["_line"] = i
            yield rec


# ------------------------------------------------------------------------------------------- build


def _atomic_write(path: Path, data: bytes) -> None:
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    tmp.write_bytes(data)
    os.replace(tmp, path)


def _chunks(it: Iterable, n: int):
    buf = []
    for x in it:
        buf.append(x)
        if len(buf) == n:
            yield buf
            buf = []
    if buf:
        yield buf


def _digest(obj: Any) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:16]


def _fingerprint(rec: Any) -> str:
    """What a committed chunk must match to be reused: the record's fields (images by path or content)."""
    img = _field(rec, "image")
    if isinstance(img, (str, os.PathLike)):  # a path: its size and mtime stand for its content
        try:
            st = os.stat(img)
            img = f"{img}|{st.st_size}|{st.st_mtime_ns}"
        except OSError:
            img = str(img)
    elif img is not None:
        try:
            from PIL import Image

            if isinstance(img, Image.Image):
                img = hashlib.sha256(img.tobytes()).hexdigest()
            elif isinstance(img, (bytes, bytearray)):
                img = hashlib.sha256(img).hexdigest()
            elif isinstance(img, dict):
                img = hashlib.sha256(img["bytes"]).hexdigest() if img.get("bytes") is not None else img.get("path")
        except Exception:  # noqa: BLE001 - an odd value: the check step reports it
            img = repr(type(img))
    return _digest([_field(rec, "id"), _field(rec, "title"), _field(rec, "text"), str(img)])


def build_index(records: Iterable[Any], out_dir: str | Path, embedder: Any = None, *, on_error: str = "raise",
                chunk_size: int = 512, thumb_size: int = 256, dense_text: bool | None = None,
                overwrite: bool = False, source: str | None = None, base_dir: str | Path | None = None,
                progress: Callable[[int], None] | None = None) -> BuildReport:
    """Build a search index over `records` into `out_dir` (see the module doc); returns a `BuildReport`.

    embedder: an embedder object (default: the weight-free `ColorGridEmbedder`). dense_text: embed the
    page texts too (default: when the embedder can). on_error: "raise" or "skip". source: a file name
    for error messages; base_dir: where relative image paths start. progress(n): called per chunk.
    """
    if on_error not in ("raise", "skip"):
        raise ValueError(f"on_error must be 'raise' or 'skip', got {on_error!r}")
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")
    t0 = time.monotonic()
    embedder = embedder if embedder is not None else make_embedder()
    if dense_text is None:
        dense_text = can_embed_text(embedder)
    elif dense_text and not can_embed_text(embedder):
        raise ValueError(f"dense_text=True but the {embedder.name} embedder cannot embed text")
    out = Path(out_dir)
    if out.exists() and not overwrite:
        raise SearchIndexError(f"{out} already exists (pass overwrite=True to replace it)")
    base = Path(base_dir) if base_dir is not None else None
    work = out.with_name(out.name + ".partial")
    settings = {"format": FORMAT_VERSION, "embedder": embedder.spec(), "chunk_size": chunk_size,
                "thumb_size": thumb_size, "dense_text": bool(dense_text), "on_error": on_error}
    marker = work / "build.json"
    if work.exists():
        try:
            same = json.loads(marker.read_text()) == json.loads(json.dumps(settings))
        except (OSError, ValueError):
            same = False
        if not same:
            log.info("discarding %s: built with other settings", work)
            shutil.rmtree(work)
    (work / "chunks").mkdir(parents=True, exist_ok=True)
    (work / "thumbs").mkdir(exist_ok=True)
    _atomic_write(marker, json.dumps(settings).encode())

    seen: set[str] = set()
    reused = 0
    n_chunks = 0
    for c, chunk in enumerate(_chunks(records, chunk_size)):
        n_chunks = c + 1
        start = c * chunk_size
        fps = [_fingerprint(r) for r in chunk]
        meta_path = work / "chunks" / f"{c:06d}.json"
        old = None
        if meta_path.exists():
            try:
                old = json.loads(meta_path.read_text())
            except ValueError:
                old = None
        if old is not None and old.get("fingerprints") == fps and (work / "chunks" / f"{c:06d}.npz").exists():
            reused += 1
            seen.update(r["id"] for r in old["records"])
            if progress:
                progress(start + len(chunk))
            continue
        _build_chunk(chunk, start, c, fps, work, embedder, dense_text, thumb_size, on_error, source, base, seen)
        if progress:
            progress(start + len(chunk))
    for stale in sorted((work / "chunks").glob("*.json")):  # chunks of a longer earlier run
        if int(stale.stem) >= n_chunks:
            stale.unlink()
            (work / "chunks" / f"{stale.stem}.npz").unlink(missing_ok=True)

    report = _finalize(work, out, settings, embedder, dense_text, n_chunks, overwrite)
    report.reused_chunks, report.seconds = reused, time.monotonic() - t0
    return report


def _build_chunk(chunk, start, c, fps, work, embedder, dense_text, thumb_size, on_error, source, base, seen):
    from PIL import Image

    kept, images, skipped = [], [], []
    for j, rec in enumerate(chunk):
        pos = start + j
        try:
            rid, title, text, value, row = _check(rec, pos, source)
            if rid in seen:
                raise DataError(f"record {rid!r} (#{pos}): duplicate id", file=source, row=row, field="id")
            try:
                img = load_image(value, base)
            except (DataError, OSError, ValueError, SyntaxError, Image.DecompressionBombError) as e:
                what = f" {str(value)!r}" if isinstance(value, (str, os.PathLike)) else ""
                raise DataError(f"record {rid!r} (#{pos}): cannot read image{what}: {type(e).__name__}: {e}",
                                file=source, row=row, field="image") from None
        except DataError as e:
            if on_error == "raise":
                raise
            skipped.append(str(e))
            continue
        seen.add(rid)
        thumb = None
        if img is not None:
            t = img.copy()
            t.thumbnail((thumb_size, thumb_size), Image.BICUBIC)
            thumb = f"thumbs/{pos:08d}.jpg"
            buf = io.BytesIO()
            t.save(buf, format="JPEG", quality=90)
            _atomic_write(work / thumb, buf.getvalue())
            images.append(img)
        kept.append({"id": rid, "title": title, "text": text, "thumb": thumb})
    emb = embedder.embed_images(images) if images else np.zeros((0, 0), dtype=np.float32)
    arrays = {"image": np.asarray(emb, dtype=np.float32)}
    if dense_text:
        arrays["text"] = np.asarray(embedder.embed_texts([f"{r['title']}\n{r['text']}" for r in kept]) if kept
                                    else np.zeros((0, 0)), dtype=np.float32)
    buf = io.BytesIO()
    np.savez(buf, **arrays)
    _atomic_write(work / "chunks" / f"{c:06d}.npz", buf.getvalue())
    # the JSON is written last: its presence commits the chunk
    _atomic_write(work / "chunks" / f"{c:06d}.json",
                  json.dumps({"fingerprints": fps, "records": kept, "skipped": skipped}, ensure_ascii=False).encode())


def _stack(parts: list[np.ndarray]) -> np.ndarray:
    parts = [p for p in parts if p.size]
    return np.concatenate(parts).astype(np.float32) if parts else np.zeros((0, 0), dtype=np.float32)


def _finalize(work: Path, out: Path, settings: dict, embedder, dense_text: bool, n_chunks: int,
              overwrite: bool) -> BuildReport:
    import faiss

    records, img_parts, txt_parts, image_rows, skipped = [], [], [], [], []
    for c in range(n_chunks):
        meta = json.loads((work / "chunks" / f"{c:06d}.json").read_text(encoding="utf-8"))
        z = np.load(work / "chunks" / f"{c:06d}.npz")
        for r in meta["records"]:
            if r["thumb"] is not None:
                image_rows.append(len(records))
            records.append(r)
        img_parts.append(z["image"])
        if dense_text:
            txt_parts.append(z["text"])
        skipped.extend(meta["skipped"])
    ids = [r["id"] for r in records]
    if len(set(ids)) != len(ids):  # possible only across a resumed build whose earlier chunks changed
        dup = next(i for i, n in Counter(ids).items() if n > 1)
        raise SearchIndexError(f"duplicate record id {dup!r} across chunks; delete {work} and rebuild")
    img = _stack(img_parts)
    if len(img) != len(image_rows):
        raise SearchIndexError(f"{work}: {len(img)} image embeddings for {len(image_rows)} images; delete it and rebuild")
    if len(records) == 0:
        raise SearchIndexError("no usable records: the index would be empty" +
                               (f" ({len(skipped)} skipped; first: {skipped[0]})" if skipped else ""))
    dim = int(img.shape[1]) if img.size else int(getattr(embedder, "dim", 0) or 0)
    index = faiss.IndexFlatIP(dim if dim else 1)
    if img.size:
        index.add(np.ascontiguousarray(img))
    faiss.write_index(index, str(work / "image.faiss"))
    np.save(work / "image_rows.npy", np.array(image_rows, dtype=np.int64))
    text_dim = 0
    if dense_text:
        txt = _stack(txt_parts)
        text_dim = int(txt.shape[1])
        tindex = faiss.IndexFlatIP(text_dim)
        tindex.add(np.ascontiguousarray(txt))
        faiss.write_index(tindex, str(work / "text.faiss"))
    bm25 = BM25.fit(tokenize(f"{r['title']}\n{r['text']}") for r in records)
    bm25.save(work)
    with open(work / "records.jsonl.tmp", "w", encoding="utf-8") as f:
        for r in records:
            f.write(json.dumps(r, ensure_ascii=False) + "\n")
    os.replace(work / "records.jsonl.tmp", work / "records.jsonl")
    meta = {**settings, "records": len(records), "images": len(image_rows), "image_dim": dim,
            "text_dim": text_dim, "bm25": {"k1": bm25.k1, "b": bm25.b}, "skipped": len(skipped),
            "skip_reasons": skipped[:MAX_SKIP_REASONS], "created": time.strftime("%Y-%m-%dT%H:%M:%S")}
    (work / "meta.json").write_text(json.dumps(meta, indent=1, ensure_ascii=False), encoding="utf-8")
    shutil.rmtree(work / "chunks")
    (work / "build.json").unlink()
    used = {r["thumb"] for r in records if r["thumb"]}
    for t in (work / "thumbs").iterdir():  # thumbnails of records a resumed build no longer keeps
        if f"thumbs/{t.name}" not in used:
            t.unlink()
    # swap in: out is the old index or the new one at every moment except between the two renames
    old = None
    if out.exists():
        if not overwrite:
            raise SearchIndexError(f"{out} appeared during the build; the finished index is in {work}")
        old = out.with_name(f".{out.name}.old{os.getpid()}")
        os.replace(out, old)
    os.replace(work, out)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)
    return BuildReport(str(out), len(records), len(image_rows), len(skipped), 0, bool(dense_text), 0.0,
                       skipped[:MAX_SKIP_REASONS])


def build_index_from_jsonl(path: str | Path, out_dir: str | Path, embedder: str | Any = None, **kw) -> BuildReport:
    """`build_index` over a JSONL corpus file; `embedder` may be a name for `make_embedder` ("builtin" or a
    local CLIP/SigLIP directory). The entry point of `mmr1 search build-index`."""
    emb = make_embedder(embedder) if embedder is None or isinstance(embedder, str) else embedder
    return build_index(read_records(path), out_dir, emb, source=str(path), **kw)


# -------------------------------------------------------------------------------------------- load


class SearchIndex:
    """A built index, loaded for querying (thread-safe for concurrent searches)."""

    def __init__(self, path: Path, meta: dict, records: list[dict], image_index, image_rows: np.ndarray,
                 bm25: BM25, text_index, embedder):
        self.path, self.meta, self.records = path, meta, records
        self.image_index, self.image_rows, self.bm25, self.text_index = image_index, image_rows, bm25, text_index
        self.embedder = embedder
        self._by_id = {r["id"]: i for i, r in enumerate(records)}

    @classmethod
    def load(cls, path: str | Path, embedder: Any = None) -> "SearchIndex":
        """Load `path`; the embedder defaults to the one its meta.json describes (pass one to override,
        e.g. a CLIP embedder whose checkpoint moved; it must give vectors of the same size)."""
        import faiss

        path = Path(path)
        if not (path / "meta.json").is_file():
            partial = path.with_name(path.name + ".partial")
            hint = f" (an unfinished build is in {partial}; rerun the build to resume it)" if partial.exists() else ""
            raise SearchIndexError(f"{path} is not a search index: no meta.json{hint}")
        meta = json.loads((path / "meta.json").read_text(encoding="utf-8"))
        if meta.get("format") != FORMAT_VERSION:
            raise SearchIndexError(f"{path}: index format {meta.get('format')} is not {FORMAT_VERSION}; rebuild it")
        try:
            records = [json.loads(line) for line in open(path / "records.jsonl", encoding="utf-8") if line.strip()]
            image_index = faiss.read_index(str(path / "image.faiss"))
            image_rows = np.load(path / "image_rows.npy")
            bm25 = BM25.load(path)
            text_index = faiss.read_index(str(path / "text.faiss")) if meta.get("dense_text") else None
        except (OSError, RuntimeError, ValueError) as e:
            raise SearchIndexError(f"{path}: incomplete or corrupt index ({type(e).__name__}: {e}); rebuild it") from None
        if len(records) != meta["records"] or image_index.ntotal != len(image_rows):
            raise SearchIndexError(f"{path}: files disagree with meta.json; rebuild it")
        if embedder is None:
            embedder = embedder_from_spec(meta["embedder"])
        return cls(path, meta, records, image_index, image_rows, bm25, text_index, embedder)

    def __len__(self) -> int:
        return len(self.records)

    def get(self, rid: str) -> dict:
        return self.records[self._by_id[rid]]

    def _hit(self, row: int, score: float, rank: int) -> Hit:
        r = self.records[row]
        thumb = str(self.path / r["thumb"]) if r.get("thumb") else None
        return Hit(r["id"], r["title"], r["text"], thumb, float(score), rank)

    @staticmethod
    def _query_vec(v: np.ndarray, dim: int, what: str) -> np.ndarray:
        v = np.ascontiguousarray(np.asarray(v, dtype=np.float32).reshape(1, -1))
        if v.shape[1] != dim:
            raise SearchIndexError(f"the query embedder gives {what} vectors of size {v.shape[1]} but the index holds "
                                   f"size {dim}: query with the embedder the index was built with")
        return v

    def search_image(self, image, k: int = 5) -> list[Hit]:
        """The k records whose images are most similar (cosine) to `image` (a PIL image), best first."""
        if k <= 0 or self.image_index.ntotal == 0:
            return []
        q = self._query_vec(self.embedder.embed_images([image.convert("RGB")]), self.image_index.d, "image")
        scores, rows = self.image_index.search(q, min(k, self.image_index.ntotal))
        return [self._hit(int(self.image_rows[r]), s, i + 1)
                for i, (s, r) in enumerate(zip(scores[0], rows[0])) if r >= 0]

    def _dense(self, query: str, k: int) -> list[tuple[int, float]]:
        if self.text_index is None:
            raise SearchIndexError(f"{self.path} has no dense text embeddings (built with an embedder that cannot "
                                   "embed text, or dense_text=False); use mode='bm25'")
        q = self._query_vec(self.embedder.embed_texts([query]), self.text_index.d, "text")
        scores, rows = self.text_index.search(q, min(k, self.text_index.ntotal))
        return [(int(r), float(s)) for s, r in zip(scores[0], rows[0]) if r >= 0]

    def search_text(self, query: str, k: int = 5, mode: str = "bm25", *, rrf_k: int = 60) -> list[Hit]:
        """The k pages most relevant to `query`, best first. mode: "bm25", "dense" or "hybrid" (reciprocal
        rank fusion of both: score = sum of 1 / (rrf_k + rank))."""
        if mode not in ("bm25", "dense", "hybrid"):
            raise ValueError(f"mode must be 'bm25', 'dense' or 'hybrid', got {mode!r}")
        if k <= 0 or not query.strip():
            return []
        if mode == "bm25":
            ranked = self.bm25.search(query, k)
        elif mode == "dense":
            ranked = self._dense(query, k)
        else:
            depth = max(4 * k, 50)
            fused: dict[int, float] = {}
            for lst in (self.bm25.search(query, depth), self._dense(query, depth)):
                for rank, (row, _) in enumerate(lst, 1):
                    fused[row] = fused.get(row, 0.0) + 1.0 / (rrf_k + rank)
            ranked = sorted(fused.items(), key=lambda x: (-x[1], x[0]))[:k]
        return [self._hit(row, s, i + 1) for i, (row, s) in enumerate(ranked)]


__all__ = ["BM25", "BuildReport", "Hit", "Record", "SearchIndex", "SearchIndexError", "build_index",
           "build_index_from_jsonl", "load_image", "read_records"]
