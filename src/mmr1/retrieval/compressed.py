"""Compressed reranker prompts (Retrv-R1 §1.2): the ICM's 2 tokens per candidate as the input embeddings of
the prompt's placeholder tokens.

A candidate's (or query's) "full tokens" are the LM's input embeddings of its full block, exactly what
"full" mode and an inspection feed the LM (`prompts.candidate_block` / `query_block` as one user turn of
the chat template, image tokens replaced by the vision tower's features). They are computed once per
record without gradient and cached: under the recipes the embedding table and vision tower are frozen
(LoRA on the LLM), so they never change; the ICM on top of them is what trains.

`CompressedReranker.attach(prompt)` returns the prompt as ``(messages, images, EmbedOverrides)`` whose
values are a callable: each forward (rollout prefill under no_grad, training forward under grad) runs
the ICM, so the LM loss of SFT / GRPO reaches the ICM through `models.overrides.embed_inputs`.
"""

from __future__ import annotations

from typing import Sequence

import torch

from ..models.forward import unwrap
from ..models.overrides import PLACEHOLDER, EmbedOverrides
from .compression import InformationCompressionModule, flatten_tokens
from .data import Candidate, RetrievalQuery
from .prompts import RerankPrompt, candidate_block, marked_parts, query_block


class CompressedReranker:
    """Full-token embeddings of records (cached by id) and the ICM that compresses a prompt's candidates."""

    def __init__(self, lm, icm: InformationCompressionModule, image_root: str | None = None):
        self.lm, self.icm, self.image_root = lm, icm, image_root
        self.hf = unwrap(lm.model)
        self.token_id = lm.tokenizer.convert_tokens_to_ids(PLACEHOLDER)
        self._cache: dict[str, torch.Tensor] = {}

    @property
    def device(self):
        return next(self.hf.parameters()).device

    @torch.no_grad()
    def block_embeds(self, text: str, images: list) -> torch.Tensor:
        """[T, H]: the LM's input embeddings of one user turn holding `text` (+ its images' features)."""
        lm = self.lm
        rendered = lm.adapter.render(lm.processor, [{"role": "user", "content": marked_parts(text, len(images))}],
                                     add_generation_prompt=False)
        enc = lm.adapter.encode(lm.processor, [rendered], [images] if images else None, "right")
        ids = enc["input_ids"].to(self.device)
        emb = self.hf.get_input_embeddings()(ids)
        if images:
            feats = self.hf.model.get_image_features(enc["pixel_values"].to(self.device),
                                                     enc["image_grid_thw"].to(self.device), return_dict=True)
            img = torch.cat(feats.pooler_output).to(emb.dtype)
            emb = emb.masked_scatter((ids == self.hf.config.image_token_id).unsqueeze(-1), img)
        return emb[0]

    def candidate_embeds(self, c: Candidate, index: int = 1) -> torch.Tensor:
        key = f"c:{c.did}"
        if key not in self._cache:
            self._cache[key] = self.block_embeds(*candidate_block(c, index, self.image_root))
        return self._cache[key]

    def query_embeds(self, q: RetrievalQuery) -> torch.Tensor:
        key = f"q:{q.qid}"
        if key not in self._cache:
            self._cache[key] = self.block_embeds(*query_block(q, self.image_root))
        return self._cache[key]

    def compress(self, query: RetrievalQuery, candidates: Sequence[Candidate]) -> torch.Tensor:
        """[K · tokens_per_candidate, H] in prompt order (con, rel of candidate 1, then candidate 2, ...)."""
        cands = [self.candidate_embeds(c) for c in candidates]
        q = self.query_embeds(query)
        t = max(x.shape[0] for x in cands)
        cand = q.new_zeros(1, len(cands), t, q.shape[-1])
        mask = torch.zeros(1, len(cands), t, dtype=torch.bool, device=q.device)
        for i, x in enumerate(cands):
            cand[0, i, :x.shape[0]] = x
            mask[0, i, :x.shape[0]] = True
        icm_dtype = next(self.icm.parameters()).dtype
        out = self.icm(cand.to(icm_dtype), mask, q[None].to(icm_dtype),
                       torch.ones(1, q.shape[0], dtype=torch.bool, device=q.device))
        return flatten_tokens(out)[0]

    def overrides(self, query: RetrievalQuery, candidates: Sequence[Candidate]) -> EmbedOverrides:
        """Lazy overrides: the ICM runs at each forward that reads the prompt (with grad when enabled)."""
        return EmbedOverrides(self.token_id, lambda: self.compress(query, candidates))

    def attach(self, prompt: RerankPrompt, query: RetrievalQuery) -> tuple:
        """(messages, images, EmbedOverrides) of a "compressed" mode prompt: what AgentLoop / HFEngine take."""
        if prompt.mode != "compressed":
            raise ValueError(f"only 'compressed' prompts carry ICM tokens, got a {prompt.mode!r} prompt")
        n = prompt.meta.get("n_compressed", 2)
        if n != self.icm.cfg.tokens_per_candidate:
            raise ValueError(f"prompt has {n} placeholders per candidate, the ICM makes "
                             f"{self.icm.cfg.tokens_per_candidate}")
        return prompt.messages, prompt.images, self.overrides(query, prompt.context.candidates)


__all__ = ["CompressedReranker"]
