"""`mmr1 data check`: find every unusable record before a training run trips on one."""

from __future__ import annotations

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

    @property
    def ok(self) -> bool:
        return not self.errors and self.n_records > 0

    def lines(self) -> list[str]:
        """One line per problem ("file:row field 'x': what is wrong"), then a summary."""
        out = [str(e) for e in self.errors]
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
