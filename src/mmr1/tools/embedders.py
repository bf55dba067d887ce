"""Embedders for the local search index (`mmr1.tools.index`): images (and optionally texts) to vectors.

An embedder is any object with

- ``name``: a short label, and ``spec() -> dict``: JSON that `embedder_from_spec` turns back into an
  equal embedder (the index stores it, so a loaded index embeds its queries the way it was built);
- ``embed_images(list[PIL.Image]) -> np.ndarray``: float32 ``[n, d]`` with L2-normalised rows, so that
  an inner product is a cosine;
- optionally ``embed_texts(list[str]) -> np.ndarray`` (same contract), for dense and hybrid text search.
  `can_embed_text` tells whether an embedder has it.

Two are built in:

- `ColorGridEmbedder` ("color-grid", the offline default, no weights): a deterministic descriptor made
  to find near-duplicates of the same picture (shifted a little, resized, recompressed): soft colour
  histograms over a 1x1 + 2x2 + 4x4 spatial pyramid plus downsampled colour pixels, each block
  Hellinger-mapped / mean-centred and L2-normalised. Texts: hashed bag of words (signed hashing,
  sublinear tf). It does not understand content; a CLIP/SigLIP model does.
- `ClipEmbedder` ("clip"): any CLIP/SigLIP-style checkpoint in a local directory, through
  `transformers.AutoModel` / `AutoProcessor` (`get_image_features` / `get_text_features`), loaded
  lazily on first use and never downloaded (``local_files_only=True``).
"""

from __future__ import annotations

import re
import threading
import zlib
from pathlib import Path
from typing import Any, Protocol, Sequence, runtime_checkable

import numpy as np

from ..errors import ConfigError, ModelError

_WORD = re.compile(r"\w+")


def tokenize(text: str) -> list[str]:
    """Lowercase word tokens (runs of letters, digits and underscores; Unicode-aware)."""
    return _WORD.findall(text.lower())


def l2_normalize(x: np.ndarray, eps: float = 1e-12) -> np.ndarray:
    x = np.asarray(x, dtype=np.float32)
    n = np.linalg.norm(x, axis=-1, keepdims=True)
    return (x / np.maximum(n, eps)).astype(np.float32)


@runtime_checkable
class Embedder(Protocol):
    name: str

    def spec(self) -> dict: ...

    def embed_images(self, images: Sequence[Any]) -> np.ndarray: ...


def can_embed_text(embedder: Any) -> bool:
    """Whether `embedder` embeds texts (has a callable ``embed_texts`` and does not say otherwise)."""
    return callable(getattr(embedder, "embed_texts", None)) and bool(getattr(embedder, "supports_text", True))


# --------------------------------------------------------------------------------------- built-in


class ColorGridEmbedder:
    """Weight-free near-duplicate image descriptor + hashed bag-of-words text vectors (see the module doc)."""

    name = "color-grid"
    supports_text = True

    def __init__(self, size: int = 64, bins: int = 4, grids: Sequence[int] = (1, 2, 4), pixels: int = 8,
                 pixel_weight: float = 1.0, text_dim: int = 1024):
        if size % max(grids) or size % pixels:
            raise ConfigError(f"size {size} must be divisible by every grid ({list(grids)}) and by pixels ({pixels})")
        if bins < 2:
            raise ConfigError(f"bins must be >= 2, got {bins}")
        self.size, self.bins, self.grids, self.pixels = int(size), int(bins), tuple(int(g) for g in grids), int(pixels)
        self.pixel_weight, self.text_dim = float(pixel_weight), int(text_dim)
        self.dim = bins ** 3 * sum(g * g for g in self.grids) + 3 * pixels * pixels

    def spec(self) -> dict:
        return {"type": "color-grid", "size": self.size, "bins": self.bins, "grids": list(self.grids),
                "pixels": self.pixels, "pixel_weight": self.pixel_weight, "text_dim": self.text_dim}

    # images ------------------------------------------------------------------------------------
    def _soft_bins(self, arr: np.ndarray) -> tuple[list[np.ndarray], list[np.ndarray]]:
        """For [H, W, 3] values in [0, 1]: the 8 (bin index [H, W], weight [H, W]) corners of a trilinear
        soft assignment to bins**3 colour bins."""
        b = self.bins
        pos = arr * (b - 1)
        lo = np.clip(np.floor(pos).astype(np.int64), 0, b - 2)
        frac = pos - lo
        idx, wts = [], []
        for dr in (0, 1):
            for dg in (0, 1):
                for db in (0, 1):
                    d = np.array([dr, dg, db])
                    i = lo + d
                    w = np.where(d == 1, frac, 1.0 - frac).prod(axis=-1)
                    idx.append((i[..., 0] * b + i[..., 1]) * b + i[..., 2])
                    wts.append(w)
        return idx, wts

    def _one(self, img) -> np.ndarray:
        from PIL import Image

        s = self.size
        im = img.convert("RGB").resize((s, s), Image.BILINEAR, reducing_gap=2.0)
        arr = np.asarray(im, dtype=np.float32) / 255.0
        idx, wts = self._soft_bins(arr)
        nb = self.bins ** 3
        blocks = []
        for g in self.grids:
            c = s // g
            for gy in range(g):
                for gx in range(g):
                    sl = (slice(gy * c, (gy + 1) * c), slice(gx * c, (gx + 1) * c))
                    h = np.zeros(nb, dtype=np.float64)
                    for i, w in zip(idx, wts):
                        h += np.bincount(i[sl].ravel(), weights=w[sl].ravel(), minlength=nb)
                    h = np.sqrt(h / max(h.sum(), 1e-12))  # Hellinger: damps dominant colours
                    blocks.append(h / max(np.linalg.norm(h), 1e-12) / np.sqrt(len(self.grids) * g * g))
        p = self.pixels
        small = arr.reshape(p, s // p, p, s // p, 3).mean(axis=(1, 3)).ravel()
        small = small - small.mean()
        blocks.append(self.pixel_weight * small / max(np.linalg.norm(small), 1e-6))
        return np.concatenate(blocks)

    def embed_images(self, images: Sequence[Any]) -> np.ndarray:
        if not len(images):
            return np.zeros((0, self.dim), dtype=np.float32)
        return l2_normalize(np.stack([self._one(im) for im in images]))

    # texts -------------------------------------------------------------------------------------
    def embed_texts(self, texts: Sequence[str]) -> np.ndarray:
        out = np.zeros((len(texts), self.text_dim), dtype=np.float32)
        for r, t in enumerate(texts):
            counts: dict[str, int] = {}
            for w in tokenize(t):
                counts[w] = counts.get(w, 0) + 1
            for w, c in counts.items():
                h = zlib.crc32(w.encode("utf-8"))  # stable across runs, unlike hash()
                sign = 1.0 if (h >> 31) & 1 else -1.0
                out[r, h % self.text_dim] += sign * (1.0 + np.log(c))
        return l2_normalize(out)


# ------------------------------------------------------------------------------------- CLIP/SigLIP


def _features(out) -> "Any":
    """`get_*_features` returns a tensor (transformers 4.x) or an output whose pooler_output holds the
    projected features (5.x)."""
    if hasattr(out, "pooler_output") and not hasattr(out, "shape"):
        return out.pooler_output
    if isinstance(out, (tuple, list)):
        return out[1] if len(out) > 1 else out[0]
    return out


class ClipEmbedder:
    """A CLIP/SigLIP-style dual encoder from a local checkpoint directory (lazy, never downloads)."""

    name = "clip"

    def __init__(self, path: str | Path, *, device: str = "cpu", batch_size: int = 32, dtype: str | None = None,
                 text: bool = True, text_max_length: int | None = None):
        self.path = Path(path).expanduser()
        self.device, self.batch_size, self.dtype = device, max(1, int(batch_size)), dtype
        self.supports_text = bool(text)
        self.text_max_length = text_max_length
        self._model = self._processor = None
        self._lock = threading.Lock()

    def spec(self) -> dict:
        return {"type": "clip", "path": str(self.path), "text": self.supports_text}

    def _load(self):
        with self._lock:
            if self._model is not None:
                return self._model, self._processor
            if not self.path.is_dir():
                raise ModelError(f"embedder checkpoint {str(self.path)!r} is not a local directory "
                                 "(embedders never download; pass a directory holding config.json and weights)")
            import torch
            from transformers import AutoModel, AutoProcessor

            kw: dict = {"local_files_only": True}
            if self.dtype:
                kw["dtype"] = getattr(torch, self.dtype)
            try:
                model = AutoModel.from_pretrained(str(self.path), **kw)
            except Exception as e:  # noqa: BLE001 - one clean line naming the directory
                raise ModelError(f"cannot load an embedding model from {str(self.path)!r}: "
                                 f"{type(e).__name__}: {str(e).strip().splitlines()[0] if str(e).strip() else ''}") from e
            if not hasattr(model, "get_image_features"):
                raise ModelError(f"{str(self.path)!r} holds a {type(model).__name__}, which has no get_image_features "
                                 "(expected a CLIP/SigLIP-style dual encoder)")
            try:
                processor = AutoProcessor.from_pretrained(str(self.path), local_files_only=True)
            except Exception:  # noqa: BLE001 - an image-only checkpoint: fall back to its image processor
                from transformers import AutoImageProcessor

                try:
                    processor = AutoImageProcessor.from_pretrained(str(self.path), local_files_only=True)
                except Exception as e:  # noqa: BLE001
                    raise ModelError(f"cannot load a processor from {str(self.path)!r}: {type(e).__name__}: {e}") from e
            model.to(self.device).eval()
            self._model, self._processor = model, processor
            return model, processor

    def _image_processor(self, processor):
        return getattr(processor, "image_processor", processor)

    def embed_images(self, images: Sequence[Any]) -> np.ndarray:
        import torch

        model, processor = self._load()
        ip = self._image_processor(processor)
        out = []
        for i in range(0, len(images), self.batch_size):
            batch = [im.convert("RGB") for im in images[i:i + self.batch_size]]
            x = ip(images=batch, return_tensors="pt")
            pv = x["pixel_values"].to(self.device, dtype=next(model.parameters()).dtype)
            with torch.inference_mode():
                f = _features(model.get_image_features(pixel_values=pv))
            out.append(f.float().cpu().numpy())
        if not out:
            return np.zeros((0, 0), dtype=np.float32)
        return l2_normalize(np.concatenate(out))

    def embed_texts(self, texts: Sequence[str]) -> np.ndarray:
        import torch

        model, processor = self._load()
        tok = getattr(processor, "tokenizer", None)
        if tok is None or not hasattr(model, "get_text_features"):
            raise ModelError(f"{str(self.path)!r} has no tokenizer or text tower: it embeds images only "
                             "(build the index with text=False, or use bm25 text search)")
        cfg = getattr(model.config, "text_config", model.config)
        max_len = self.text_max_length or getattr(cfg, "max_position_embeddings", None) or 77
        siglip = "siglip" in str(getattr(model.config, "model_type", ""))
        out = []
        for i in range(0, len(texts), self.batch_size):
            batch = list(texts[i:i + self.batch_size])
            x = tok(batch, padding="max_length" if siglip else True, truncation=True, max_length=max_len,
                    return_tensors="pt")
            kw = {"input_ids": x["input_ids"].to(self.device)}
            if "attention_mask" in x and not siglip:
                kw["attention_mask"] = x["attention_mask"].to(self.device)
            with torch.inference_mode():
                f = _features(model.get_text_features(**kw))
            out.append(f.float().cpu().numpy())
        if not out:
            return np.zeros((0, 0), dtype=np.float32)
        return l2_normalize(np.concatenate(out))


# --------------------------------------------------------------------------------------- registry

EMBEDDERS = {"color-grid": ColorGridEmbedder, "clip": ClipEmbedder}


def embedder_from_spec(spec: dict, **overrides) -> Any:
    """The embedder a `spec()` describes; `overrides` replace constructor arguments (e.g. path, device)."""
    spec = dict(spec)
    kind = spec.pop("type", None)
    if kind not in EMBEDDERS:
        raise ConfigError(f"unknown embedder type {kind!r}; known: {', '.join(EMBEDDERS)}")
    spec.update(overrides)
    return EMBEDDERS[kind](**spec)


def make_embedder(name: str | None = None, **kw) -> Any:
    """From a CLI/config string: None, "builtin" or "color-grid" gives the weight-free default; anything
    else is a local CLIP/SigLIP checkpoint directory."""
    if name in (None, "", "builtin", "color-grid", "default"):
        return ColorGridEmbedder(**kw)
    return ClipEmbedder(name, **kw)


__all__ = ["ClipEmbedder", "ColorGridEmbedder", "EMBEDDERS", "Embedder", "can_embed_text", "embedder_from_spec",
           "l2_normalize", "make_embedder", "tokenize"]
