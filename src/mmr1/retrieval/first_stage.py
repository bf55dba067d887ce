"""Retrv-R1's coarse stage (METHODS §1.1): embed queries and the pool, FAISS top-K, Recall@k.

The embedder is pluggable (`mmr1.tools.embedders`: the weight-free ``color-grid`` default, or a local
CLIP/SigLIP directory). Records may be text, image or both, so each gets one vector built from
per-modality unit vectors:

- ``fusion="concat"`` (the default for embedders whose image and text spaces differ, like color-grid):
  ``v = [sqrt(1-w) * img, sqrt(w) * txt]`` with a missing part zero. For two records that both have both
  parts, ``<q, c> = (1-w) cos_img + w cos_txt``: score-level fusion, a weighted sum of per-modality
  cosines. Text never meets image here, which is right for spaces that are not aligned.
- ``fusion="sum"`` (for a shared space, CLIP/SigLIP): ``v = normalise((1-w) img + w txt)``, UniIR's
  score-fusion (SF) embedding, so a text query can find an image candidate.

A composed query (reference image + modification text) is simply an ``image,text`` record. Neither fusion
can apply an edit ("... with the red circle removed") to the picture: that is exactly why the first stage is
mediocre at R@1 and why a reasoning reranker follows. Vectors are L2-normalised, so FAISS inner product
(`IndexFlatIP`, exact) is the cosine.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np

from ..errors import ConfigError
from ..tools.embedders import can_embed_text, l2_normalize, make_embedder
from .data import Candidate, RetrievalQuery, RetrievalSet


def default_fusion(embedder: Any) -> str:
    """'concat' for embedders without a shared image-text space (color-grid), 'sum' otherwise."""
    return "concat" if getattr(embedder, "name", "") == "color-grid" else "sum"


class MultimodalEncoder:
    """Turns text / image / image+text records into one L2-normalised vector each (see the module doc)."""

    def __init__(self, embedder: Any = None, fusion: str | None = None, text_weight: float = 0.5,
                 image_root: str | None = None):
        self.embedder = embedder if embedder is not None else make_embedder()
        self.fusion = fusion or default_fusion(self.embedder)
        if self.fusion not in ("concat", "sum"):
            raise ConfigError(f"fusion must be 'concat' or 'sum', got {self.fusion!r}")
        if not 0.0 <= text_weight <= 1.0:
            raise ConfigError(f"text_weight must be in [0, 1], got {text_weight}")
        self.text_weight, self.image_root = float(text_weight), image_root

    def encode(self, records: Sequence[RetrievalQuery | Candidate]) -> np.ndarray:
        n = len(records)
        has_img = [("image" in r.modality and r.image is not None) for r in records]
        has_txt = [("text" in r.modality and bool(r.text)) for r in records]
        if any(has_txt) and not can_embed_text(self.embedder):
            raise ConfigError(f"embedder {getattr(self.embedder, 'name', self.embedder)!r} cannot embed text, "
                              "but some records are text")
        img_idx = [i for i in range(n) if has_img[i]]
        txt_idx = [i for i in range(n) if has_txt[i]]
        img = self.embedder.embed_images([records[i].load_image(self.image_root) for i in img_idx]) if img_idx else None
        txt = self.embedder.embed_texts([records[i].text for i in txt_idx]) if txt_idx else None
        di = img.shape[1] if img is not None else self._dim("image")
        dt = txt.shape[1] if txt is not None else self._dim("text")
        w = self.text_weight
        both = [has_img[i] and has_txt[i] for i in range(n)]
        if self.fusion == "concat":
            out = np.zeros((n, di + dt), dtype=np.float32)
            if img is not None:
                out[img_idx, :di] = img * np.where(np.array(both)[img_idx], np.sqrt(1 - w), 1.0)[:, None]
            if txt is not None:
                out[txt_idx, di:] = txt * np.where(np.array(both)[txt_idx], np.sqrt(w), 1.0)[:, None]
            return l2_normalize(out)
        if img is not None and txt is not None and di != dt:
            raise ConfigError(f"fusion='sum' needs one space for images and texts; got dims {di} and {dt}")
        out = np.zeros((n, di if img is not None else dt), dtype=np.float32)
        if img is not None:
            out[img_idx] += img * np.where(np.array(both)[img_idx], 1 - w, 1.0)[:, None]
        if txt is not None:
            out[txt_idx] += txt * np.where(np.array(both)[txt_idx], w, 1.0)[:, None]
        return l2_normalize(out)

    def _dim(self, kind: str) -> int:
        """The width of a part no record has (so concat layouts agree between queries and pool)."""
        if kind == "text":
            return int(getattr(self.embedder, "text_dim", 0)) if self.fusion == "concat" else 0
        return int(getattr(self.embedder, "dim", 0))


@dataclass
class Ranking:
    """Per query, the top-K candidate dids and their scores, best first."""

    qids: list[str]
    dids: list[list[str]]
    scores: np.ndarray  # [n_queries, K]


class FirstStage:
    """An exact inner-product FAISS index over the encoded pool."""

    def __init__(self, pool: dict[str, Candidate] | Sequence[Candidate], encoder: MultimodalEncoder | None = None):
        import faiss

        self.encoder = encoder or MultimodalEncoder()
        cands = list(pool.values()) if isinstance(pool, dict) else list(pool)
        self.dids = [c.did for c in cands]
        vecs = self.encoder.encode(cands)
        self.index = faiss.IndexFlatIP(vecs.shape[1])
        self.index.add(vecs)

    def search(self, queries: Sequence[RetrievalQuery], k: int) -> Ranking:
        if k < 1:
            raise ConfigError(f"top_k must be >= 1, got {k}")
        q = self.encoder.encode(list(queries))
        if q.shape[1] != self.index.d:
            raise ConfigError(f"query vectors have {q.shape[1]} dims but the pool index has {self.index.d}")
        k = min(k, len(self.dids))
        scores, rows = self.index.search(q, k)
        return Ranking([x.qid for x in queries], [[self.dids[r] for r in row if r >= 0] for row in rows], scores)


def recall_at_k(ranked: Sequence[Sequence[str]], relevant: Sequence[set[str]], ks: Sequence[int]) -> dict[str, float]:
    """M-BEIR / UniIR Recall@k: the share of queries with at least one relevant did in their top k."""
    if len(ranked) != len(relevant):
        raise ValueError(f"{len(ranked)} rankings but {len(relevant)} relevance sets")
    n = max(len(ranked), 1)
    return {f"R@{k}": sum(bool(set(r[:k]) & rel) for r, rel in zip(ranked, relevant)) / n for k in ks}


def evaluate_first_stage(data: RetrievalSet, embedder: Any = None, top_k: int = 50, ks: Sequence[int] = (1, 5, 10),
                         fusion: str | None = None, text_weight: float = 0.5) -> tuple[Ranking, dict[str, float]]:
    """Rank `data.pool` for every query; returns the ranking and Recall@k for each k in ks and top_k."""
    enc = MultimodalEncoder(embedder, fusion=fusion, text_weight=text_weight, image_root=data.image_root)
    ranking = FirstStage(data.pool, enc).search(data.queries, top_k)
    ks = sorted({*ks, top_k})
    return ranking, recall_at_k(ranking.dids, [data.relevant(q) for q in data.queries], ks)


__all__ = ["FirstStage", "MultimodalEncoder", "Ranking", "default_fusion", "evaluate_first_stage", "recall_at_k"]
