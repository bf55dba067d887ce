"""Retrv-R1 details inspection as a tool of the agent loop (mmr1.retrieval.inspect) and the reranker prompts
(mmr1.retrieval.prompts), with a real tiny Qwen2.5-VL, its chat template and processor.

A random tiny model does not write inspection calls, so turns are scripted (`AgentLoop.run(script=...)`):
they go through the same decode loop, and the loop does all tool calls, injection and masking itself."""

import pytest
import torch

from mmr1.models.forward import unwrap
from mmr1.retrieval.inspect import (INSPECT_TOOL, InspectTool, inspection_config, inspection_format,
                                    n_inspections, retrv_agent_config)
from mmr1.retrieval.prompts import (INSTRUCTION, build_rerank_prompt, candidate_block, candidate_handle,
                                    marked_parts, scene_handle)
from mmr1.retrieval.reward import INSPECT_END, INSPECT_START, check_format, retrv_reward
from mmr1.retrieval.world import make_cir_world
from mmr1.rollout.agent import AgentLoop, ObservationFormat
from mmr1.tools import IMAGE_MARKER, ToolResult, ToolRunner

from .test_agent import assert_teacher_forced, check_masks, span_ids

K = 5


def call(i) -> str:
    return f"{INSPECT_START}{i}{INSPECT_END}"


@pytest.fixture(scope="module")
def world():
    return make_cir_world(2, seed=0)


def prompt_of(world, qi, mode="inspect", **kw):
    """Query qi over K candidates: the target last, its hard negatives before it (the pool order)."""
    q = world.queries[qi]
    cands = [world.pool[d] for d in q.negatives[:K - 1] + q.positives]
    return build_rerank_prompt(q, cands, mode, **kw)


def observation_ids(lm, text: str, images: list) -> list[int]:
    """The processor's own encoding of an observation user turn, as it follows a turn that stopped right
    after its closing tag (so the template's <|im_end|> comes first), up to the next assistant header."""
    rendered = lm.adapter.render(lm.processor, [{"role": "user", "content": marked_parts(text, len(images))}],
                                 add_generation_prompt=True)
    rendered = "<|im_end|>\n" + rendered[rendered.index("<|im_start|>user"):]
    kw = {"images": images} if images else {}
    return lm.processor(text=[rendered], return_tensors="pt", **kw)["input_ids"][0].tolist()


# ------------------------------------------------------------------------------------ pure parts


def test_prompts_full_and_inspect_modes(world):
    full, ins = prompt_of(world, 0, "full"), prompt_of(world, 0, "inspect", max_inspections=3)
    assert full.k == ins.k == K and full.gold == ins.gold == K - 1
    # full: the query image and every candidate's image, each candidate's full block inline
    assert len(full.images) == 1 + K
    text = "".join(p.get("text", IMAGE_MARKER) for p in full.messages[0]["content"])
    for i, c in enumerate(full.context.candidates):
        assert candidate_block(c, i + 1)[0] in text
    # inspect: the query image only, each candidate by number and handle, never its layout text
    assert len(ins.images) == 1 and ins.messages[0]["content"][1] == {"type": "image"}
    text = "".join(p.get("text", "") for p in ins.messages[0]["content"])
    for i, c in enumerate(ins.context.candidates):
        assert f"({i + 1}) {candidate_handle(c)}\n" in text + "\n" and c.text not in text
    assert "1. Hypothesise" in text and "4. Answer" in text and "<answer>1</answer>" in text
    assert f"write {call('N')}" in text and "(at most 3 inspections)" in text
    assert "inspection" not in INSTRUCTION.format(k=K, first=1, last=K, verify="")  # full mode: no calls
    assert scene_handle([[0, 0, "red", "circle"], [1, 1, "blue", "circle"], [2, 2, "red", "square"]]) == \
        "3 objects: 2 circles, 1 square"
    assert scene_handle([[0, 0, "red", "circle"], [1, 1, "blue", "circle"]], "colour") == "2 objects: 1 blue, 1 red"
    comp = prompt_of(world, 0, "compressed", max_inspections=0)  # compression only: no calls offered
    ctext = "".join(p.get("text", "") for p in comp.messages[0]["content"])
    assert "(1) <|vision_pad|><|vision_pad|>" in ctext and INSPECT_START not in ctext and len(comp.images) == 1
    assert INSPECT_START in prompt_of(world, 0, "compressed").messages[0]["content"][0]["text"]
    zero = prompt_of(world, 0, "inspect", base=0)
    assert "numbered 0 to 4" in zero.messages[0]["content"][0]["text"]


def test_inspect_tool_answers_and_explains_bad_indices(world):
    p = prompt_of(world, 0)
    tool = InspectTool()
    res = tool(" 2 ", images=[], context=p.context)
    text, ims = candidate_block(p.context.candidates[1], 2)
    assert res.text == text == "Candidate 2: " + IMAGE_MARKER + "\n" + p.context.candidates[1].text
    assert res.images == ims and res.images[0] is p.context.candidates[1].image
    for raw, why in [("abc", "inspection index 'abc' is not a number: write one number from 1 to 5"),
                     ("0", "inspection index 0 is out of range: there are 5 candidates, numbered 1 to 5"),
                     (str(K + 1), "inspection index 6 is out of range: there are 5 candidates, numbered 1 to 5"),
                     ("", "empty inspection index: write one number from 1 to 5")]:
        assert tool(raw, images=[], context=p.context) == ToolResult(f"Invalid inspection: {why}.")
    with pytest.raises(ValueError, match="contexts="):
        tool("1", images=[])


def test_runner_passes_context_only_to_tools_that_take_it():
    seen = {}

    class Plain:
        name = "plain"

        def __call__(self, query, *, images):
            return ToolResult(f"plain {query}")

    class WithContext:
        name = "ctx"

        def __call__(self, query, *, images, context=None):
            seen[query] = context
            return ToolResult(f"ctx {query}")

    runner = ToolRunner([Plain(), WithContext()])
    try:
        out = runner.run([("plain", "a", [], {"x": 1}), ("ctx", "b", [], {"x": 2}), ("ctx", "c", []),
                          ("plain", "d", [])])
    finally:
        runner.close()
    assert [o.ok for o in out] == [True] * 4 and out[0].result.text == "plain a"
    assert seen == {"b": {"x": 2}, "c": None}


def test_observation_templates_are_per_tool_and_backward_compatible():
    default = ObservationFormat()
    assert default.success("text_search", "R", "Q").startswith("Searched results: <information>R</information>")
    fmt = inspection_format(default)
    assert fmt.success(INSPECT_TOOL, "Candidate 1: x", "Q") == "Candidate 1: x"
    assert fmt.success("text_search", "R", "Q") == default.success("text_search", "R", "Q")
    cfg = inspection_config(3, max_turn_tokens=7)
    assert (cfg.max_rounds, cfg.tool_limits, cfg.max_turn_tokens) == (5, {INSPECT_TOOL: 3}, 7)
    from mmr1.config import load_config

    c = load_config(None, ["retrv.max_inspections=2", "agent.max_turn_tokens=99"])
    assert (retrv_agent_config(c).tool_limits, retrv_agent_config(c).max_turn_tokens) == ({INSPECT_TOOL: 2}, 99)


# ------------------------------------------------------------------------------------ in the agent loop


def test_inspection_injects_exactly_the_requested_candidate(lms, world):
    """Two prompts, each with its own candidate list: each trajectory's call shows ITS prompt's candidate,
    as the processor encodes that candidate's observation, image tokens one per visual feature, mask 0."""
    lm = lms("qwen2_5_vl")
    hf = unwrap(lm.model)
    feats = []
    hook = hf.model.visual.register_forward_hook(lambda m, a, kw, out: feats.append(out.pooler_output.shape[0]),
                                                 with_kwargs=True)
    prompts = [prompt_of(world, 0), prompt_of(world, 1)]
    want = {0: 2, 1: 5}  # prompt index -> the candidate it inspects
    loop = AgentLoop(lm, [InspectTool()], inspection_config(3, max_turn_tokens=40, max_total_tokens=2000,
                                                            temperature=0.8))
    try:
        groups = loop.run([p.prompt for p in prompts], n=2, generator=torch.Generator().manual_seed(0),
                          contexts=[p.context for p in prompts],
                          script=lambda t, r: {1: f"<think> hmm {call(want[t.prompt_index])}",
                                               2: f" ok </think><answer>{want[t.prompt_index]}</answer>"}[r])
    finally:
        hook.remove()
        loop.close()
    image_pad = lm.tokenizer.convert_tokens_to_ids("<|image_pad|>")
    merge = hf.config.vision_config.spatial_merge_size
    trajs = [t for g in groups for t in g]
    for t in trajs:
        p, i = prompts[t.prompt_index], want[t.prompt_index]
        cand = p.context.candidates[i - 1]
        assert t.finish_reason == "answer" and [c.status for c in t.tool_calls] == ["ok"]
        assert n_inspections(t, p.k) == 1 and t.calls_of(INSPECT_TOOL) == 1
        text, ims = candidate_block(cand, i)
        ids = span_ids(t, t.tool_calls[0].span)
        assert ids == observation_ids(lm, text, ims)
        assert t.tool_calls[0].observation == text and t.images[-1] is cand.image
        # mask 0 and log-prob 0 on every injected id; image tokens = the candidate image's visual features
        a, b = t.tool_calls[0].span
        assert t.response_mask[a:b] == [0] * (b - a) and t.logprobs[a:b] == [0.0] * (b - a)
        grid = lm.processor.image_processor(images=[cand.image], return_tensors="pt")["image_grid_thw"][0]
        assert ids.count(image_pad) == int(grid.prod()) // merge ** 2 == sum(t.mm_token_type_ids[a:b])
        check_masks(lm, t)
        fmt = check_format(t.text, p.k)
        assert fmt.ok and fmt.answer == i - 1
        assert retrv_reward(t.text, i - 1, p.k, n_inspections(t, p.k), lam=1.0)["reward"] == pytest.approx(2 - 1 / K)
    # the vision tower: 2 prompt images, then one inspected image per trajectory, each feature once
    per_image = [t.token_ids[slice(*t.tool_calls[0].span)].count(image_pad) for t in trajs]
    assert feats[-1] == sum(per_image) and len(feats) == 3
    assert_teacher_forced(lm, trajs, 0.8)


def test_bad_index_gets_a_clear_observation_and_the_rollout_continues(lms, world):
    lm = lms("qwen2_5_vl")
    p = prompt_of(world, 0)
    loop = AgentLoop(lm, [InspectTool()], inspection_config(5, max_turn_tokens=40, max_total_tokens=2000))
    script = {1: f"<think> a {call('abc')}", 2: f"b {call(0)}", 3: f"c {call(K + 1)}", 4: f"d {call(3)}",
              5: "e </think><answer>5</answer>"}
    (t,) = loop.run([p.prompt], n=1, generator=torch.Generator().manual_seed(0), contexts=[p.context],
                    script=script)[0]
    loop.close()
    assert t.finish_reason == "answer" and len(t.turns) == 5
    assert [c.status for c in t.tool_calls] == ["ok"] * 4
    reasons = ["inspection index 'abc' is not a number: write one number from 1 to 5",
               "inspection index 0 is out of range: there are 5 candidates, numbered 1 to 5",
               "inspection index 6 is out of range: there are 5 candidates, numbered 1 to 5"]
    for c, why in zip(t.tool_calls, reasons):
        obs = lm.tokenizer.decode(span_ids(t, c.span))
        assert obs == f"<|im_end|>\n<|im_start|>user\nInvalid inspection: {why}.<|im_end|>\n<|im_start|>assistant\n"
        assert c.n_images == 0
    assert t.tool_calls[3].n_images == 1 and t.images[-1] is p.context.candidates[2].image
    assert n_inspections(t, p.k) == 1 and t.calls_of(INSPECT_TOOL) == 4  # the limit counts every call made
    check_masks(lm, t)
    r = retrv_reward(t.text, p.gold, p.k, n_inspections(t, p.k), lam=0.5)
    assert r["format"] == 0.0 and "is not a number" in r["reason"] and r["correct"]  # the format pays for it


def test_limit_refuses_further_inspections(lms, world):
    lm = lms("qwen2_5_vl")
    p = prompt_of(world, 1)
    script = {1: f"<think> a {call(1)}", 2: f"b {call(2)}", 3: "c </think><answer>5</answer>"}
    out = {}
    for limit in (1, 0):
        loop = AgentLoop(lm, [InspectTool()], inspection_config(limit, max_rounds=3, max_turn_tokens=40,
                                                                max_total_tokens=2000))
        out[limit] = loop.run([p.prompt], n=1, generator=torch.Generator().manual_seed(0), contexts=[p.context],
                              script=script)[0][0]
        assert loop.tool_stats[INSPECT_TOOL].refusals == 2 - limit
        loop.close()
    refused = "<|im_end|>\n<|im_start|>user\n[inspect refused: at most {} call(s) per trajectory]<|im_end|>\n" \
              "<|im_start|>assistant\n"
    t = out[1]
    assert [c.status for c in t.tool_calls] == ["ok", "refused"] and t.finish_reason == "answer"
    assert lm.tokenizer.decode(span_ids(t, t.tool_calls[1].span)) == refused.format(1)
    assert n_inspections(t, p.k) == 1 and len(t.images) == 2
    t = out[0]
    assert [c.status for c in t.tool_calls] == ["refused", "refused"] and t.finish_reason == "answer"
    assert lm.tokenizer.decode(span_ids(t, t.tool_calls[0].span)) == refused.format(0)
    assert n_inspections(t, p.k) == 0 and len(t.images) == 1
    for t in out.values():
        check_masks(lm, t)
