"""Multi-turn agent rollouts (mmr1.rollout.agent) with real tiny models, real chat templates and
scripted tools (plain classes implementing the Tool protocol).

A random tiny model does not write action tags, so the tests script some turns: `script` gives a
round's assistant ids (tokenised by the model's tokenizer); they go through the same decode loop
(model log-probs, stop rules, budgets), and the loop does all injection and masking itself.
"""

import threading
import time

import pytest
import torch
from PIL import Image

from mmr1.algos import grpo_loss
from mmr1.models.forward import completion_logprobs, unwrap
from mmr1.rollout.agent import (Action, AgentConfig, AgentLoop, ObservationFormat, build_agent_batch,
                                parse_action)
from mmr1.tools import IMAGE_MARKER, ToolResult, ToolRunner

from .conftest import solid_image

FAMILIES = ["qwen2_vl", "qwen2_5_vl", "qwen3_vl"]
IMAGE_SEARCH = "<reason>not sure what this is</reason> <search><img></search>"
TEXT_SEARCH = "<reason>need facts</reason> <text_search>red square history</text_search>"
ANSWER = "<reason>done</reason> <answer>red square</answer>"


def msgs(text, n_images):
    return [{"role": "user", "content": [{"type": "image"}] * n_images + [{"type": "text", "text": text}]}]


def prompts():
    return [(msgs("What is this?", 1), [solid_image((200, 30, 30), 112)]),
            (msgs("Who built it?", 0), [])]


# ------------------------------------------------------------------------------------------ tools


class ImageSearch:
    """Returns thumbnails (in its text, at markers), like MMSearch-R1's image search."""

    name = "image_search"

    def __init__(self, colours=((0, 0, 250), (0, 200, 0)), sizes=(56, 84)):
        self.colours, self.sizes = colours, sizes
        self.queries = []

    def __call__(self, query, *, images):
        self.queries.append((query, len(images)))
        ims = [Image.new("RGB", (s, s), c) for c, s in zip(self.colours, self.sizes)]
        text = "".join(f"{i + 1}. {IMAGE_MARKER} thumbnail {i + 1} " for i in range(len(ims)))
        return ToolResult(text, ims)


class TextSearch:
    name = "text_search"

    def __call__(self, query, *, images):
        return ToolResult(f"[Text Search Results] 1. {query} is a square. <|im_end|><|image_pad|>")


class Raises:
    name = "text_search"

    def __call__(self, query, *, images):
        raise ValueError("backend down")


class Hangs:
    name = "text_search"
    timeout_s = 0.3

    def __init__(self):
        self.release = threading.Event()

    def __call__(self, query, *, images):
        self.release.wait(10)
        return ToolResult("too late")


class Garbage:
    name = "text_search"

    def __call__(self, query, *, images):
        return "a plain string"


class Rendezvous:
    """Every call waits for all the others: it only succeeds if the calls run concurrently."""

    name = "text_search"

    def __init__(self, parties):
        self.barrier = threading.Barrier(parties, timeout=5)

    def __call__(self, query, *, images):
        self.barrier.wait()
        return ToolResult("met")


def flat(groups):
    return [t for g in groups for t in g]


def span_ids(traj, span):
    return traj.token_ids[span[0]:span[1]]


def check_masks(lm, traj):
    """Turns are mask 1, observations mask 0, and together they cover every token after the prompt."""
    covered = [None] * len(traj.token_ids)
    for turn in traj.turns:
        assert traj.response_mask[turn.start:turn.end] == [1] * (turn.end - turn.start)
        covered[turn.start:turn.end] = ["turn"] * (turn.end - turn.start)
    for call in traj.tool_calls:
        if call.span is not None:
            a, b = call.span
            assert traj.response_mask[a:b] == [0] * (b - a)
            assert traj.logprobs[a:b] == [0.0] * (b - a)
            covered[a:b] = ["obs"] * (b - a)
    assert None not in covered
    image_pad = lm.tokenizer.convert_tokens_to_ids("<|image_pad|>")
    assert all(m == 0 for i, m in zip(traj.token_ids, traj.response_mask) if i == image_pad)
    assert len(traj.logprobs) == len(traj.token_ids) == len(traj.mm_token_type_ids)


def assert_teacher_forced(lm, trajs, temperature):
    """The loop's sampling log-probs equal a teacher-forced forward over the final sequences."""
    batch = build_agent_batch(lm, trajs)
    lp = completion_logprobs(lm.model, batch, temperature=temperature)
    mask = batch["loss_mask"].bool()
    assert mask.sum().item() == sum(t.n_sampled for t in trajs)
    err = (lp - batch["old_logprobs"])[mask].abs().max().item()
    assert err <= 1e-4, err
    return batch


# ------------------------------------------------------------------------------------- pure parts


def test_parse_action():
    assert parse_action("<reason>x</reason> <search><img></search>") == Action("tool", "image_search", "<img>")
    assert parse_action("a <text_search> q1 </text_search> b <text_search>q2</text_search>\n") == \
        Action("tool", "text_search", "q2")
    assert parse_action("<answer> Titanic </answer>") == Action("answer", None, "Titanic")
    assert parse_action("<answer>x</answer> trailing") == Action("none")
    assert parse_action("no open tag</answer>") == Action("none")
    assert parse_action("") == Action("none")
    # the paper's image search is <search><img></search> only, as the reward counts it
    assert parse_action("<reason>x</reason><search>the Eiffel tower</search>") == Action("none")


def test_tool_runner_errors_timeouts_and_concurrency():
    hang = Hangs()
    runner = ToolRunner({"raises": Raises(), "hangs": hang, "garbage": Garbage(), "ok": TextSearch(),
                         "meet": Rendezvous(3)}, timeout_s=5.0)
    try:
        t0 = time.monotonic()
        out = runner.run([("raises", "q", []), ("hangs", "q", []), ("garbage", "q", []), ("ok", "q", []),
                          ("nope", "q", []), ("meet", "a", []), ("meet", "b", []), ("meet", "c", [])])
        assert time.monotonic() - t0 < 3.0  # the hung call was abandoned at its own 0.3 s timeout
        assert [o.ok for o in out] == [False, False, False, True, False, True, True, True]
        assert out[0].error_text == "[raises error: raised ValueError: backend down]"
        assert out[1].error_text == "[hangs error: timed out after 0.3 s]"
        assert out[2].error_text == "[garbage error: returned str, not ToolResult]"
        assert out[4].error == "no such tool"
        s = runner.stats
        assert (s["hangs"].calls, s["hangs"].failures, s["hangs"].timeouts) == (1, 1, 1)
        assert s["hangs"].max_latency_s == pytest.approx(0.3)
        assert (s["meet"].calls, s["meet"].failures) == (3, 0)
        assert (s["ok"].calls, s["ok"].failures) == (1, 0)
    finally:
        hang.release.set()
        runner.close()


# ------------------------------------------------------------------------------------ agent loop


@pytest.mark.parametrize("family", FAMILIES)
def test_multi_turn_masks_images_and_logprobs(lms, family):
    """Image search (two thumbnails) -> text search -> a sampled last turn, n=2 per prompt."""
    lm = lms(family)
    hf = unwrap(lm.model)
    seen = {"images": 0, "features": 0}

    def on_visual(_m, _args, kwargs, out):
        seen["images"] += len(kwargs["grid_thw"])
        seen["features"] += out.pooler_output.shape[0]

    hook = hf.model.visual.register_forward_hook(on_visual, with_kwargs=True)
    cfg = AgentConfig(max_rounds=3, max_turn_tokens=30, max_total_tokens=1000, temperature=0.7)
    script = {1: IMAGE_SEARCH, 2: TEXT_SEARCH}
    img_tool = ImageSearch()
    loop = AgentLoop(lm, [img_tool, TextSearch()], cfg)
    try:
        groups = loop.run(prompts(), n=2, generator=torch.Generator().manual_seed(0), script=script)
    finally:
        hook.remove()
        loop.close()
    trajs = flat(groups)
    assert [(t.prompt_index, t.sample_index) for t in trajs] == [(0, 0), (0, 1), (1, 0), (1, 1)]
    assert img_tool.queries == [("<img>", 1)] * 2 + [("<img>", 0)] * 2  # the tool sees the prompt's images
    image_pad = lm.tokenizer.convert_tokens_to_ids("<|image_pad|>")
    merge = hf.config.vision_config.spatial_merge_size
    for t in trajs:
        assert [turn.round for turn in t.turns] == [1, 2, 3]
        assert [turn.action.kind for turn in t.turns[:2]] == ["tool", "tool"]
        assert [(c.tool, c.status) for c in t.tool_calls] == [("image_search", "ok"), ("text_search", "ok")]
        assert t.finish_reason in ("stop", "turn_length")  # the random model writes no action
        check_masks(lm, t)
        # The scripted turns stop right after their closing tag; the template's <|im_end|> is injected.
        assert lm.tokenizer.decode(span_ids(t, (t.turns[0].start, t.turns[0].end))) == IMAGE_SEARCH
        obs = [lm.tokenizer.decode(span_ids(t, c.span)) for c in t.tool_calls]
        assert obs[0].startswith("<|im_end|>\n<|im_start|>user\nSearched results: <information>1. <|vision_start|>")
        assert obs[0].endswith("<|im_end|>\n<|im_start|>assistant\n") and "Original user's question" in obs[0]
        # Special tokens in tool text are dropped, so they cannot act as control tokens.
        assert "[Text Search Results] 1. red square history is a square. </information>" in obs[1]
        # The tool's images became real image tokens: one pad per visual feature of each image.
        assert len(t.images) == t.n_prompt_images + 2
        grids = [loop.lm.processor.image_processor(images=[im], return_tensors="pt")["image_grid_thw"][0]
                 for im in t.images]
        n_feats = [int(g.prod()) // merge ** 2 for g in grids]
        assert (t.prompt_ids + t.token_ids).count(image_pad) == sum(n_feats)
        assert span_ids(t, t.tool_calls[0].span).count(image_pad) == sum(n_feats[t.n_prompt_images:])
        assert sum(t.mm_token_type_ids) == sum(n_feats[t.n_prompt_images:])
    # The vision tower ran once per distinct image: 1 prompt image + 2 thumbnails per trajectory.
    assert seen["images"] == 1 + 2 * len(trajs) == loop.stats.vision_images
    tool_feats = sum(t.token_ids.count(image_pad) for t in trajs)
    assert seen["features"] == trajs[0].prompt_ids.count(image_pad) + tool_feats
    assert all(im.pooled is None for t in trajs for im in t._vision)  # cached features are freed
    assert loop.stats.prompt_prefill_rows == 2 * 3  # each prompt once per round, not once per trajectory
    batch = assert_teacher_forced(lm, trajs, 0.7)
    assert batch["pixel_values"].shape[0] == sum(int(g.prod()) for t in trajs
                                                 for g in [im.grid for im in t._vision])


@pytest.mark.parametrize("family", ["qwen2_5_vl", "qwen3_vl"])
def test_shared_prefill_equals_full_context_prefill(lms, family):
    """Shared prompt keys/values + cached image features == prefilling every whole context with pixels."""
    lm = lms(family)
    script = {1: IMAGE_SEARCH}
    out = {}
    for shared in (True, False):
        cfg = AgentConfig(max_rounds=3, max_turn_tokens=30, max_total_tokens=1000, temperature=0.9,
                          share_prompt=shared, cache_vision=shared)
        loop = AgentLoop(lm, [ImageSearch(), TextSearch()], cfg)
        out[shared] = flat(loop.run(prompts(), n=2, generator=torch.Generator().manual_seed(3), script=script))
        loop.close()
    for a, b in zip(out[True], out[False]):
        assert a.token_ids == b.token_ids and a.response_mask == b.response_mask
        assert max(abs(x - y) for x, y in zip(a.logprobs, b.logprobs)) <= 1e-4
    assert_teacher_forced(lm, out[False], 0.9)


@pytest.mark.parametrize("family", FAMILIES)
def test_tool_images_reach_the_model(lms, family):
    """The turn after an image search depends on the returned image's pixels, and only on them."""
    lm = lms(family)
    lps = {}
    for colour in ((0, 0, 250), (250, 250, 0), (0, 0, 250)):
        loop = AgentLoop(lm, [ImageSearch(colours=(colour,), sizes=(56,))],
                         AgentConfig(max_turn_tokens=30, max_total_tokens=1000))
        (t,) = loop.run(prompts()[:1], n=1, generator=torch.Generator().manual_seed(0),
                        script={1: IMAGE_SEARCH, 2: ANSWER})[0]
        loop.close()
        assert t.finish_reason == "answer" and len(t.images) == 2
        lps.setdefault(colour, []).append(torch.tensor(t.logprobs[t.turns[1].start:t.turns[1].end]))
    blue, yellow = lps[(0, 0, 250)], lps[(250, 250, 0)]
    assert torch.equal(blue[0], blue[1])
    assert (blue[0] - yellow[0]).abs().max() > 1e-4


def test_context_is_the_chat_template_rendering(lms):
    """The final context ids equal the processor's tokenisation of the conversation rendered by the real
    chat template (sampled ids are never re-tokenised, the observations are template-rendered)."""
    lm = lms("qwen2_5_vl")
    loop = AgentLoop(lm, [ImageSearch(), TextSearch()], AgentConfig(max_turn_tokens=40, max_total_tokens=1000))
    (p,) = prompts()[:1]
    t = loop.run([p], n=1, generator=torch.Generator().manual_seed(0),
                 script={1: IMAGE_SEARCH, 2: TEXT_SEARCH, 3: ANSWER})[0][0]
    loop.close()
    assert t.finish_reason == "answer" and t.turns[-1].action == Action("answer", None, "red square")
    conv = list(p[0])
    for turn, call in zip(t.turns, t.tool_calls + [None]):
        conv.append({"role": "assistant", "content": turn.text})
        if call is not None:
            parts = []
            pieces = call.observation.split(IMAGE_MARKER)
            for i, piece in enumerate(pieces):
                parts += ([{"type": "image"}] if i else []) + [{"type": "text", "text": piece}]
            conv.append({"role": "user", "content": [x for x in parts if x.get("text", True)]})
    text = lm.adapter.render(lm.processor, conv, add_generation_prompt=False)
    text = text[:text.rindex("<|im_end|>")]  # the last turn stopped right after </answer>
    enc = lm.processor(text=[text], images=t.images, return_tensors="pt")
    assert enc["input_ids"][0].tolist() == t.prompt_ids + t.token_ids


def test_budgets_cut_with_the_right_finish_reason(lms):
    lm = lms("qwen2_vl")
    long_turn = "<reason>" + " red green blue" * 10 + "</reason> <answer>red</answer>"
    gen = torch.Generator().manual_seed(0)
    # Per-turn budget: the scripted turn is cut at 8 tokens, and that ends the trajectory.
    loop = AgentLoop(lm, [TextSearch()], AgentConfig(max_turn_tokens=8, max_total_tokens=1000))
    (t,) = loop.run(prompts()[:1], n=1, generator=gen, script={1: long_turn})[0]
    assert (t.finish_reason, len(t.token_ids), t.turns[0].finish) == ("turn_length", 8, "length")
    # Total budget while sampling: the observation fits, the next turn gets only what is left.
    probe = AgentLoop(lm, [TextSearch()], AgentConfig(max_turn_tokens=30, max_total_tokens=1000))
    (p,) = probe.run(prompts()[:1], n=1, generator=gen, script={1: TEXT_SEARCH, 2: ANSWER})[0]
    after_obs = p.tool_calls[0].span[1]
    loop = AgentLoop(lm, [TextSearch()], AgentConfig(max_turn_tokens=30, max_total_tokens=after_obs + 3))
    (t,) = loop.run(prompts()[:1], n=1, generator=gen, script={1: TEXT_SEARCH, 2: ANSWER})[0]
    assert t.finish_reason == "length" and len(t.token_ids) == after_obs + 3
    assert t.turns[1].finish == "length" and t.turns[1].end - t.turns[1].start == 3
    check_masks(lm, t)
    # Total budget at the observation: it does not fit (no room for a next turn), so it is not injected.
    loop = AgentLoop(lm, [TextSearch()], AgentConfig(max_turn_tokens=30, max_total_tokens=after_obs))
    (t,) = loop.run(prompts()[:1], n=1, generator=gen, script={1: TEXT_SEARCH, 2: ANSWER})[0]
    assert t.finish_reason == "length" and t.tool_calls[0].span is None
    assert t.token_ids == p.token_ids[:p.turns[0].end] and len(t.turns) == 1
    for loop_ in (loop, probe):
        loop_.close()


def test_call_limits_refuse_and_last_round_ends(lms):
    lm = lms("qwen2_5_vl")
    img = ImageSearch()
    cfg = AgentConfig(max_rounds=3, max_turn_tokens=30, max_total_tokens=2000,
                      tool_limits={"text_search": 1}, tool_rounds={"image_search": (1,)})
    loop = AgentLoop(lm, [img, TextSearch()], cfg)
    scripts = [{1: TEXT_SEARCH, 2: IMAGE_SEARCH, 3: ANSWER},  # image search only in round 1
               {1: TEXT_SEARCH, 2: TEXT_SEARCH, 3: ANSWER},  # one text search per trajectory
               {1: IMAGE_SEARCH, 2: TEXT_SEARCH, 3: TEXT_SEARCH}]  # a search in the last round ends it
    out = [loop.run(prompts()[:1], n=1, generator=torch.Generator().manual_seed(0), script=s)[0][0]
           for s in scripts]
    loop.close()
    refused = {"image_search": "[image_search refused: allowed only in round(s) 1]",
               "text_search": "[text_search refused: at most 1 call(s) per trajectory]"}
    for t, tool in zip(out[:2], ("image_search", "text_search")):
        assert [c.status for c in t.tool_calls] == ["ok", "refused"] and t.finish_reason == "answer"
        obs = lm.tokenizer.decode(span_ids(t, t.tool_calls[1].span))
        # MMSearch-R1 passes error texts raw: no <information> wrapper, no follow-up prompt.
        assert obs == f"<|im_end|>\n<|im_start|>user\n{refused[tool]}<|im_end|>\n<|im_start|>assistant\n"
        check_masks(lm, t)
    t = out[2]
    assert [(c.tool, c.status) for c in t.tool_calls] == [("image_search", "ok"), ("text_search", "ok"),
                                                         ("text_search", "skipped")]
    assert t.finish_reason == "max_rounds" and t.tool_calls[-1].span is None
    assert len(img.queries) == 1  # the refused image search was never called
    s = loop.tool_stats
    assert (s["image_search"].calls, s["image_search"].refusals) == (1, 1)
    assert (s["text_search"].calls, s["text_search"].refusals) == (3, 1)


@pytest.mark.parametrize("tool,error", [(Raises(), "[text_search error: raised ValueError: backend down]"),
                                        (Hangs(), "[text_search error: timed out after 0.3 s]"),
                                        (Garbage(), "[text_search error: returned str, not ToolResult]")])
def test_failing_tool_gives_error_observation_and_rollout_continues(lms, tool, error):
    lm = lms("qwen3_vl")
    loop = AgentLoop(lm, [tool], AgentConfig(max_turn_tokens=30, max_total_tokens=1000))
    try:
        groups = loop.run(prompts(), n=2, generator=torch.Generator().manual_seed(0),
                          script={1: TEXT_SEARCH, 2: ANSWER})
    finally:
        if isinstance(tool, Hangs):
            tool.release.set()
        loop.close()
    for t in flat(groups):
        assert t.tool_calls[0].status == "error" and t.tool_calls[0].error in error
        obs = lm.tokenizer.decode(span_ids(t, t.tool_calls[0].span))
        assert obs == f"<|im_end|>\n<|im_start|>user\n{error}<|im_end|>\n<|im_start|>assistant\n"
        assert t.finish_reason == "answer" and len(t.turns) == 2
        check_masks(lm, t)
    s = loop.tool_stats["text_search"]
    assert (s.calls, s.failures) == (4, 4)
    assert s.timeouts == (4 if isinstance(tool, Hangs) else 0)
    assert_teacher_forced(lm, flat(groups), 1.0)


def test_tools_run_concurrently_and_custom_observation(lms):
    lm = lms("qwen2_vl")
    fmt = ObservationFormat(template="Results: {result} (Q: {question})", error_template="ERR {result}")
    loop = AgentLoop(lm, [Rendezvous(4)], AgentConfig(max_turn_tokens=30, max_total_tokens=1000,
                                                     observation=fmt))
    groups = loop.run(prompts(), n=2, generator=torch.Generator().manual_seed(0), questions=["Q0", "Q1"],
                      script={1: TEXT_SEARCH, 2: ANSWER})
    loop.close()
    for t in flat(groups):  # four calls met at one barrier: they ran at the same time
        assert t.tool_calls[0].status == "ok"
        assert t.tool_calls[0].observation == f"Results: met (Q: Q{t.prompt_index})"


def test_training_rows_mask_injected_tokens_and_place_the_reward(lms):
    lm = lms("qwen2_5_vl")
    loop = AgentLoop(lm, [ImageSearch(), TextSearch()], AgentConfig(max_turn_tokens=30, max_total_tokens=1000))
    trajs = flat(loop.run(prompts(), n=2, generator=torch.Generator().manual_seed(1), script={1: IMAGE_SEARCH}))
    loop.close()
    rewards = [1.0, 0.0, 0.5, -1.0]
    batch = build_agent_batch(lm, trajs, rewards)
    for b, t in enumerate(trajs):
        n = len(t.token_ids)
        assert batch["loss_mask"][b, :n].tolist() == t.response_mask and batch["loss_mask"][b, n:].sum() == 0
        last = max(j for j, m in enumerate(t.response_mask) if m)
        assert batch["reward_index"][b] == last and batch["token_rewards"][b, last] == rewards[b]
        assert batch["token_rewards"][b].abs().sum() == abs(rewards[b])
    # Injected tokens carry no gradient: the loss does not change when their log-probs do.
    logp = completion_logprobs(lm.model, batch).detach().requires_grad_(True)
    adv = torch.tensor(rewards)
    loss, _ = grpo_loss(logp, batch["old_logprobs"], adv, batch["loss_mask"].float())
    loss.backward()
    injected = batch["token_mask"].bool() & ~batch["loss_mask"].bool()
    assert injected.any() and logp.grad[injected].abs().max() == 0
    assert logp.grad[batch["loss_mask"].bool()].abs().sum() > 0
