"""Errors that carry enough context to be fixed from one line."""


class MMR1Error(Exception):
    """Base class: every error the user should see as one clean line."""


class ConfigError(MMR1Error):
    """A config key is unknown, mistyped or out of range."""


class DataError(MMR1Error):
    """A record is unusable. Names the file, row and field so it can be fixed."""

    def __init__(self, message: str, *, file: str | None = None, row: int | str | None = None,
                 field: str | None = None):
        self.file, self.row, self.field, self.reason = file, row, field, message
        where = ":".join(str(p) for p in (file, row) if p is not None)
        loc = f"{where} " if where else ""
        fld = f"field '{field}': " if field else ""
        super().__init__(f"{loc}{fld}{message}")


class ModelError(MMR1Error):
    """A checkpoint directory cannot be loaded as a supported VLM."""
