"""The one sample schema every loader produces and every trainer consumes."""

from __future__ import annotations

import io
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Union

from PIL import Image, UnidentifiedImageError

from ..errors import DataError

# An image as a record holds it: a file path, encoded bytes, or a decoded PIL image.
ImageRef = Union[str, Path, bytes, Image.Image]

# Images with more pixels than this are bad records (decompression bombs, or scans to shrink first); checked on
# the header, before anything is decoded. `data.max_image_pixels` sets it for a job, `--max-image-pixels` in serve.
DEFAULT_MAX_IMAGE_PIXELS = 50_000_000
_limits = {"pixels": DEFAULT_MAX_IMAGE_PIXELS}


def set_max_image_pixels(n: int) -> None:
    """The pixel bound `load_image` applies when its caller gives none."""
    if n < 1:
        raise ValueError(f"the image pixel bound must be >= 1, got {n}")
    _limits["pixels"] = int(n)


def max_image_pixels() -> int:
    return _limits["pixels"]


@dataclass
class Sample:
    """One example.

    `messages` is in the HF chat format: each message has a `role` and a `content`
    that is either a string or a list of `{"type": "image"}` / `{"type": "text", "text": ...}`
    parts. The k-th image part refers to `images[k]`. Training prompts end with a user turn;
    SFT samples also carry the assistant turn(s) that are the targets.
    """

    id: str
    messages: list[dict]
    images: list[ImageRef] = field(default_factory=list)
    answers: list[str] = field(default_factory=list)  # reference answer(s); the first is canonical
    choices: list[str] | None = None  # multiple-choice options, in order (A, B, ...)
    answer_type: str | None = None  # e.g. "integer", "float", "text", "multi_choice"
    precision: int | None = None  # decimals for float answers (MathVista)
    category: str | None = None  # for per-category metrics
    source: str = ""  # "file:row", for error messages
    meta: dict[str, Any] = field(default_factory=dict)

    @property
    def answer(self) -> str | None:
        return self.answers[0] if self.answers else None

    def prompt_messages(self) -> list[dict]:
        """The conversation up to (not including) the trailing assistant turn(s)."""
        end = len(self.messages)
        while end > 0 and self.messages[end - 1]["role"] == "assistant":
            end -= 1
        return self.messages[:end]

    def target(self) -> str | None:
        """The text of the last assistant turn, if any (the SFT target)."""
        if self.messages and self.messages[-1]["role"] == "assistant":
            return message_text(self.messages[-1])
        return None

    def question_text(self) -> str:
        """All text of the last user turn."""
        for m in reversed(self.messages):
            if m["role"] == "user":
                return message_text(m)
        return ""

    def load_images(self) -> list[Image.Image]:
        return [load_image(im, source=self.source, field=f"images[{i}]") for i, im in enumerate(self.images)]


def answer_error(sample: Sample) -> DataError | None:
    """A record RL rewards and evaluation would score against nothing (no non-empty reference answer)."""
    if any(str(a).strip() for a in sample.answers):
        return None
    file, _, row = sample.source.rpartition(":") if sample.source else ("", "", "")
    return DataError("no reference answer, so rewards and evaluation would score every output wrong; add the "
                     "answer or drop the record", file=file or sample.source or None,
                     row=int(row) if row.isdigit() else (row or None),
                     field="answer")


def message_text(message: dict) -> str:
    content = message["content"]
    if isinstance(content, str):
        return content
    return "".join(part.get("text", "") for part in content if part.get("type") == "text")


def count_image_parts(messages: list[dict]) -> int:
    n = 0
    for m in messages:
        if isinstance(m["content"], list):
            n += sum(1 for part in m["content"] if part.get("type") == "image")
    return n


def user_turn(text: str, n_images: int = 1, image_first: bool = True) -> dict:
    parts = [{"type": "image"} for _ in range(n_images)]
    txt = [{"type": "text", "text": text}]
    return {"role": "user", "content": parts + txt if image_first else txt + parts}


def assistant_turn(text: str) -> dict:
    return {"role": "assistant", "content": [{"type": "text", "text": text}]}


def load_image(ref: ImageRef, *, source: str = "", field: str = "image",
               root: str | Path | None = None, max_pixels: int | None = None) -> Image.Image:
    """Decode an image to RGB, or raise a DataError that names the record and what is wrong. A relative path is
    taken relative to `root` when given. An image over `max_pixels` (default: `max_image_pixels()`) is refused
    from its header, before it is decoded, as is anything PIL calls a decompression bomb."""
    file, _, row = source.rpartition(":") if source else ("", "", "")
    where = dict(file=file or source or None, row=row or None, field=field)
    limit = max_pixels or _limits["pixels"]
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)  # our own bound decides
            if isinstance(ref, Image.Image):
                img = ref
            elif isinstance(ref, (bytes, bytearray)):
                img = Image.open(io.BytesIO(ref))
            elif isinstance(ref, (str, Path)):
                p = Path(ref).expanduser()
                if root is not None and not p.is_absolute():
                    p = Path(root) / p
                if not p.exists():
                    raise DataError(f"image file not found: {p}", **where)
                img = Image.open(p)
            else:
                raise DataError(f"expected an image path, bytes or PIL image, got {type(ref).__name__}", **where)
            w, h = img.size
            if w * h > limit:
                raise DataError(f"image is {w}x{h} = {w * h:,} pixels, over the bound of {limit:,} (a decompression "
                                "bomb, or an image to shrink first; data.max_image_pixels raises the bound)", **where)
            img.load()  # force the decode so truncated files fail here, not inside a training step
            return img.convert("RGB")
    except DataError:
        raise
    except Image.DecompressionBombError as e:
        raise DataError(f"refused as a decompression bomb: {e}", **where) from None
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError) as e:
        what = ref if isinstance(ref, (str, Path)) else f"{type(ref).__name__} image"
        raise DataError(f"cannot decode {what}: {e}", **where) from None
