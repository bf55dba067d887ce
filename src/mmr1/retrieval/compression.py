"""Retrv-R1's Information Compression Module (ICM, METHODS §1.2 and §5.6).

Each of K candidates (hundreds of tokens each) becomes 2 embeddings in the LM's input space, so the
reranker's prompt costs 2·K tokens instead of K·T:

- content token   ``t_con = ATT_1(Q = e_con, K = V = T_c)``: a learnable query attends over the candidate's
  tokens (a Q-Former-style pooler).
- relationship token: the candidate's tokens first cross-attend to the query's tokens,
  ``R = ATT_2(Q = T_c, K = V = T_q)``, then R is pooled the same way, ``t_rel = ATT_1(Q = e_con, K = V = R)``.

The paper's notes write both poolings with the same ATT_1 and e_con, and say whether e_rel is separate is
uncertain; ``share_pooler=True`` (default) follows the formula as written, ``False`` gives the relationship
token its own query and pooler. "Two-layer attention" blocks are read as two pre-norm layers of
(cross-attention + MLP) each; widths and heads are not published, so they are `ICMConfig` fields. Separate
output projections map the two tokens into the LM's hidden size, so the LM can tell them apart.

Masks use the Hugging Face convention: 1 / True = a real token, 0 = padding. A candidate (or query) with
no real token yields zero embeddings instead of NaNs. ``n_query > 1`` gives n_query tokens of each kind.

`self_alignment_loss` is the pretraining objective (LLM frozen): the LM's cross-entropy of a target text
(the candidate's description, or what the LM says from the full tokens: `greedy_from_embeds`) given only
the candidate's compressed embeddings. Saved as ``icm_config.json`` + ``icm.safetensors``, names that sit
beside a Hugging Face checkpoint's own files, so the ICM travels with the model directory.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, fields
from pathlib import Path

import torch
from torch import nn

from ..errors import ConfigError, ModelError

CONFIG_NAME, WEIGHTS_NAME = "icm_config.json", "icm.safetensors"


@dataclass
class ICMConfig:
    d_in: int  # width of candidate / query token embeddings (the LM's hidden size when taken from it)
    lm_hidden: int  # the LM's hidden size, where the output tokens live
    d_model: int = 256  # attention width inside the module
    n_heads: int = 4
    n_layers: int = 2  # layers in each of ATT_1 and ATT_2 ("two-layer attention")
    mlp_ratio: int = 2
    n_query: int = 1  # tokens of each kind per candidate (the paper: 1, so 2 per candidate)
    share_pooler: bool = True  # the relationship token reuses ATT_1 and e_con (the paper's formula)
    dropout: float = 0.0

    def __post_init__(self):
        for f in ("d_in", "lm_hidden", "d_model", "n_heads", "n_layers", "mlp_ratio", "n_query"):
            if int(getattr(self, f)) < 1:
                raise ConfigError(f"ICMConfig.{f} must be >= 1, got {getattr(self, f)}")
        if self.d_model % self.n_heads:
            raise ConfigError(f"ICMConfig.d_model {self.d_model} must be divisible by n_heads {self.n_heads}")

    @property
    def tokens_per_candidate(self) -> int:
        return 2 * self.n_query


class CrossLayer(nn.Module):
    """Pre-norm cross-attention (x attends to ctx) + MLP, both residual."""

    def __init__(self, d: int, heads: int, mlp_ratio: int, dropout: float):
        super().__init__()
        self.norm_q, self.norm_kv, self.norm_mlp = nn.LayerNorm(d), nn.LayerNorm(d), nn.LayerNorm(d)
        self.attn = nn.MultiheadAttention(d, heads, dropout=dropout, batch_first=True)
        self.mlp = nn.Sequential(nn.Linear(d, mlp_ratio * d), nn.GELU(), nn.Linear(mlp_ratio * d, d))

    def forward(self, x: torch.Tensor, ctx: torch.Tensor, ctx_pad: torch.Tensor) -> torch.Tensor:
        """x [N, Lq, d], ctx [N, Lk, d], ctx_pad [N, Lk] bool, True = padding (no row is all padding)."""
        kv = self.norm_kv(ctx)
        a, _ = self.attn(self.norm_q(x), kv, kv, key_padding_mask=ctx_pad, need_weights=False)
        x = x + a
        return x + self.mlp(self.norm_mlp(x))


class CrossAttention(nn.Module):
    """A stack of `CrossLayer`s followed by a LayerNorm: ATT_1 / ATT_2."""

    def __init__(self, cfg: ICMConfig):
        super().__init__()
        self.layers = nn.ModuleList(CrossLayer(cfg.d_model, cfg.n_heads, cfg.mlp_ratio, cfg.dropout)
                                    for _ in range(cfg.n_layers))
        self.norm = nn.LayerNorm(cfg.d_model)

    def forward(self, x, ctx, ctx_pad):
        for layer in self.layers:
            x = layer(x, ctx, ctx_pad)
        return self.norm(x)


class Pooler(nn.Module):
    """Learnable queries e [n_query, d] attending over a token sequence: ATT_1(Q = e, K = V = tokens)."""

    def __init__(self, cfg: ICMConfig):
        super().__init__()
        self.query = nn.Parameter(torch.randn(cfg.n_query, cfg.d_model) * cfg.d_model ** -0.5)
        self.att = CrossAttention(cfg)

    def forward(self, tokens: torch.Tensor, pad: torch.Tensor) -> torch.Tensor:
        return self.att(self.query.unsqueeze(0).expand(tokens.shape[0], -1, -1), tokens, pad)


def _safe_pad(mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(key padding mask with empty rows opened up, which rows are empty): softmax over nothing is NaN."""
    valid = mask.bool()
    empty = ~valid.any(-1)
    pad = ~valid
    pad[empty] = False
    return pad, empty


class InformationCompressionModule(nn.Module):
    """K candidates of T tokens -> [B, K, 2·n_query, lm_hidden] (content tokens first, then relationship)."""

    def __init__(self, cfg: ICMConfig):
        super().__init__()
        self.cfg = cfg
        self.in_proj = nn.Linear(cfg.d_in, cfg.d_model)
        self.q_proj = nn.Linear(cfg.d_in, cfg.d_model)
        self.content_pooler = Pooler(cfg)
        self.relate = CrossAttention(cfg)  # ATT_2
        self.rel_pooler = None if cfg.share_pooler else Pooler(cfg)
        self.out_con = nn.Linear(cfg.d_model, cfg.lm_hidden)
        self.out_rel = nn.Linear(cfg.d_model, cfg.lm_hidden)

    def forward(self, cand: torch.Tensor, cand_mask: torch.Tensor, query: torch.Tensor,
                query_mask: torch.Tensor) -> torch.Tensor:
        """cand [B, K, T, d_in] + cand_mask [B, K, T]; query [B, Tq, d_in] + query_mask [B, Tq]."""
        if cand.dim() != 4 or query.dim() != 3:
            raise ValueError(f"expected cand [B, K, T, d] and query [B, Tq, d]; got {tuple(cand.shape)} and "
                             f"{tuple(query.shape)}")
        b, k, t, _ = cand.shape
        x = self.in_proj(cand).reshape(b * k, t, -1)
        c_pad, c_empty = _safe_pad(cand_mask.reshape(b * k, t))
        content = self.content_pooler(x, c_pad)  # [B*K, n, d]
        q = self.q_proj(query)
        q_pad, q_empty = _safe_pad(query_mask)
        tq = q.shape[1]
        q = q.unsqueeze(1).expand(b, k, tq, -1).reshape(b * k, tq, -1)
        q_pad = q_pad.unsqueeze(1).expand(b, k, tq).reshape(b * k, tq)
        r = self.relate(x, q, q_pad)  # R = ATT_2(Q = T_c, K = V = T_q)
        pool = self.content_pooler if self.rel_pooler is None else self.rel_pooler
        rel = pool(r, c_pad)  # padded candidate positions of R are never attended to
        keep_c = (~c_empty).to(content.dtype)[:, None, None]
        keep_r = (keep_c * (~q_empty).to(content.dtype).repeat_interleave(k)[:, None, None])
        out = torch.cat([self.out_con(content) * keep_c, self.out_rel(rel) * keep_r], dim=1)
        return out.reshape(b, k, self.cfg.tokens_per_candidate, self.cfg.lm_hidden)

    # --------------------------------------------------------------------------- persistence

    def save_pretrained(self, out: str | Path) -> Path:
        from safetensors.torch import save_file

        out = Path(out)
        out.mkdir(parents=True, exist_ok=True)
        (out / CONFIG_NAME).write_text(json.dumps(asdict(self.cfg), indent=2) + "\n")
        save_file({k: v.detach().contiguous().cpu() for k, v in self.state_dict().items()}, str(out / WEIGHTS_NAME))
        return out

    @classmethod
    def from_pretrained(cls, path: str | Path, device: str | torch.device = "cpu") -> "InformationCompressionModule":
        from safetensors.torch import load_file

        path = Path(path)
        if not (path / CONFIG_NAME).is_file() or not (path / WEIGHTS_NAME).is_file():
            raise ModelError(f"{path}: no {CONFIG_NAME} + {WEIGHTS_NAME} (save an ICM with save_pretrained)")
        raw = json.loads((path / CONFIG_NAME).read_text())
        known = {f.name for f in fields(ICMConfig)}
        unknown = sorted(set(raw) - known)
        if unknown:
            raise ModelError(f"{path / CONFIG_NAME}: unknown key(s) {', '.join(unknown)}")
        icm = cls(ICMConfig(**raw))
        missing, unexpected = icm.load_state_dict(load_file(str(path / WEIGHTS_NAME)), strict=False)
        if missing or unexpected:
            raise ModelError(f"{path / WEIGHTS_NAME}: missing {missing[:3]}, unexpected {unexpected[:3]}")
        return icm.to(device)


def flatten_tokens(compressed: torch.Tensor) -> torch.Tensor:
    """[B, K, n, H] -> [B, K·n, H], candidate by candidate (con_1, rel_1, con_2, rel_2, ...)."""
    b, k, n, h = compressed.shape
    return compressed.reshape(b, k * n, h)


# ------------------------------------------------------------------------- self-alignment


def _lm_logits(lm, embeds: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Logits of a (VL or plain) causal LM run on inputs_embeds; positions from the mask (right padding)."""
    from ..models.forward import unwrap

    hf = unwrap(lm)
    pos = (mask.long().cumsum(-1) - 1).clamp(min=0)
    if hasattr(getattr(hf, "model", None), "get_rope_index"):  # Qwen VL: M-RoPE, text positions on all 3 axes
        pos = pos.unsqueeze(0).expand(3, -1, -1)
    return hf(inputs_embeds=embeds, attention_mask=mask.long(), position_ids=pos, use_cache=False).logits


def self_alignment_loss(lm, compressed: torch.Tensor, target_ids: torch.Tensor, target_mask: torch.Tensor,
                        prefix_embeds: torch.Tensor | None = None) -> torch.Tensor:
    """Mean cross-entropy of `target_ids` [N, L] (right-padded, mask [N, L]) given only the candidates'
    compressed tokens `compressed` [N, n, H] (after an optional shared `prefix_embeds` [P, H], e.g. an
    instruction "Describe the candidate:").

    The LM's weights get no gradient (their requires_grad is switched off for the call and restored), so an
    optimizer over the ICM's parameters alone performs BLIP-2-style self-alignment with the LLM frozen.
    """
    emb_layer = lm.get_input_embeddings()
    params = list(lm.parameters())
    flags = [p.requires_grad for p in params]
    for p in params:
        p.requires_grad_(False)
    try:
        n = compressed.shape[0]
        tgt = emb_layer(target_ids).to(compressed.dtype)
        parts = [compressed, tgt]
        if prefix_embeds is not None:
            parts.insert(0, prefix_embeds.to(compressed.dtype).unsqueeze(0).expand(n, -1, -1))
        embeds = torch.cat(parts, dim=1)
        ctx = embeds.shape[1] - tgt.shape[1]
        mask = torch.cat([torch.ones(n, ctx, dtype=torch.long, device=embeds.device), target_mask.long()], dim=1)
        logits = _lm_logits(lm, embeds, mask)
        pred = logits[:, ctx - 1:-1].float()  # position j predicts target token j
        ce = nn.functional.cross_entropy(pred.reshape(-1, pred.shape[-1]), target_ids.reshape(-1), reduction="none")
        m = target_mask.reshape(-1).to(ce.dtype)
        return (ce * m).sum() / m.sum().clamp(min=1)
    finally:
        for p, f in zip(params, flags):
            p.requires_grad_(f)


@torch.no_grad()
def greedy_from_embeds(lm, embeds: torch.Tensor, max_new_tokens: int = 16, stop_ids: tuple[int, ...] = ()) -> list[list[int]]:
    """What the LM says (greedy) after context `embeds` [N, L, H] (no padding): the self-alignment targets
    "from the full tokens". Recomputes the whole prefix each step: meant for short targets and small LMs."""
    emb_layer = lm.get_input_embeddings()
    n = embeds.shape[0]
    out: list[list[int]] = [[] for _ in range(n)]
    done = torch.zeros(n, dtype=torch.bool)
    x = embeds
    for _ in range(max_new_tokens):
        mask = torch.ones(x.shape[:2], dtype=torch.long, device=x.device)
        nxt = _lm_logits(lm, x, mask)[:, -1].argmax(-1)
        for i in range(n):
            if not done[i]:
                out[i].append(int(nxt[i]))
                done[i] = int(nxt[i]) in stop_ids
        if bool(done.all()):
            break
        x = torch.cat([x, emb_layer(nxt).unsqueeze(1).to(x.dtype)], dim=1)
    return out


__all__ = ["CONFIG_NAME", "WEIGHTS_NAME", "ICMConfig", "InformationCompressionModule", "flatten_tokens",
           "greedy_from_embeds", "self_alignment_loss"]
