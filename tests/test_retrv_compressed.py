"""Retrv-R1 "compressed" mode: placeholder tokens whose input embeddings are the ICM's outputs
(mmr1.models.overrides + mmr1.retrieval.compressed) on a real tiny Qwen2.5-VL, in the rollout engine, the
agent loop (shared and whole-context prefills) and the training forwards."""

import pytest
import torch

from mmr1.models import load_model
from mmr1.models.forward import completion_logprobs, rope_positions, unwrap
from mmr1.models.overrides import PLACEHOLDER, EmbedOverrides, embed_inputs
from mmr1.retrieval.compressed import CompressedReranker
from mmr1.retrieval.compression import ICMConfig, InformationCompressionModule
from mmr1.retrieval.inspect import InspectTool, inspection_config
from mmr1.retrieval.prompts import build_rerank_prompt
from mmr1.retrieval.reward import INSPECT_END, INSPECT_START
from mmr1.retrieval.world import make_cir_world
from mmr1.rollout.agent import AgentLoop
from mmr1.rollout.batch import build_batch, build_grouped_batch, encode_prompts
from mmr1.rollout.hf import HFEngine

from .test_agent import assert_teacher_forced

K = 4
FAMILY = "qwen2_5_vl"


@pytest.fixture(scope="module")
def world():
    return make_cir_world(2, seed=0)


def make_icm(lm, seed=0):
    torch.manual_seed(seed)
    h = unwrap(lm.model).get_input_embeddings().embedding_dim
    return InformationCompressionModule(ICMConfig(d_in=h, lm_hidden=h, d_model=32, n_heads=4)).eval()


@pytest.fixture(scope="module")
def setup(lms, world):
    lm = lms(FAMILY)
    rr = CompressedReranker(lm, make_icm(lm), world.image_root)
    return lm, rr


def prompt_of(world, qi, mode="compressed", **kw):
    q = world.queries[qi]
    return q, build_rerank_prompt(q, [world.pool[d] for d in q.negatives[:K - 1] + q.positives], mode, **kw)


def reference_logprobs(lm, prompt, values, completion):
    """Log-probs of `completion` after `prompt`, passing inputs_embeds by hand (no overrides machinery)."""
    hf = unwrap(lm.model)
    enc = encode_prompts(lm, [prompt[:2]], "right")
    ids = torch.cat([enc["input_ids"][0], torch.tensor(completion)])[None]
    emb = hf.get_input_embeddings()(ids).clone()
    where = (ids[0] == lm.tokenizer.convert_tokens_to_ids(PLACEHOLDER)).nonzero().squeeze(-1)
    for j, p in enumerate(where.tolist()):
        emb[0, p] = values[j]
    mm = torch.cat([enc["mm_token_type_ids"][0], torch.zeros(len(completion), dtype=torch.long)])[None]
    batch = {"input_ids": ids, "mm_token_type_ids": mm, "attention_mask": torch.ones_like(ids)}
    if enc.get("image_grid_thw") is not None:
        batch["image_grid_thw"] = enc["image_grid_thw"]
    pos = rope_positions(hf, batch)
    out = hf.model(input_ids=ids, inputs_embeds=emb, attention_mask=batch["attention_mask"], position_ids=pos,
                   pixel_values=enc.get("pixel_values"), image_grid_thw=enc.get("image_grid_thw"), use_cache=False)
    n = len(completion)
    logits = hf.lm_head(out.last_hidden_state[0, -n - 1:-1]).float()
    return torch.log_softmax(logits, -1).gather(-1, torch.tensor(completion)[:, None]).squeeze(-1)


def test_two_placeholder_tokens_per_candidate(setup, world):
    lm, rr = setup
    pid = lm.tokenizer.convert_tokens_to_ids(PLACEHOLDER)
    lens = {}
    for k in (2, K):
        q = world.queries[0]
        p = build_rerank_prompt(q, [world.pool[d] for d in (q.negatives + q.positives)[:k]], "compressed")
        ids = encode_prompts(lm, [p.prompt])["input_ids"][0]
        assert int((ids == pid).sum()) == 2 * k and len(p.images) == 1  # only the query's image
        lens[k] = len(ids)
    _, full = prompt_of(world, 0, "full")
    n_full = len(encode_prompts(lm, [full.prompt])["input_ids"][0])
    per_cand = (lens[K] - lens[2]) / (K - 2)  # "\n(N) " + 2 placeholders
    assert per_cand <= 2 + 6 and n_full - lens[K] > 10 * K
    with pytest.raises(ValueError, match="placeholder"):
        embed_inputs(unwrap(lm.model), torch.tensor([[pid, pid]]), [EmbedOverrides(pid, torch.zeros(3, 8))])


def test_overrides_equal_hand_made_inputs_embeds_in_every_forward(setup, world):
    lm, rr = setup
    q, rp = prompt_of(world, 0)
    prompt = rr.attach(rp, q)
    with torch.no_grad():
        values = prompt[2].tensor()
    assert values.shape == (2 * K, unwrap(lm.model).get_input_embeddings().embedding_dim)
    g = torch.Generator().manual_seed(0)
    comp = HFEngine(lm).sample([prompt], n=2, max_new_tokens=6, temperature=1.0, generator=g)[0]
    ids = comp[0].token_ids
    with torch.no_grad():
        ref = reference_logprobs(lm, prompt, values, ids)
        assert torch.allclose(torch.tensor(comp[0].logprobs), ref, atol=1e-4)  # engine prefill
        flat = completion_logprobs(lm.model, build_batch(lm, [prompt, prompt], comp))
        grouped = completion_logprobs(lm.model, build_grouped_batch(lm, [prompt, prompt], comp))
        assert torch.allclose(flat[0, :len(ids)], ref, atol=1e-4)
        assert torch.allclose(grouped[0, :len(ids)], ref, atol=1e-4)
        assert torch.allclose(flat, grouped, atol=1e-4)
        # the overrides matter: the same ids without them score differently
        plain = completion_logprobs(lm.model, build_batch(lm, [prompt[:2]], [ids]))
        assert (plain[0, :len(ids)] - ref).abs().max() > 1e-3


@pytest.mark.parametrize("shared", [True, False])
def test_agent_loop_with_inspection_over_compressed_prompts(setup, world, shared):
    lm, rr = setup
    prompts, ctxs = [], []
    for qi in (0, 1):
        q, rp = prompt_of(world, qi, max_inspections=2)
        prompts.append(rr.attach(rp, q))
        ctxs.append(rp.context)
    cfg = inspection_config(2, max_turn_tokens=40, max_total_tokens=4000, temperature=1.0,
                            share_prompt=shared, cache_vision=shared)
    loop = AgentLoop(lm, [InspectTool()], cfg)
    script = {1: f"<think>check</think>{INSPECT_START}2{INSPECT_END}", 2: "<answer>2</answer>"}
    trajs = [t for g in loop.run(prompts, n=2, script=script, contexts=ctxs) for t in g]
    assert all(t.finish_reason == "answer" and len(t.tool_calls) == 1 for t in trajs), [(t.finish_reason, t.text) for t in trajs]
    with torch.no_grad():
        batch = assert_teacher_forced(lm, trajs, 1.0)  # sampling log-probs == training forward, overrides on
        assert batch["embed_overrides"][0] is prompts[0][2]


def test_lm_loss_reaches_the_icm(setup, world):
    lm, _ = setup
    icm = make_icm(lm, seed=1).train()
    rr = CompressedReranker(lm, icm, world.image_root)
    q, rp = prompt_of(world, 1)
    prompt = rr.attach(rp, q)
    target = lm.tokenizer.encode("<answer>4</answer>", add_special_tokens=False)
    lp = completion_logprobs(lm.model, build_grouped_batch(lm, [prompt], [target]))
    (-lp.sum()).backward()
    grads = [p.grad for p in icm.parameters()]
    assert all(g is not None for g in grads) and sum(float(g.abs().sum()) for g in grads) > 0
    assert rr.candidate_embeds(world.pool[q.positives[0]]).grad_fn is None  # full tokens: cached, frozen


def test_model_dir_saves_and_loads_with_its_icm(setup, world, tmp_path):
    lm, rr = setup
    lm.model.save_pretrained(tmp_path)
    lm.processor.save_pretrained(tmp_path)
    rr.icm.save_pretrained(tmp_path)
    lm2 = load_model(tmp_path)
    rr2 = CompressedReranker(lm2, InformationCompressionModule.from_pretrained(tmp_path).eval(), world.image_root)
    q, rp = prompt_of(world, 0)
    target = lm.tokenizer.encode("<think>x</think><answer>1</answer>", add_special_tokens=False)
    with torch.no_grad():
        a = completion_logprobs(lm.model, build_grouped_batch(lm, [rr.attach(rp, q)], [target]))
        b = completion_logprobs(lm2.model, build_grouped_batch(lm2, [rr2.attach(rp, q)], [target]))
    assert torch.allclose(a, b, atol=1e-5)
