"""The Information Compression Module: shapes, masks, gradients, persistence, self-alignment on a real tiny LM."""

import pytest
import torch

from mmr1.errors import ConfigError, ModelError
from mmr1.retrieval.compression import (ICMConfig, InformationCompressionModule, flatten_tokens, greedy_from_embeds,
                                        self_alignment_loss)


def _icm(seed=0, **kw):
    torch.manual_seed(seed)
    cfg = dict(d_in=16, lm_hidden=24, d_model=32, n_heads=4)
    cfg.update(kw)
    return InformationCompressionModule(ICMConfig(**cfg)).eval()


def _batch(b=2, k=3, t=5, tq=4, d=16, seed=1):
    g = torch.Generator().manual_seed(seed)
    cand, query = torch.randn(b, k, t, d, generator=g), torch.randn(b, tq, d, generator=g)
    cmask = torch.ones(b, k, t, dtype=torch.long)
    cmask[0, 1, 3:] = 0  # candidate (0, 1) has 3 real tokens
    cmask[1, 2, 1:] = 0  # candidate (1, 2) has 1
    qmask = torch.ones(b, tq, dtype=torch.long)
    qmask[1, 2:] = 0
    return cand, cmask, query, qmask


def test_shapes_two_tokens_per_candidate_and_flatten_order():
    icm = _icm()
    cand, cmask, query, qmask = _batch()
    out = icm(cand, cmask, query, qmask)
    assert out.shape == (2, 3, 2, 24) and torch.isfinite(out).all()
    flat = flatten_tokens(out)
    assert flat.shape == (2, 6, 24)
    assert torch.equal(flat[0, 2], out[0, 1, 0]) and torch.equal(flat[0, 3], out[0, 1, 1])  # con_2, rel_2
    assert _icm(n_query=3)(cand, cmask, query, qmask).shape == (2, 3, 6, 24)
    assert _icm(share_pooler=False)(cand, cmask, query, qmask).shape == (2, 3, 2, 24)
    with pytest.raises(ConfigError, match="divisible"):
        ICMConfig(d_in=4, lm_hidden=4, d_model=30, n_heads=4)


def test_padded_positions_do_not_change_the_output():
    icm = _icm()
    cand, cmask, query, qmask = _batch()
    ref = icm(cand, cmask, query, qmask)
    junk_c = torch.where(cmask.bool()[..., None], cand, torch.full_like(cand, 1e3))
    junk_q = torch.where(qmask.bool()[..., None], query, torch.randn_like(query) * 50)
    assert torch.allclose(icm(junk_c, cmask, junk_q, qmask), ref, atol=1e-5)
    # ... while a real token does change it (the check above is not vacuous)
    moved = cand.clone()
    moved[0, 1, 0] += 1.0
    diff = (icm(moved, cmask, query, qmask) - ref).abs().amax(dim=(-1, -2))
    assert diff[0, 1] > 1e-3 and diff[0, 0] == 0 and diff[1].max() == 0  # candidates are independent


def test_content_ignores_the_query_relationship_depends_on_it():
    icm = _icm()
    cand, cmask, query, qmask = _batch()
    a = icm(cand, cmask, query, qmask)
    b = icm(cand, cmask, query + torch.randn_like(query), qmask)
    assert torch.allclose(a[:, :, 0], b[:, :, 0], atol=1e-6)
    assert (a[:, :, 1] - b[:, :, 1]).abs().amax() > 1e-3


def test_empty_candidate_or_query_gives_zeros_not_nan():
    icm = _icm()
    cand, cmask, query, qmask = _batch()
    cmask[0, 2] = 0
    qmask[1] = 0
    out = icm(cand, cmask, query, qmask)
    assert torch.isfinite(out).all()
    assert out[0, 2].abs().max() == 0  # no candidate tokens: both tokens zero
    assert out[1, :, 1].abs().max() == 0 and out[1, :, 0].abs().max() > 0  # no query: relationship zero only


@pytest.mark.parametrize("share", [True, False])
def test_gradient_reaches_every_parameter(share):
    icm = _icm(share_pooler=share).train()
    cand, cmask, query, qmask = _batch()
    out = icm(cand, cmask, query, qmask)
    (out * torch.randn_like(out)).sum().backward()
    for name, p in icm.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, name


def test_save_and_load_round_trip_beside_a_checkpoint(tmp_path):
    icm = _icm(seed=3, share_pooler=False, n_query=2)
    cand, cmask, query, qmask = _batch()
    (tmp_path / "config.json").write_text("{\"model_type\": \"qwen2_5_vl\"}")  # a model dir's own file
    icm.save_pretrained(tmp_path)
    assert (tmp_path / "config.json").read_text() == "{\"model_type\": \"qwen2_5_vl\"}"
    back = InformationCompressionModule.from_pretrained(tmp_path).eval()
    assert back.cfg == icm.cfg
    assert torch.equal(back(cand, cmask, query, qmask), icm(cand, cmask, query, qmask))
    with pytest.raises(ModelError, match="icm_config.json"):
        InformationCompressionModule.from_pretrained(tmp_path / "missing")


# ------------------------------------------------------------------ self-alignment on a real tiny Qwen2.5-VL

DESCRIPTIONS = ["red circle top-left; blue square centre", "green triangle right; yellow circle bottom",
                "purple square top; red triangle bottom-left", "blue circle left; green square top-right"]


def _tokens(tok, texts):
    enc = tok(texts, padding=True, padding_side="right", return_tensors="pt")
    return enc["input_ids"], enc["attention_mask"]


def test_self_alignment_trains_the_icm_only_and_lowers_the_loss(lms):
    loaded = lms("qwen2_5_vl")
    lm, tok = loaded.model, loaded.tokenizer
    lm.eval()
    emb = lm.get_input_embeddings()
    hidden = emb.weight.shape[1]
    ids, mask = _tokens(tok, DESCRIPTIONS)
    qids, qmask = _tokens(tok, ["the same scene but with the red circle removed"])
    with torch.no_grad():  # full tokens = the LM's own embeddings of each candidate's description
        full = emb(ids).unsqueeze(0)  # [1, K=4, T, H]
        qtok = emb(qids)  # [1, Tq, H]
    torch.manual_seed(0)
    icm = InformationCompressionModule(ICMConfig(d_in=hidden, lm_hidden=hidden, d_model=32, n_heads=4))
    before_lm = {k: v.clone() for k, v in lm.state_dict().items()}
    flags = {k: p.requires_grad for k, p in lm.named_parameters()}
    opt = torch.optim.Adam(icm.parameters(), lr=1e-2)

    def loss_fn():
        comp = icm(full, mask.unsqueeze(0), qtok, qmask)[0]  # [K, 2, H]: each candidate's 2 tokens
        return self_alignment_loss(lm, comp, ids, mask)

    first = loss_fn()
    assert torch.isfinite(first) and first.requires_grad
    for _ in range(12):
        opt.zero_grad()
        loss = loss_fn()
        loss.backward()
        opt.step()
    with torch.no_grad():
        last = float(loss_fn())
    # a random tiny LM barely listens to a 2-token prefix (6.62 -> ~6.48 here); the drop is small but real
    assert last < float(first.detach()) - 0.1, (float(first.detach()), last)
    assert all(p.grad is None for p in lm.parameters())  # the LLM is frozen: no gradient at all
    assert all(torch.equal(v, before_lm[k]) for k, v in lm.state_dict().items())
    assert {k: p.requires_grad for k, p in lm.named_parameters()} == flags  # restored after each call


def test_self_alignment_loss_matches_the_lm_loss_on_real_tokens(lms):
    """With the compressed tokens replaced by real token embeddings, the loss equals the LM's own CE."""
    loaded = lms("qwen2_5_vl")
    lm, tok = loaded.model, loaded.tokenizer
    emb = lm.get_input_embeddings()
    ids, mask = _tokens(tok, DESCRIPTIONS[:1])
    ctx_ids = tok(["a b"], return_tensors="pt")["input_ids"]
    with torch.no_grad():
        got = self_alignment_loss(lm, emb(ctx_ids), ids, mask)
        full = torch.cat([ctx_ids, ids], dim=1)
        labels = torch.cat([torch.full_like(ctx_ids, -100), ids], dim=1)
        pos = torch.arange(full.shape[1]).view(1, 1, -1).expand(3, 1, -1)
        want = lm(input_ids=full, labels=labels, position_ids=pos).loss
    assert float(got) == pytest.approx(float(want), rel=1e-4)


def test_greedy_from_embeds_matches_argmax_decoding(lms):
    loaded = lms("qwen2_5_vl")
    lm, tok = loaded.model, loaded.tokenizer
    ids = tok(["red circle top-left"], return_tensors="pt")["input_ids"]
    with torch.no_grad():
        out = greedy_from_embeds(lm, lm.get_input_embeddings()(ids), max_new_tokens=3)
        seq = ids
        for _ in range(3):
            pos = torch.arange(seq.shape[1]).view(1, 1, -1).expand(3, 1, -1)
            nxt = lm(input_ids=seq, position_ids=pos).logits[:, -1].argmax(-1, keepdim=True)
            seq = torch.cat([seq, nxt], dim=1)
    assert out == [seq[0, ids.shape[1]:].tolist()]
