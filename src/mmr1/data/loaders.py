"""Read datasets in the methods' public formats into `Sample`s, and write the native JSONL.

Images stay as references (path, bytes or PIL image) until `Sample.load_images()` so that
loading a large dataset is cheap; `verify_images=True` (or `mmr1 data check`) decodes them.
"""

from __future__ import annotations

import io
import json
import os
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

from PIL import Image

from ..errors import DataError
from .formats import FORMATS, detect_format, parse_record
from .schema import ImageRef, Sample, load_image

JSON_LIST_KEYS = ("data", "results", "samples", "records", "rows")  # R1-V eval logs: {"results": [...]}
SUFFIXES = (".jsonl", ".json", ".parquet", ".pq")


@dataclass
class LoadResult:
    samples: list[Sample]
    errors: list[DataError] = field(default_factory=list)  # skipped records (one per bad image)
    n_records: int = 0  # records read, good and bad
    formats: dict[str, int] = field(default_factory=dict)  # records per detected format

    @property
    def n_bad(self) -> int:
        return self.n_records - len(self.samples)


# --- reading records -----------------------------------------------------------------

def iter_records(path: str | Path) -> Iterator[tuple[str, int, dict | DataError]]:
    """(file label, 1-based row, record) for every record; a row that cannot be parsed
    (malformed JSON line) comes as a DataError so the caller can skip it and go on."""
    path = Path(path)
    if path.is_dir():
        yield from _iter_hf_dir(path)
    elif not path.exists():
        raise DataError("no such file or directory", file=str(path))
    elif path.suffix == ".jsonl":
        yield from _iter_jsonl(path)
    elif path.suffix == ".json":
        yield from _iter_json(path)
    elif path.suffix in (".parquet", ".pq"):
        yield from _iter_parquet(path)
    else:
        raise DataError(f"unsupported file type '{path.suffix}'; expected {', '.join(SUFFIXES)} "
                        "or a directory written by datasets' save_to_disk", file=str(path))


def _iter_jsonl(path: Path):
    with open(path, "rb") as f:
        for row, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                yield str(path), row, json.loads(line)
            except ValueError as e:  # JSONDecodeError and UnicodeDecodeError
                yield str(path), row, DataError(f"malformed JSON line: {e}", file=str(path), row=row)


def _iter_json(path: Path):
    try:
        data = json.loads(path.read_bytes())
    except ValueError as e:
        raise DataError(f"malformed JSON: {e}", file=str(path)) from None
    if isinstance(data, dict) and data and all(isinstance(v, dict) for v in data.values()) \
            and not any(isinstance(data.get(k), list) for k in JSON_LIST_KEYS):
        yield from _iter_keyed(path, data)
        return
    if isinstance(data, dict):
        key = next((k for k in JSON_LIST_KEYS if isinstance(data.get(k), list)), None)
        if key is None:
            raise DataError(f"expected a list of records or a dict with a list under one of {JSON_LIST_KEYS}, "
                            f"got a dict with keys {sorted(data)[:10]}", file=str(path))
        data = data[key]
    if not isinstance(data, list):
        raise DataError(f"expected a list of records, got {type(data).__name__}", file=str(path))
    for row, record in enumerate(data, 1):
        yield str(path), row, record


def _iter_keyed(path: Path, data: dict):
    """MathVista's official layout: one JSON object keyed by pid (testmini.json, test.json). Rows are labelled
    "pid N"; MathVista's `query.json` beside the file (pid -> query) fills in the prompts it keeps apart."""
    queries: dict = {}
    sidecar = path.with_name("query.json")
    if sidecar.is_file() and sidecar != path:
        try:
            queries = json.loads(sidecar.read_bytes())
        except ValueError as e:
            raise DataError(f"malformed JSON: {e} (MathVista's pid -> query file beside the data)",
                            file=str(sidecar)) from None
        if not isinstance(queries, dict):
            raise DataError(f"expected a JSON object of pid -> query, got {type(queries).__name__}",
                            file=str(sidecar))
    for key, record in data.items():
        label = f"pid {record.get('pid', key)}" if "pid" in record else f"key {key}"
        if "query" not in record and isinstance(queries.get(str(key)), str):
            record = {**record, "query": queries[str(key)]}
        yield str(path), label, record


def _iter_parquet(path: Path):
    import pyarrow.parquet as pq

    try:
        batches = pq.ParquetFile(path).iter_batches(batch_size=256)
        row = 0
        for batch in batches:
            for record in batch.to_pylist():
                row += 1
                yield str(path), row, record
    except (OSError, ValueError) as e:  # pyarrow's ArrowInvalid is a ValueError, ArrowIOError an OSError
        raise DataError(f"cannot read parquet: {e}", file=str(path)) from None


def _iter_hf_dir(path: Path):
    """A `save_to_disk` folder. Rows are read as Arrow so Image features stay undecoded
    {"bytes", "path"} dicts (decoding every image at load time would be slow)."""
    if not any((path / f).exists() for f in ("dataset_info.json", "state.json", "dataset_dict.json")):
        raise DataError("not a dataset directory (expected one written by datasets' save_to_disk)",
                        file=str(path))
    import datasets

    loaded = datasets.load_from_disk(str(path))
    splits = loaded.items() if isinstance(loaded, datasets.DatasetDict) else [(None, loaded)]
    for split, ds in splits:
        label = str(path / split) if split else str(path)
        row = 0
        for table in ds.with_format("arrow").iter(batch_size=256):
            for record in table.to_pylist():
                row += 1
                yield label, row, record


# --- records to samples --------------------------------------------------------------

def _at(e: DataError, file: str, row: int, relocate: bool = False) -> DataError:
    """The error located at file:row (parsers know only the field; load_image knows the
    row only as text, so its errors are relocated to keep `row` an int)."""
    return e if e.file and not relocate else DataError(e.reason, file=file, row=row, field=e.field)


def _resolve(ref: ImageRef, base: Path) -> ImageRef:
    if isinstance(ref, (str, Path)) and not Path(ref).is_absolute():
        joined = base / ref
        return str(joined) if isinstance(ref, str) else joined
    return ref


def image_errors(sample: Sample) -> list[DataError]:
    """Every image of the sample that does not decode (missing file, truncated, not an image)."""
    errors = []
    for i, ref in enumerate(sample.images):
        try:
            load_image(ref, source=sample.source, field=f"images[{i}]")
        except DataError as e:
            errors.append(e)
    return errors


def load_samples(path: str | Path, format: str = "auto", on_error: str = "raise", limit: int | None = None,
                 image_root: str | Path | None = None, verify_images: bool = False,
                 mathvista_prompt: str = "query") -> LoadResult:
    """Load every record of a .jsonl/.json/.parquet file or save_to_disk folder as a Sample.

    format: a name from `FORMATS` or "auto" (judged per record by its keys; a record that
    matches nothing is parsed as the file's first detected format, so a row missing a
    required key is reported by field name rather than as "unknown format").
    on_error: "raise" raises the first bad record's DataError; "skip" collects it in
    `errors` and goes on. limit: stop after that many good samples.
    Relative image paths resolve against `image_root`, else the data file's folder.
    mathvista_prompt: "query" or "question" (`from_mathvista`).
    """
    if format != "auto" and format not in FORMATS:
        raise DataError(f"unknown format {format!r}; known formats: auto, {', '.join(FORMATS)}")
    if on_error not in ("raise", "skip"):
        raise ValueError(f"on_error must be 'raise' or 'skip', got {on_error!r}")
    path = Path(path)
    base = Path(image_root) if image_root is not None else (path if path.is_dir() else path.parent)
    result = LoadResult(samples=[])
    counts: Counter = Counter()
    file_format = None if format == "auto" else format
    for file, row, record in iter_records(path):
        if limit is not None and len(result.samples) >= limit:
            break
        result.n_records += 1
        try:
            if isinstance(record, DataError):
                raise record
            fmt = format
            if fmt == "auto":
                try:
                    fmt = detect_format(record)
                except DataError:
                    if file_format is None or not isinstance(record, dict):
                        raise
                    fmt = file_format
            file_format = file_format or fmt
            counts[fmt] += 1
            _, sample = parse_record(record, fmt, mathvista_prompt=mathvista_prompt)
            sample.source = f"{file}:{row}"
            sample.id = sample.id or f"{Path(file).stem}-{row}"
            sample.images = [_resolve(ref, base) for ref in sample.images]
            bad = [_at(e, file, row, relocate=True) for e in image_errors(sample)] if verify_images else []
            if bad:
                if on_error == "raise":
                    raise bad[0]
                result.errors.extend(bad)
                continue
            result.samples.append(sample)
        except DataError as e:
            e = _at(e, file, row)
            if on_error == "raise":
                raise e from None
            result.errors.append(e)
    result.formats = dict(counts)
    return result


# --- writing -------------------------------------------------------------------------

_PNG_MODES = {"1", "L", "LA", "P", "RGB", "RGBA", "I", "I;16"}


def _write_png(ref: ImageRef, out: Path, source: str, field: str) -> None:
    if isinstance(ref, (bytes, bytearray)):
        try:
            img = Image.open(io.BytesIO(ref))
            img.load()
        except (OSError, ValueError, SyntaxError) as e:
            raise DataError(f"cannot decode bytes image: {e}", file=source or None, field=field) from None
    else:
        img = ref
    if img.mode not in _PNG_MODES:  # e.g. CMYK JPEGs; load_image converts to RGB anyway
        img = img.convert("RGBA" if "A" in img.mode.upper() else "RGB")
    out.parent.mkdir(parents=True, exist_ok=True)
    img.save(out, format="PNG")


def _relative(p: Path, start: Path) -> str:
    try:
        return Path(os.path.relpath(p.absolute(), start.absolute())).as_posix()
    except ValueError:  # another drive (Windows)
        return str(p.absolute())


def save_jsonl(samples: list[Sample], path: str | Path, image_dir: str | Path | None = None) -> Path:
    """Write samples in the native "mmr1" format, one JSON object a line.

    Path images are referenced (relative to the JSONL file); PIL/bytes images are written
    as PNG under `image_dir` (default `<stem>_images/` beside the file), so the file
    reloads with `load_samples` to the same messages, answers and pixels.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    image_dir = Path(image_dir) if image_dir is not None else path.with_name(f"{path.stem}_images")
    with open(path, "w", encoding="utf-8") as f:
        for n, s in enumerate(samples):
            refs = []
            for k, ref in enumerate(s.images):
                if isinstance(ref, (str, Path)):
                    refs.append(_relative(Path(ref), path.parent))
                else:
                    out = image_dir / f"{n:06d}_{k}.png"
                    _write_png(ref, out, s.source, f"images[{k}]")
                    refs.append(_relative(out, path.parent))
            record = {"id": s.id, "messages": s.messages, "images": refs, "answers": s.answers,
                      "choices": s.choices, "answer_type": s.answer_type, "precision": s.precision,
                      "category": s.category, "meta": s.meta}
            try:
                f.write(json.dumps(record, ensure_ascii=False) + "\n")
            except (TypeError, ValueError) as e:
                raise DataError(f"not JSON-serialisable: {e}", file=s.source or None) from None
    return path
