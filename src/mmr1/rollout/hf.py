"""Token-in/token-out sampling on a plain HF model (the reference engine; CPU and GPU).

GRPO samples G completions per prompt. The engine encodes the images and
prefills each prompt once, repeats the KV cache G times and runs its own decode
loop; HF `generate` would run the vision tower and the prefill G times.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from ..data.encode import to_device
from ..models.forward import MODEL_INPUT_KEYS, rope_positions, unwrap
from ..models.overrides import embed_inputs, prompt_overrides
from .batch import Prompt, encode_prompts


@dataclass
class Completion:
    token_ids: list[int]  # generated ids; an end token, when sampled, is kept as the last one
    text: str  # decoded without the end token; cut right after a stop string
    finish_reason: str  # "stop" (end token or stop string) or "length"
    logprobs: list[float] = field(default_factory=list)  # one per token id, see HFEngine.sample


@dataclass
class EngineStats:
    """Counters the tests use to check that shared-prefix sampling does no repeated work."""

    prefill_calls: int = 0
    prefill_rows: int = 0
    decode_steps: int = 0


def sample_limits(n_prompts: int, *, n: int, max_new_tokens, min_new_tokens: int, do_sample: bool,
                  temperature: float) -> list[int]:
    """Check an engine's `sample` arguments; the max_new_tokens of each prompt."""
    if n < 1:
        raise ValueError(f"n must be >= 1, got {n}")
    if min_new_tokens < 0:
        raise ValueError(f"min_new_tokens must be >= 0, got {min_new_tokens}")
    if do_sample and temperature <= 0:
        raise ValueError(f"temperature must be > 0 when sampling, got {temperature}")
    limits = list(max_new_tokens) if isinstance(max_new_tokens, (list, tuple)) else [max_new_tokens] * n_prompts
    if len(limits) != n_prompts:
        raise ValueError(f"{len(limits)} max_new_tokens for {n_prompts} prompts")
    return limits


class HFEngine:
    def __init__(self, lm, device=None):
        self.lm = lm
        self.hf = unwrap(lm.model)
        tok = lm.tokenizer
        self.device = device or next(lm.model.parameters()).device
        self.end_ids = {tok.convert_tokens_to_ids(t) for t in lm.adapter.end_tokens()}
        self.end_tensor = torch.tensor(sorted(self.end_ids), dtype=torch.long)
        self.suppress = torch.tensor(lm.adapter.suppressed_token_ids(tok), dtype=torch.long)
        self.pad_id = tok.pad_token_id if tok.pad_token_id is not None else min(self.end_ids)
        self.stats = EngineStats()

    @torch.no_grad()
    def sample(self, prompts: list[Prompt], *, n: int = 1, max_new_tokens: int | list[int], min_new_tokens: int = 0,
               temperature: float = 1.0, top_p: float = 1.0, do_sample: bool = True,
               stop: list[str] | None = None, batch_size: int = 64,
               generator: torch.Generator | list[torch.Generator] | None = None,
               progress=None, share_prefix: bool = True) -> list[list[Completion]]:
        """n completions for each (messages, images) prompt, grouped per prompt, in order.

        `logprobs[i]` is log_softmax(logits / temperature) of token i over the full
        vocabulary, taken before suppression and top-p masking (temperature 1 when
        greedy): the quantity `completion_logprobs` computes in training, so the
        two agree up to float error. `batch_size` bounds the sequences decoded
        together (prompts per prefill = batch_size // n). With a `generator` the
        result is reproducible for a fixed batch_size; with one generator per prompt it is
        also independent of batch_size and of which other prompts share the batch (so data-
        parallel ranks sample what a single process would). `share_prefix=False`
        prefills every copy separately: slower, kept as the reference the shared
        path is tested against. `min_new_tokens` keeps the end tokens from being sampled
        before that many tokens (as HF's `min_new_tokens`; stop strings still apply), so
        `min_new_tokens = max_new_tokens` fixes the completion length (benchmarks).
        """
        limits = sample_limits(len(prompts), n=n, max_new_tokens=max_new_tokens, min_new_tokens=min_new_tokens,
                               do_sample=do_sample, temperature=temperature)
        if isinstance(generator, list) and len(generator) != len(prompts):
            raise ValueError(f"{len(generator)} generators for {len(prompts)} prompts")
        model = self.lm.model
        was_training = model.training
        model.eval()
        per_chunk = max(1, batch_size // n)
        out: list[list[Completion]] = []
        try:
            for start in range(0, len(prompts), per_chunk):
                chunk = prompts[start:start + per_chunk]
                gen = generator[start:start + per_chunk] if isinstance(generator, list) else generator
                out.extend(self._sample_chunk(chunk, limits[start:start + per_chunk], n, temperature, top_p,
                                              do_sample, list(stop or []), gen, share_prefix, min_new_tokens))
                if progress is not None:
                    progress(len(chunk))
        finally:
            if was_training:
                model.train()
        return out

    def _prefill(self, prompts: list[Prompt]):
        enc = encode_prompts(self.lm, prompts, "left")
        enc["position_ids"] = rope_positions(self.hf, enc)  # on the CPU: a per-row Python loop
        batch = to_device({k: enc[k] for k in MODEL_INPUT_KEYS if enc.get(k) is not None}, self.device)
        pos = batch["position_ids"]
        if (ov := prompt_overrides(prompts)) is not None:  # placeholder embeddings (models/overrides.py)
            batch["inputs_embeds"] = embed_inputs(self.hf, batch["input_ids"], ov)
        out = self.hf.model(**batch, use_cache=True, return_dict=True)
        self.stats.prefill_calls += 1
        self.stats.prefill_rows += len(prompts)
        logits = self.hf.lm_head(out.last_hidden_state[:, -1]).float()
        # Left padding puts every prompt's last token in the last column; the next
        # text token sits one past the largest M-RoPE position of its row.
        next_pos = pos.amax(dim=(0, 2)) + 1
        return out.past_key_values, logits, batch["attention_mask"], next_pos

    def _sample_chunk(self, prompts, limits, n, temperature, top_p, do_sample, stop, generator, share_prefix,
                      min_new_tokens=0):
        rows_per_prefill = n if share_prefix else 1
        prefill_prompts = prompts if share_prefix else [p for p in prompts for _ in range(n)]
        cache, logits, attn, next_pos = self._prefill(prefill_prompts)
        if rows_per_prefill > 1:
            cache.batch_repeat_interleave(rows_per_prefill)
            logits = logits.repeat_interleave(rows_per_prefill, 0)
            attn = attn.repeat_interleave(rows_per_prefill, 0)
            next_pos = next_pos.repeat_interleave(rows_per_prefill, 0)
        R = len(prompts) * n
        limit = [limits[r // n] for r in range(R)]
        tokens: list[list[int]] = [[] for _ in range(R)]
        lps: list[list[float]] = [[] for _ in range(R)]
        finish: list[str | None] = [None if limit[r] > 0 else "length" for r in range(R)]
        live = list(range(R))  # the global row held at each batch position
        tok = self.lm.tokenizer
        max_stop = max((len(s) for s in stop), default=0)
        while True:
            # One uniform per row and step, drawn for all R rows, so that the result does
            # not depend on which rows are still in the batch (or on share_prefix).
            u = None
            if do_sample:
                if isinstance(generator, list):  # n uniforms per prompt from its own stream
                    u = torch.cat([torch.rand(n, generator=g, device=g.device) for g in generator])
                else:
                    u = torch.rand(R, generator=generator, device=generator.device if generator else "cpu")
                u = u[torch.tensor(live)].to(logits.device)
            ban_end = None
            if min_new_tokens > 0:
                ban_end = torch.tensor([len(tokens[r]) < min_new_tokens for r in live], device=logits.device)
            picked, picked_lp = self._pick(logits, temperature, top_p, do_sample, u, ban_end)
            picked, picked_lp = picked.tolist(), picked_lp.tolist()
            for i, r in enumerate(live):
                if finish[r] is not None:
                    continue
                t = picked[i]
                tokens[r].append(t)
                lps[r].append(picked_lp[i])
                if t in self.end_ids:
                    finish[r] = "stop"
                elif max_stop and any(s in tok.decode(tokens[r][-(max_stop + 2):]) for s in stop):
                    finish[r] = "stop_string"
                elif len(tokens[r]) >= limit[r]:
                    finish[r] = "length"
            step = self.decode_step(live, picked, finish, attn, next_pos, cache)
            if step is None:
                break
            live, attn, next_pos, cache, logits = step
        done = [self._completion(tokens[r], lps[r], finish[r], stop) for r in range(R)]
        return [done[i * n:(i + 1) * n] for i in range(len(prompts))]

    def decode_step(self, live: list[int], picked: list[int], finish: list, attn, next_pos, cache):
        """Feed every live row its picked token (a pad once finished) and return the next logits, as
        (live, attn, next_pos, cache, logits); None when every row has finished. Finished rows leave the
        batch once they are a quarter of it, so long tails decode few rows."""
        keep = [i for i, r in enumerate(live) if finish[r] is None]
        if not keep:
            return None
        feed = torch.tensor([picked[i] if finish[r] is None else self.pad_id for i, r in enumerate(live)],
                            device=self.device)
        if len(live) - len(keep) >= max(1, len(live) // 4):
            idx = torch.tensor(keep, device=self.device)
            cache.batch_select_indices(idx)
            attn, next_pos, feed = attn[idx], next_pos[idx], feed[idx]
            live = [live[i] for i in keep]
        attn = torch.cat([attn, attn.new_ones(len(live), 1)], dim=1)
        pos = next_pos.view(1, -1, 1).expand(3, -1, 1)
        out = self.hf.model(input_ids=feed[:, None], attention_mask=attn, position_ids=pos,
                            past_key_values=cache, use_cache=True, return_dict=True)
        self.stats.decode_steps += 1
        return live, attn, next_pos + 1, out.past_key_values, self.hf.lm_head(out.last_hidden_state[:, -1]).float()

    def _pick(self, logits, temperature, top_p, do_sample, u, ban_end=None):
        """Next token and its log-prob (full vocabulary, before any masking).

        `ban_end` [rows] marks rows whose end tokens are masked (not yet at min_new_tokens)."""
        scaled = logits / temperature if do_sample else logits
        logp = torch.log_softmax(scaled, dim=-1)
        masked = scaled.clone()
        masked[:, self.suppress.to(masked.device)] = float("-inf")
        if ban_end is not None and bool(ban_end.any()):
            end = self.end_tensor.to(masked.device)
            masked[:, end] = masked[:, end].masked_fill(ban_end[:, None], float("-inf"))
        if not do_sample:
            picked = masked.argmax(-1)
        else:
            probs = torch.softmax(masked, dim=-1)
            order = None
            if top_p < 1.0:
                probs, order = probs.sort(dim=-1, descending=True)
                probs = probs * ((probs.cumsum(-1) - probs) < top_p)  # the top token always stays
            cdf = probs.cumsum(-1)
            k = torch.searchsorted(cdf, (u * cdf[:, -1])[:, None], right=True).squeeze(-1)
            # Rounding can push k past the last token with mass; clamp it there.
            last = probs.shape[-1] - 1 - (probs > 0).flip(-1).int().argmax(-1)
            k = torch.minimum(k, last)
            picked = k if order is None else order.gather(-1, k[:, None]).squeeze(-1)
        return picked, logp.gather(-1, picked[:, None]).squeeze(-1)

    def _completion(self, ids, lps, finish, stop) -> Completion:
        text = self.lm.tokenizer.decode([t for t in ids if t not in self.end_ids], skip_special_tokens=False)
        if finish == "stop_string":
            cut = min(i + len(s) for s in stop if (i := text.find(s)) >= 0)
            text, finish = text[:cut], "stop"
        return Completion(ids, text, finish, lps)


def generate(lm, prompts: list[Prompt], *, max_new_tokens: int, do_sample: bool = False,
             temperature: float = 1.0, top_p: float = 1.0, batch_size: int = 32, progress=None,
             device=None) -> list[Completion]:
    """One completion per (messages, images) prompt, in order (greedy by default, for eval)."""
    groups = HFEngine(lm, device=device).sample(prompts, n=1, max_new_tokens=max_new_tokens, do_sample=do_sample,
                                                temperature=temperature, top_p=top_p, batch_size=batch_size,
                                                progress=progress)
    return [g[0] for g in groups]
