"""Retrv-R1 four-phase CoT teachers (mmr1.retrieval.teacher): the programmatic one on the synthetic world, its
SFT samples against a scripted rollout through the agent loop (same tokens), and the API teacher over a real
local HTTP server (a stdlib OpenAI-compatible stub) that keeps a valid CoT and drops invalid ones."""

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from mmr1.clients import ChatClient
from mmr1.data.encode import encode_for_sft
from mmr1.retrieval.first_stage import evaluate_first_stage
from mmr1.retrieval.inspect import InspectTool, inspection_config, inspection_format, n_inspections
from mmr1.retrieval.prompts import build_rerank_prompt, marked_parts, rerank_prompts, scene_handle
from mmr1.retrieval.reward import INSPECT_END, INSPECT_START, check_format, retrv_reward
from mmr1.retrieval.teacher import (TeacherCoT, api_cot, cot_sample, split_turns, validate_cot, world_cot,
                                    world_teacher_samples)
from mmr1.retrieval.world import make_cir_world
from mmr1.rollout.agent import AgentLoop


def call(i) -> str:
    return f"{INSPECT_START}{i}{INSPECT_END}"


@pytest.fixture(scope="module")
def world():
    data = make_cir_world(16, seed=0)
    ranking, _ = evaluate_first_stage(data, top_k=8)
    return data, ranking


def cots(world, mode="inspect", **kw):
    data, ranking = world
    by = {q.qid: q for q in data.queries}
    ps = [p for p in rerank_prompts(data, ranking, mode) if p.gold is not None]
    return [(p, world_cot(p, by[p.qid], **kw)) for p in ps]


# ------------------------------------------------------------------------------------ programmatic teacher


def test_world_cot_has_four_phases_in_the_output_format(world):
    pairs = cots(world)
    assert len(pairs) >= 12
    n_ins = []
    for p, cot in pairs:
        assert cot is not None
        fmt = check_format(cot.text, p.k)
        assert fmt.ok, fmt.reason
        assert fmt.answer == cot.answer == p.gold
        text = cot.text
        assert text.index("Phase 1") < text.index("Phase 2") < text.index("Phase 3") < text.index("Phase 4")
        # every turn but the last ends with its inspection call; inspected = candidates whose handle fits the
        # target, in the order shown, the gold one last
        assert all(t.endswith(INSPECT_END) for t in cot.turns[:-1]) and INSPECT_START not in cot.turns[-1]
        assert len(cot.turns) == len(cot.inspected) + 1
        target = scene_handle(next(q for q in world[0].queries if q.qid == p.qid).meta["target"])
        fits = [i for i, h in enumerate(p.handles) if h == target]
        if cot.inspected:
            assert cot.inspected == fits[:fits.index(p.gold) + 1]
        else:
            assert fits == [p.gold] and "nothing left to verify" in text
        n_ins.append(len(cot.inspected))
    assert max(n_ins) >= 2 and sum(n > 0 for n in n_ins) > len(n_ins) / 2  # inspection is usually needed
    # full mode: the same reasoning, verified from the details in the prompt, one turn, no calls
    for p, cot in cots(world, "full"):
        assert len(cot.turns) == 1 and INSPECT_START not in cot.text and check_format(cot.text, p.k).answer == p.gold
    # a CoT that would need more inspections than allowed is not produced
    limited = cots(world, max_inspections=1)
    assert any(c is None for _, c in limited)
    assert all(c is None or len(c.inspected) <= 1 for _, c in limited)


def test_samples_carry_the_real_tools_observations(world):
    data, ranking = world
    samples, stats = world_teacher_samples(data, ranking, max_inspections=5)
    assert stats["kept"] == len(samples) > 0 and sum(stats.values()) == len(data.queries)
    s = max(samples, key=lambda x: len(x.meta["inspected"]))
    p = next(p for p in rerank_prompts(data, ranking) if p.qid == s.meta["qid"])
    assert len(s.meta["inspected"]) >= 2 and s.answers == [str(p.gold + 1)]
    turns = s.messages[1:]
    assert [m["role"] for m in turns] == ["assistant", "user"] * len(s.meta["inspected"]) + ["assistant"]
    tool = InspectTool()
    for obs, i in zip(turns[1::2], s.meta["inspected"]):
        res = tool(str(i + 1), images=[], context=p.context)
        assert obs["content"] == marked_parts(res.text, len(res.images))
    assert s.images[0] is p.images[0]
    assert s.images[1:] == [p.context.candidates[i].image for i in s.meta["inspected"]]


def test_scripted_rollout_reproduces_the_teacher_samples_tokens(lms, world):
    """SFT on a teacher sample sees exactly the tokens a rollout of the same turns builds: the same
    observations (ids and images) and the same assistant ids."""
    lm = lms("qwen2_5_vl")
    data, ranking = world
    by = {q.qid: q for q in data.queries}
    p, cot = max(cots(world), key=lambda pc: len(pc[1].inspected))
    assert len(cot.inspected) >= 2
    sample = cot_sample(p, cot)
    loop = AgentLoop(lm, [InspectTool()], inspection_config(5, max_turn_tokens=1024, max_total_tokens=4096,
                                                            do_sample=False, observation=inspection_format()))
    (t,) = loop.run([p.prompt], n=1, contexts=[p.context], script=dict(enumerate(cot.turns, 1)))[0]
    loop.close()
    assert t.finish_reason == "answer" and [c.status for c in t.tool_calls] == ["ok"] * len(cot.inspected)
    assert t.text == cot.text and [turn.text for turn in t.turns] == cot.turns
    enc = encode_for_sft(sample, lm.processor, lm.adapter, 8192)
    loop_ids = t.prompt_ids + t.token_ids
    assert enc.input_ids.tolist()[:len(loop_ids)] == loop_ids
    # every sampled token is an SFT target and no injected one is, except the end token closing each
    # inspection turn (SFT teaches it; the loop stops at the closing tag and injects it)
    targets = (enc.labels[:len(loop_ids)] >= 0).tolist()[len(t.prompt_ids):]
    im_end = lm.tokenizer.convert_tokens_to_ids("<|im_end|>")
    diff = [j for j, (a, m) in enumerate(zip(targets, t.response_mask)) if a != bool(m)]
    assert [t.token_ids[j] for j in diff] == [im_end] * len(cot.inspected)
    assert diff == [turn.end for turn in t.turns[:-1]]
    r = retrv_reward(t.text, p.gold, p.k, n_inspections(t, p.k), lam=0.0)
    assert (r["format"], r["correct"], n_inspections(t, p.k)) == (1.0, True, len(cot.inspected))
    assert by[p.qid].qid == sample.meta["qid"]


def test_validate_cot_and_split_turns():
    good = f"<think> ideal: x. {call(2)} two is wrong. {call(3)} three fits. </think><answer>3</answer>"
    cot, why = validate_cot(good, 4, 2)
    assert why is None and cot.turns == [f"<think> ideal: x. {call(2)}", f"two is wrong. {call(3)}",
                                         "three fits. </think><answer>3</answer>"]
    assert cot.inspected == [1, 2] and cot.answer == 2
    assert split_turns("  a\n") == ["a"]
    assert validate_cot(good, 4, 1)[1] == "wrong answer: 3 (gold 2)"
    assert validate_cot(good, 4, 2, max_inspections=1)[1] == "too many inspections: 2 > 1"
    assert validate_cot(good.replace(call(2), call(9)), 4, 2)[1].startswith("format: inspection index 9 is out")
    assert validate_cot("The answer is 3.", 4, 2)[1].startswith("format: <think> occurs 0 times")
    assert validate_cot("", 4, 2)[1] == "empty reply"


# ------------------------------------------------------------------------------------ API teacher


class StubTeacher:
    """A stdlib OpenAI-compatible server whose replies are given in advance; it records the requests."""

    def __init__(self, replies):
        self.replies, self.requests = list(replies), []
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *a):
                pass

            def _send(self, body):
                data = json.dumps(body).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def do_GET(self):
                self._send({"data": [{"id": "stub-72b"}]})

            def do_POST(self):
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                outer.requests.append(body)
                self._send({"choices": [{"message": {"role": "assistant", "content": outer.replies.pop(0)},
                                         "finish_reason": "stop"}],
                            "usage": {"prompt_tokens": 10, "completion_tokens": 5}})

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/v1"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.server.shutdown()
        self.server.server_close()


def test_api_teacher_keeps_a_valid_cot_and_drops_invalid_ones():
    data = make_cir_world(1, seed=0)
    q = data.queries[0]
    cands = [data.pool[d] for d in q.negatives[:3] + q.positives]  # gold: position 3, number 4
    valid = (f"<think> Phase 1: the purple circle should be red. Phase 2: candidate 2 has other shapes. Phase 3: "
             f"{call(1)} candidate 1 keeps the purple circle. {call(4)} candidate 4 has it red. Phase 4: candidate "
             f"4. </think><answer>4</answer>")
    replies = [valid, valid.replace("<answer>4</answer>", "<answer>1</answer>"),
               "Phase 1: ... the answer is 4", valid.replace(call(4), call(7))]
    with StubTeacher(replies) as stub:
        client = ChatClient(stub.url, retries=0)
        out = [api_cot(client, q, cands, 3, max_inspections=3) for _ in replies]
    assert [o.kept for o in out] == [True, False, False, False]
    assert out[1].reason == "wrong answer: 1 (gold 4)"
    assert out[2].reason.startswith("format: ")
    assert out[3].reason.startswith("format: inspection index 7 is out of range")
    cot = out[0].cot
    assert cot.source == "api" and cot.inspected == [0, 3] and len(cot.turns) == 3
    # the request: the query image and every candidate's image as data URLs, the handles and the gold number
    req = stub.requests[0]
    assert req["model"] == "stub-72b" and req["max_tokens"] == 2048
    parts = req["messages"][0]["content"]
    assert sum(p["type"] == "image_url" for p in parts) == 1 + len(cands)
    assert all(p["image_url"]["url"].startswith("data:image/png;base64,") for p in parts if p["type"] == "image_url")
    text = "".join(p.get("text", "") for p in parts)
    assert "The correct candidate is number 4." in text and "at most 3 inspections" in text
    assert "(2) 5 objects:" in text and cands[1].text in text  # handles for phase 2, full text for the teacher
    # the kept CoT becomes an SFT sample with the real tool's observations of candidates 1 and 4
    p = build_rerank_prompt(q, cands, "inspect", max_inspections=3)
    s = cot_sample(p, cot)
    assert [m["role"] for m in s.messages] == ["user", "assistant", "user", "assistant", "user", "assistant"]
    assert s.images == [p.images[0], cands[0].image, cands[3].image] and s.meta["teacher"] == "api"
    assert isinstance(cot, TeacherCoT)
