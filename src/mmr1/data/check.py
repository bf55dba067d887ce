"""`mmr1 data check`: find every unusable record before a training run trips on one."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import DataError
from .loaders import load_samples
from .schema import answer_error


@dataclass
class CheckReport:
    path: str
    n_records: int = 0
    n_ok: int = 0
    formats: dict[str, int] = field(default_factory=dict)  # records per detected format
    errors: list[DataError] = field(default_factory=list)  # one per problem, in file order
    notes: list[str] = field(default_factory=list)  # what could not be checked

    @property
    def ok(self) -> bool:
        return not self.errors and self.n_records > 0

    def lines(self) -> list[str]:
        """One line per problem ("file:row field 'x': what is wrong"), then a summary."""
        out = [str(e) for e in self.errors] + [f"note: {n}" for n in self.notes]
        if self.n_records == 0 and not self.errors:
            out.append(f"{self.path}: no records")
        fmts = ", ".join(f"{k}={v}" for k, v in sorted(self.formats.items())) or "none"
        n_bad = self.n_records - self.n_ok
        verdict = "OK" if self.ok else "FAILED"
        out.append(f"{self.path}: {verdict}: {self.n_records} records, {self.n_ok} ok, {n_bad} bad "
                   f"(formats: {fmts})")
        return out


def check_dataset(path: str | Path, format: str = "auto", image_root: str | Path | None = None) -> CheckReport:
    """Parse every record and decode every image; report all problems, never raise on data.

    A problem with the file as a whole (missing, unreadable, unknown type) is reported as
    the single error of an empty report.
    """
    if format == "mbeir" or (format == "auto" and mbeir_kind(path) is not None):
        return check_mbeir([path], image_root=image_root)
    report = CheckReport(path=str(path))
    try:
        result = load_samples(path, format=format, on_error="skip", image_root=image_root, verify_images=True)
    except DataError as e:
        report.errors.append(e)
        return report
    report.formats, report.errors = result.formats, result.errors
    no_answer = [e for e in map(answer_error, result.samples) if e is not None]  # scored wrong, silently
    files = {f: i for i, f in enumerate(dict.fromkeys(str(e.file) for e in report.errors + no_answer))}
    report.errors = sorted(report.errors + no_answer,
                           key=lambda e: (files[str(e.file)], int(e.row) if str(e.row).isdigit() else 0))
    report.n_records, report.n_ok = result.n_records, len(result.samples) - len(no_answer)
    return report


# --- M-BEIR: queries, candidate pools and qrels, and the references between them ------------------

MBEIR_KINDS = ("queries", "pool", "qrels")


def mbeir_kind(path: str | Path) -> str | None:
    """"queries", "pool" or "qrels" for an M-BEIR file (judged by its first record), else None."""
    path = Path(path)
    if not path.is_file():
        return None
    try:
        with open(path, encoding="utf-8") as f:
            first = next((line for line in f if line.strip()), "")
    except (OSError, UnicodeDecodeError):
        return None
    if path.suffix == ".txt":
        return "qrels" if len(first.split()) in (4, 5) else None
    if path.suffix != ".jsonl":
        return None
    try:
        rec = json.loads(first)
    except ValueError:
        return None
    if isinstance(rec, dict) and "qid" in rec and "query_modality" in rec:
        return "queries"
    if isinstance(rec, dict) and "did" in rec and "modality" in rec:
        return "pool"
    return None


def _lines(path: Path):
    """(row, text) of every non-blank line."""
    with open(path, encoding="utf-8", errors="replace") as f:
        for n, line in enumerate(f, 1):
            if line.strip():
                yield n, line


def _image_error(rel: str, file: Path, row: int, field: str, image_root, roots: dict) -> DataError | None:
    """Decode an M-BEIR image path (relative to the M-BEIR root: `image_root`, else the nearest folder above
    the file that holds it); the DataError when it does not decode."""
    from .schema import load_image

    if image_root is None:
        root = roots.get(file)
        if root is None or not (root / rel).exists():
            root = next((a for a in file.parents if (a / rel).exists()), None)
            if root is None:
                return DataError(f"image file not found: {rel} (looked in the folders above {file}; "
                                 "give --image-root, the M-BEIR root)", file=str(file), row=row, field=field)
            roots[file] = root
    else:
        root = Path(image_root)
    try:
        load_image(rel, source=f"{file}:{row}", field=field, root=root)
    except DataError as e:
        return e
    return None


def check_mbeir(paths, image_root: str | Path | None = None) -> CheckReport:
    """Check M-BEIR query, pool and qrels files together: every record parses (`retrieval.data`'s own parsers),
    ids are unique, images decode, and every reference resolves: a query's positive/negative candidates and a
    qrel's candidate must be in the pool(s), a qrel's query in the query file(s) (when those files are given)."""
    from ..retrieval.data import (
        candidate_from_record,
        qrel_from_line,
        query_from_record,
    )

    paths = [Path(p) for p in paths]
    report = CheckReport(path=", ".join(str(p) for p in paths))
    kinds: dict[str, list[Path]] = {k: [] for k in MBEIR_KINDS}
    for p in paths:
        kind = mbeir_kind(p)
        if kind is None:
            reason = "no such file" if not p.is_file() else \
                "not an M-BEIR file (expected query JSONL with qid/query_modality, pool JSONL with did/modality, " \
                "or a qrels .txt of 'qid 0 did relevance task_id' lines)"
            report.errors.append(DataError(reason, file=str(p)))
            continue
        kinds[kind].append(p)
    roots: dict = {}
    dids: set[str] = set()
    qids: set[str] = set()
    pool_names = ", ".join(str(p) for p in kinds["pool"])

    def record(kind: str, file: Path, row: int, parse) -> None:
        report.n_records += 1
        errors = []
        try:
            errors = parse(file, row)
        except DataError as e:
            errors = [e]
        report.errors.extend(errors)
        report.n_ok += not errors
        report.formats[f"mbeir-{kind}"] = report.formats.get(f"mbeir-{kind}", 0) + 1

    def parse_json(line: str, file: Path, row: int) -> dict:
        try:
            rec = json.loads(line)
        except ValueError as e:
            raise DataError(f"malformed JSON line: {e}", file=str(file), row=row) from None
        if not isinstance(rec, dict):
            raise DataError(f"expected a JSON object, got {type(rec).__name__}", file=str(file), row=row)
        return rec

    for file in kinds["pool"]:
        for row, line in _lines(file):
            def pool_line(file, row, line=line):
                c = candidate_from_record(parse_json(line, file, row), {"file": str(file), "row": row})
                if c.did in dids:
                    return [DataError(f"duplicate did {c.did!r}", file=str(file), row=row, field="did")]
                dids.add(c.did)
                bad = c.image and _image_error(c.image, file, row, "img_path", image_root, roots)
                return [bad] if bad else []
            record("pool", file, row, pool_line)
    for file in kinds["queries"]:
        for row, line in _lines(file):
            def query_line(file, row, line=line):
                q = query_from_record(parse_json(line, file, row), {"file": str(file), "row": row})
                errs = []
                if q.qid in qids:
                    errs.append(DataError(f"duplicate qid {q.qid!r}", file=str(file), row=row, field="qid"))
                qids.add(q.qid)
                if kinds["pool"]:
                    for fld, ds in (("pos_cand_list", q.positives), ("neg_cand_list", q.negatives)):
                        errs += [DataError(f"candidate {d!r} is not in the pool ({pool_names})", file=str(file),
                                           row=row, field=fld) for d in ds if d not in dids]
                bad = q.image and _image_error(q.image, file, row, "query_img_path", image_root, roots)
                return errs + ([bad] if bad else [])
            record("queries", file, row, query_line)
    for file in kinds["qrels"]:
        for row, line in _lines(file):
            def qrel_line(file, row, line=line):
                qid, did, _ = qrel_from_line(line, {"file": str(file), "row": row})
                errs = []
                if kinds["queries"] and qid not in qids:
                    errs.append(DataError(f"query {qid!r} is not in the query file(s)", file=str(file), row=row,
                                          field="qid"))
                if kinds["pool"] and did not in dids:
                    errs.append(DataError(f"candidate {did!r} is not in the pool ({pool_names})", file=str(file),
                                          row=row, field="did"))
                return errs
            record("qrels", file, row, qrel_line)
    if not kinds["pool"] and (kinds["queries"] or kinds["qrels"]):
        report.notes.append("no candidate pool given: candidate references not checked")
    return report
