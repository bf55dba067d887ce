import pytest
import torch

from mmr1.models.forward import completion_logprobs, unwrap
from mmr1.rollout.batch import build_batch, build_grouped_batch
from mmr1.rollout.hf import HFEngine

from .conftest import solid_image

FAMILIES = ["qwen2_vl", "qwen2_5_vl", "qwen3_vl"]


def image(rgb, w, h):
    from PIL import Image

    return Image.new("RGB", (w, h), rgb)


def msgs(text, n_images):
    return [{"role": "user", "content": [{"type": "image"}] * n_images + [{"type": "text", "text": text}]}]


def make_prompts():
    """Different image counts, sizes and colours, and one text-only prompt."""
    return [
        (msgs("How many red objects?", 1), [solid_image((200, 30, 30), 112)]),
        (msgs("Count.", 2), [image((0, 0, 255), 56, 84), image((0, 255, 0), 84, 56)]),
        (msgs("What is the total?", 0), []),
        (msgs("Look at the image. How many objects are there in the image? Let me count them.", 1),
         [image((240, 220, 10), 84, 84)]),
    ]


def engine_lps(completions, width):
    out = torch.zeros(len(completions), width)
    for i, c in enumerate(completions):
        out[i, :len(c.logprobs)] = torch.tensor(c.logprobs)
    return out


def assert_scored(lm, prompts, completions, temperature, padding_side):
    batch = build_batch(lm, prompts, completions, padding_side=padding_side)
    lp = completion_logprobs(lm.model, batch, temperature=temperature)
    ref = engine_lps(completions, lp.shape[1])
    mask = batch["token_mask"].bool()
    assert mask.sum(1).tolist() == [len(c.token_ids) for c in completions]
    assert torch.all(lp[~mask] == 0)
    assert (lp - ref).abs().max().item() <= 1e-5, padding_side
    return lp, batch


@pytest.mark.parametrize("family", FAMILIES)
def test_engine_logprobs_match_training_forward(lms, family):
    lm = lms(family)
    prompts = make_prompts()
    # min_new_tokens keeps a random tiny model from ending early, so every row has its own length;
    # the reported log-probs are over the full vocabulary, before that masking.
    groups = HFEngine(lm).sample(prompts[:3], n=2, max_new_tokens=[5, 8, 3], min_new_tokens=8, temperature=0.7,
                                 top_p=0.9, generator=torch.Generator().manual_seed(0))
    assert [[len(c.token_ids) for c in g] for g in groups] == [[5, 5], [8, 8], [3, 3]]
    flat_p = [p for p, g in zip(prompts, groups) for _ in g]
    flat_c = [c for g in groups for c in g]
    for side in ("left", "right"):
        assert_scored(lm, flat_p, flat_c, 0.7, side)
    # Batch composition: one row alone, then beside a longer prompt with another image, in both orders.
    longer = HFEngine(lm).sample(prompts[3:], n=1, max_new_tokens=12, temperature=0.7,
                                 generator=torch.Generator().manual_seed(1))[0][0]
    alone, _ = assert_scored(lm, flat_p[2:3], flat_c[2:3], 0.7, "left")
    mixed, _ = assert_scored(lm, [prompts[3], flat_p[2], flat_p[0]], [longer, flat_c[2], flat_c[0]], 0.7, "left")
    assert (alone[0] - mixed[1, :alone.shape[1]]).abs().max().item() <= 1e-5
    # The policy loss needs gradients, and the entropies come with them.
    lm.model.zero_grad()
    lp, ent = completion_logprobs(lm.model, build_batch(lm, flat_p, flat_c), temperature=0.7, with_entropy=True)
    assert ent.shape == lp.shape and bool((ent >= 0).all())
    lp.sum().backward()
    assert unwrap(lm.model).lm_head.weight.grad is not None
    assert unwrap(lm.model).model.language_model.layers[0].self_attn.q_proj.weight.grad.abs().sum() > 0
    lm.model.zero_grad()


@pytest.mark.parametrize("family", FAMILIES)
def test_grouped_batch_matches_one_row_per_completion(lms, family):
    """The trainer's layout (each prompt once, its keys/values shared by its completions) gives the
    engine's log-probs and the same parameter gradients as repeating the prompt in every row."""
    lm = lms(family)
    prompts = make_prompts()
    groups = HFEngine(lm).sample(prompts, n=3, max_new_tokens=[6, 4, 1, 9], temperature=0.8,
                                 generator=torch.Generator().manual_seed(2))
    flat_p = [p for p, g in zip(prompts, groups) for _ in g]
    flat_c = [c for g in groups for c in g]
    grouped = build_grouped_batch(lm, flat_p, flat_c)
    assert grouped["prompt_input_ids"].shape[0] == len(prompts)  # each prompt (and image) once
    assert grouped["row_prompt"].tolist() == [0, 0, 0, 1, 1, 1, 2, 2, 2, 3, 3, 3]
    weights = torch.linspace(0.5, 1.5, grouped["token_mask"].shape[1])

    def run(batch):
        lm.model.zero_grad()
        lp = completion_logprobs(lm.model, batch, temperature=0.8)
        (lp * weights[:lp.shape[1]]).sum().backward()
        grads = {n: p.grad.clone() for n, p in lm.model.named_parameters() if p.grad is not None}
        return lp.detach(), grads

    lp_g, grads_g = run(grouped)
    lp_r, grads_r = run(build_batch(lm, flat_p, flat_c, padding_side="right"))
    lm.model.zero_grad()
    assert (lp_g - engine_lps(flat_c, lp_g.shape[1])).abs().max().item() <= 1e-5
    assert (lp_g - lp_r).abs().max().item() <= 1e-5
    assert grads_g.keys() == grads_r.keys() and any("visual" in n for n in grads_g)
    for n in grads_g:
        scale = grads_r[n].abs().max().item() + 1e-8
        assert (grads_g[n] - grads_r[n]).abs().max().item() <= 1e-4 * scale, n


def count_work(lm):
    """Hooks counting vision-tower calls/images and language-model prefills/rows."""
    hf = unwrap(lm.model)
    seen = {"vision_calls": 0, "images": 0, "prefills": 0, "prefill_rows": 0}

    def on_visual(_m, args, kwargs, _out):
        seen["vision_calls"] += 1
        seen["images"] += int(kwargs["grid_thw"].shape[0])

    def on_lm(_m, args, kwargs):
        x = kwargs["inputs_embeds"]
        if x.shape[1] > 1:
            seen["prefills"] += 1
            seen["prefill_rows"] += int(x.shape[0])

    handles = [hf.model.visual.register_forward_hook(on_visual, with_kwargs=True),
               hf.model.language_model.register_forward_pre_hook(on_lm, with_kwargs=True)]
    return seen, handles


@pytest.mark.parametrize("family", FAMILIES)
def test_shared_prefix_samples_like_independent_prefills(lms, family):
    lm = lms(family)
    prompts = make_prompts()[:3]  # 3 images in all, one prompt without any
    engine = HFEngine(lm)
    seen, handles = count_work(lm)
    try:
        kw = dict(n=4, max_new_tokens=6, temperature=1.0, top_p=0.95)
        shared = engine.sample(prompts, **kw, generator=torch.Generator().manual_seed(3))
        assert seen == {"vision_calls": 1, "images": 3, "prefills": 1, "prefill_rows": 3}
        for k in seen:
            seen[k] = 0
        separate = engine.sample(prompts, **kw, generator=torch.Generator().manual_seed(3), share_prefix=False)
        assert seen == {"vision_calls": 1, "images": 12, "prefills": 1, "prefill_rows": 12}
        for k in seen:
            seen[k] = 0
        # One prompt per prefill: the vision tower runs once per prompt that has images.
        engine.sample(prompts, **kw, batch_size=4, generator=torch.Generator().manual_seed(3))
        assert seen == {"vision_calls": 2, "images": 3, "prefills": 3, "prefill_rows": 3}
    finally:
        for h in handles:
            h.remove()
    for g_shared, g_sep in zip(shared, separate):
        assert [c.token_ids for c in g_shared] == [c.token_ids for c in g_sep]
        for a, b in zip(g_shared, g_sep):
            assert max(abs(x - y) for x, y in zip(a.logprobs, b.logprobs)) <= 1e-5
        assert len({tuple(c.token_ids) for c in g_shared}) > 1  # the copies do sample independently


def test_greedy_copies_identical_and_match_hf_generate(lms):
    lm = lms("qwen2_5_vl")
    prompts = make_prompts()[:2]
    groups = HFEngine(lm).sample(prompts, n=3, max_new_tokens=8, do_sample=False)
    for g in groups:
        assert len({tuple(c.token_ids) for c in g}) == 1
        assert len({tuple(c.logprobs) for c in g}) == 1
    flat_c = [g[0] for g in groups]
    assert_scored(lm, prompts, flat_c, 1.0, "right")  # greedy log-probs are at temperature 1
    # Same tokens as HF generate, which the engine replaced for eval.
    tok = lm.tokenizer
    end_ids = [tok.convert_tokens_to_ids(t) for t in lm.adapter.end_tokens()]
    from mmr1.rollout.batch import encode_prompts

    batch = encode_prompts(lm, prompts, "left")
    with torch.no_grad():
        seqs = lm.model.generate(**batch, max_new_tokens=8, do_sample=False, eos_token_id=end_ids,
                                 pad_token_id=tok.pad_token_id, suppress_tokens=lm.adapter.suppressed_token_ids(tok))
    for row, c in zip(seqs[:, batch["input_ids"].shape[1]:].tolist(), flat_c):
        assert row[:len(c.token_ids)] == c.token_ids


def test_stop_strings_and_per_prompt_limits(lms):
    lm = lms("qwen2_5_vl")
    prompts = make_prompts()
    engine = HFEngine(lm)
    free = [g[0] for g in engine.sample(prompts, max_new_tokens=[12, 3, 7, 1], do_sample=False)]
    for c, limit in zip(free, [12, 3, 7, 1]):
        assert len(c.token_ids) <= limit
        assert c.finish_reason == "stop" or len(c.token_ids) == limit
    # Stop strings taken from the free-running text: `early` spans two tokens and ends inside the
    # second; `late` occurs only further on, and is listed first.
    text, ids = free[0].text, free[0].token_ids
    decode = lm.tokenizer.decode
    pieces = [decode([t]) for t in ids]
    assert "".join(pieces) == text
    clean = [k for k in range(1, len(ids)) if len(pieces[k]) >= 2 and "\ufffd" not in pieces[k - 1] + pieces[k]]
    k = next(k for k in clean if text.find(pieces[k - 1][-1] + pieces[k][0]) == len("".join(pieces[:k])) - 1)
    early = pieces[k - 1][-1] + pieces[k][0]
    late = pieces[clean[-1]]
    assert text.find(late) > text.find(early)
    c = engine.sample(prompts[:1], max_new_tokens=12, do_sample=False, stop=[late, early])[0][0]
    assert c.finish_reason == "stop" and c.text == text[:text.find(early) + len(early)]
    assert c.token_ids == ids[:k + 1] and len(c.logprobs) == k + 1
    assert decode(c.token_ids).startswith(c.text) and decode(c.token_ids) != c.text  # cut inside the last token
    # A stop string that never shows up changes nothing.
    c = engine.sample(prompts[:1], max_new_tokens=12, do_sample=False, stop=["never-appears"])[0][0]
    assert (c.token_ids, c.text, c.finish_reason) == (ids, text, free[0].finish_reason)


def test_vision_tokens_are_never_sampled(lms):
    lm = lms("qwen2_vl")
    hf = unwrap(lm.model)
    tok = lm.tokenizer
    banned = lm.adapter.suppressed_token_ids(tok)
    pad = tok.convert_tokens_to_ids("<|image_pad|>")
    start = tok.convert_tokens_to_ids("<|vision_start|>")

    def boost(_m, _args, out):
        out = out.clone()
        out[..., pad] += 50.0
        out[..., start] += 40.0
        return out

    h = hf.lm_head.register_forward_hook(boost)
    try:
        engine = HFEngine(lm)
        greedy = engine.sample(make_prompts()[:2], n=2, max_new_tokens=6, do_sample=False)
        sampled = engine.sample(make_prompts()[:2], n=4, max_new_tokens=6, temperature=1.5,
                                generator=torch.Generator().manual_seed(0))
    finally:
        h.remove()
    for g in greedy + sampled:
        for c in g:
            assert c.token_ids and not set(banned) & set(c.token_ids)
            # The reported log-prob is taken before masking: the boosted tokens kept nearly all the mass.
            assert max(c.logprobs) < -20


def test_first_token_frequencies_follow_temperature_and_top_p(lms):
    lm = lms("qwen2_vl")
    hf = unwrap(lm.model)
    tok = lm.tokenizer
    ids = [tok.convert_tokens_to_ids(t) for t in ("a", "b", "c", "d", "e")]
    banned = tok.convert_tokens_to_ids("<|image_pad|>")
    designed = torch.full((hf.lm_head.out_features,), float("-inf"))
    designed[ids] = torch.tensor([2.0, 1.6, 1.0, 0.4, 0.0])
    designed[banned] = 3.0
    h = hf.lm_head.register_forward_hook(lambda _m, _a, out: designed.expand_as(out).clone())
    T, top_p, N = 0.8, 0.85, 4000
    try:
        [group] = HFEngine(lm).sample(make_prompts()[:1], n=N, max_new_tokens=1, temperature=T, top_p=top_p,
                                      batch_size=N, generator=torch.Generator().manual_seed(0))
    finally:
        h.remove()
    full = torch.log_softmax(designed / T, -1)  # what the engine must report: the banned token included
    allowed = torch.softmax(designed[ids] / T, -1).tolist()  # what it must sample from: banned masked out
    expected, cum = {}, 0.0
    for t, p in sorted(zip(ids, allowed), key=lambda x: -x[1]):
        if cum < top_p:
            expected[t] = p
        cum += p
    z = sum(expected.values())
    counts = {t: 0 for t in ids}
    for c in group:
        [t] = c.token_ids
        counts[t] += 1
        assert abs(c.logprobs[0] - full[t].item()) < 1e-5
    for t in ids:
        p = expected.get(t, 0.0) / z
        assert abs(counts[t] / N - p) <= 4 * (p * (1 - p) / N) ** 0.5 + 1e-9, (t, counts[t], p)
    assert len(expected) == 3  # top-p really truncated the tail
