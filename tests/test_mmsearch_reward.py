"""MMSearch-R1's reward (rewards/search.py): golden values computed by hand, adversarial trajectories,
the search-penalty variants and warm-up, the real FVQA rows, and the LLM judge over real HTTP."""

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from mmr1.algos.schedules import SearchPenaltyWarmup
from mmr1.clients import ChatClient
from mmr1.rewards.search import (LLMJudge, SearchReward, answer_score, as_turns, extract_final_answer, format_reward,
                                 format_v1, is_answer_turn, is_image_search_turn, is_text_search_turn,
                                 mmsearch_reward, mmsearch_reward_v1, parse_verdict, reward_v1, reward_v2,
                                 split_turns)

GOLD = {"answers": ["Spain", "Kingdom of Spain", "ESP"]}

R = "<reason>I look at the image.</reason>"
IMG = f"{R}<search><img></search>"
TXT = f"{R}<text_search>capital of the country</text_search>"


def ans(x):
    return f"{R}<answer>{x}</answer>"


V1, V2 = SearchReward(variant="v1"), SearchReward()


def both(turns, sample=GOLD):
    return round(V2(turns, sample), 10), round(V1(turns, sample), 10)


# ---------------------------------------------------------------------------------- golden cases
# v2: (1 - 0.1) * Score * (0.9 if searched and correct) + 0.1 * Format
# v1: 0.9 * (Score - 0.1 * searched) + 0.1 * Format_v1

def test_direct_answers():
    assert both([ans("Spain")]) == (1.0, 1.0)  # 0.9*1 + 0.1*1
    assert both([ans("the kingdom of  SPAIN!")]) == (1.0, 1.0)  # a candidate, after normalisation
    assert both([ans("France")]) == (0.1, 0.1)  # 0.9*0 + 0.1*1


def test_answer_without_search_but_malformed_turn():
    assert both(["<answer>Spain</answer>"]) == (0.9, 0.9)  # no reason: format 0
    # text after the answer: the v2 grammar rejects it, v1 only counts tag pairs
    assert both([ans("Spain") + " Hope that helps."]) == (0.9, 1.0)
    assert V2([f"{R}{R}<answer>Spain</answer>"], GOLD) == 0.9  # two reasons
    assert V2(["Spain"], GOLD) == 0.0  # no tags at all: no answer, no format


def test_search_then_correct_answer():
    assert both([IMG, ans("Spain")]) == (0.91, 0.91)  # v2: 0.9*(1*0.9) + 0.1; v1: 0.9*(1-0.1) + 0.1
    assert both([TXT, ans("ESP")]) == (0.91, 0.91)
    # v2: penalised once, not per search; v1 (image search only, 2 rounds) wants exactly 2 reasons: format 0
    assert both([IMG, TXT, ans("Spain")]) == (0.91, 0.81)
    per = SearchReward(per_search=True)
    assert per([IMG, TXT, ans("Spain")], GOLD) == pytest.approx(0.9 * 0.81 + 0.1)  # 0.829
    assert per([IMG, ans("Spain")], GOLD) == pytest.approx(0.91)


def test_search_then_wrong_answer():
    # v2 leaves wrong answers alone (0.1 for the format); v1 subtracts the penalty anyway: 0.9*(0-0.1) + 0.1
    assert both([IMG, ans("France")]) == (0.1, 0.01)
    assert both([IMG, TXT, ans("France")]) == (0.1, -0.09)  # v1 format 0 with 3 reasons


def test_no_answer_at_all():
    # a search asked for in the last round: no answer, no allowed sequence; v1: 0.9*(0-0.1) + 0.1*0
    assert both([IMG, TXT, TXT]) == (0.0, -0.09)
    assert both([IMG]) == (0.0, -0.09)  # trajectory cut after one search (a lone first turn counts)
    assert both([f"{R}I am not sure."]) == (0.0, 0.0)
    assert both([]) == (0.0, 0.0)


def test_multiple_answers():
    # the last answer of the final turn is graded; two answer pairs break the format (v1 counts them too)
    assert both([f"{R}<answer>France</answer><answer>Spain</answer>"]) == (0.9, 0.9)
    assert both([f"{R}<answer>Spain</answer><answer>France</answer>"]) == (0.0, 0.0)
    assert V2([f"{R}<answer>Spain</answer>", ans("France")], GOLD) == 0.0  # earlier turns' answers are not read
    assert V2(["<answer>Spain or France</answer>"], GOLD) == 0.0  # hedge: not an exact match


def test_sequences_outside_the_grammar():
    # text search then image search: counted twice, format 0; correct: 0.9*(1*0.9) + 0
    assert both([TXT, IMG, ans("Spain")]) == (0.81, 0.81)
    # a direct-answer turn that also asks for a search: the search counts (one turn), format 0
    assert both([f"{R}<search><img></search><answer>Spain</answer>"]) == (0.81, 0.81)
    # four turns: format 0, the first three turns' searches count
    d = V2.details([IMG, TXT, TXT, ans("Spain")], GOLD)
    assert (d.format, d.search_count, d.image_searches, d.text_searches) == (0.0, 3, 1, 2)
    assert d.reward == pytest.approx(0.81)
    # an answer turn before the final turn
    assert both([ans("Spain"), ans("Spain")]) == (0.9, 0.9)  # 2 turns need a search first: format 0
    # <search>query</search> is not the image search action of the grammar
    assert V2([f"{R}<search>flag</search>", ans("Spain")], GOLD) == 0.9


def test_empty_answers_never_score():
    for bad in ["", " ", "...", "the"]:
        assert V2([ans(bad)], GOLD) == pytest.approx(0.1)
        assert V2([ans(bad)], {"answers": ["Spain", "."]}) == pytest.approx(0.1)  # a gold normalising to ""


def test_subem():
    sub = SearchReward(mode="SubEM")
    assert sub([ans("It is the Kingdom of Spain, in Europe")], GOLD) == 1.0
    assert V2([ans("It is the Kingdom of Spain, in Europe")], GOLD) == pytest.approx(0.1)
    assert answer_score("spain.", GOLD["answers"], "EM") == 1.0
    with pytest.raises(ValueError):
        SearchReward(mode="F1")
    with pytest.raises(ValueError):
        SearchReward(variant="v3")


# ---------------------------------------------------------------------------------- pure functions

def test_formulas():
    assert reward_v2(1, 0, 1) == 1.0
    assert reward_v2(1, 1, 1) == pytest.approx(0.91)
    assert reward_v2(0, 2, 1) == pytest.approx(0.1)
    assert reward_v2(1, 2, 0, per_search=True) == pytest.approx(0.9 * 0.81)
    assert reward_v2(1, 1, 1, penalty=0.5, format_weight=0.2) == pytest.approx(0.8 * 0.5 + 0.2)
    assert reward_v1(1, True, 1) == pytest.approx(0.9 * 0.9 + 0.1)
    assert reward_v1(0, True, 1) == pytest.approx(0.01)
    assert reward_v1(1, False, 0) == pytest.approx(0.9)
    assert reward_v1(0, True, 0, penalty=0.2, format_weight=0.5) == pytest.approx(-0.1)


def test_turn_grammar():
    assert is_answer_turn("  " + ans("x") + "\n")
    assert is_answer_turn(f"{R}\nso the answer:\n<answer>x</answer>")
    assert not is_answer_turn(f"<answer>x</answer>{R}")
    assert not is_answer_turn(f"{R}<answer>x</answer><text_search>q</text_search>")
    assert is_image_search_turn(IMG) and not is_image_search_turn(IMG + IMG)
    assert not is_image_search_turn(f"{R}<search><img></search> ok")
    assert is_text_search_turn(TXT) and not is_text_search_turn(f"{R}<text_search>a</text_search>" * 2)
    assert not is_text_search_turn(f"{R}<search><img></search><text_search>q</text_search>")
    f = format_reward([IMG, TXT, ans("x")])
    assert (f.score, f.search_count, f.image_searches, f.text_searches) == (1.0, 2, 1, 1)
    assert format_reward([TXT, ans("x")]).score == 1.0
    assert format_reward([IMG, IMG, ans("x")]).score == 0.0  # 3 turns: image search, then text search only
    assert format_v1([IMG, ans("x")]) == 1.0 and format_v1([ans("x")]) == 1.0
    assert format_v1(["<reason>a\nb</reason><answer>x</answer>"]) == 0.0  # the early non-DOTALL count


def test_turns_from_text_and_trajectories():
    turns = [IMG, TXT, ans("Spain")]
    assert split_turns("\n".join(turns)) == turns
    assert split_turns(ans("a\nb")) == [ans("a\nb")]
    assert split_turns(f"{R}<search>x</search>\n" + ans("y")) == [f"{R}<search>x</search>", ans("y")]

    from types import SimpleNamespace

    traj = SimpleNamespace(turns=[SimpleNamespace(text=t) for t in turns], text="\n".join(turns))
    assert as_turns(traj) == as_turns(traj.text) == turns
    assert V2(traj, GOLD) == V2(traj.text, GOLD) == V2(turns, GOLD) == pytest.approx(0.91)
    assert extract_final_answer([ans("a"), "<answer> b </answer> <answer>c</answer>"]) == "c"
    assert extract_final_answer([ans("a"), R]) is None


def test_penalty_warmup():
    # p_step = -p + min((step-1)/W, 1) * 2p with p = 0.1, W = 10: a search bonus at first
    r = SearchReward(penalty=SearchPenaltyWarmup(0.1, 10))
    traj = [IMG, ans("Spain")]
    expected = {1: 0.9 * 1.1 + 0.1, 6: 0.9 * 1.0 + 0.1, 11: 0.91, 50: 0.91}
    for step, want in expected.items():
        r.step = step
        assert r.penalty_at() == pytest.approx(SearchPenaltyWarmup(0.1, 10).value(step))
        assert r(traj, GOLD) == pytest.approx(want)
        assert r([ans("Spain")], GOLD) == 1.0  # no search: no penalty, no bonus
        assert r([IMG, ans("France")], GOLD) == pytest.approx(0.1)  # v2: wrong answers untouched
    spec = SearchReward(penalty={"kind": "search_penalty_warmup", "p": 0.1, "warmup_steps": 10}, step=1)
    assert spec(traj, GOLD) == pytest.approx(1.09)
    v1 = SearchReward(variant="v1", penalty=SearchPenaltyWarmup(0.1, 10), step=1)
    assert v1([IMG, ans("France")], GOLD) == pytest.approx(0.9 * 0.1 + 0.1)  # the bonus reaches wrong answers too


def test_module_level_rewards_are_the_paper_settings():
    assert mmsearch_reward([IMG, ans("Spain")], GOLD) == pytest.approx(0.91)
    assert mmsearch_reward_v1([IMG, ans("France")], GOLD) == pytest.approx(0.01)
    from mmr1.rewards.functions import import_reward

    assert import_reward("mmr1.rewards.search:mmsearch_reward") is mmsearch_reward


# ------------------------------------------------------------------------------------- real rows

REAL = Path(__file__).resolve().parents[2] / "shared" / "real-data" / "mmsearch_r1_mini_data.pq"


@pytest.mark.skipif(not REAL.exists(), reason="../shared/real-data not present")
def test_real_fvqa_rows():
    import pyarrow.parquet as pq

    from mmr1.data.loaders import load_samples

    rows = pq.read_table(REAL).to_pylist()
    samples = load_samples(REAL, format="mmsearch").samples
    assert len(rows) == len(samples) == 5
    for row, s in zip(rows, samples):
        cands = json.loads(row["reward_model"]["candidate_answers"])
        gt = row["reward_model"]["ground_truth"]
        for gold in [gt, *cands]:  # flag emojis included: normalisation keeps them
            assert V2([IMG, ans(gold)], s) == pytest.approx(0.91)
            assert V2([IMG, ans(gold)], row) == pytest.approx(0.91)  # the raw parquet row works too
        assert V2([ans("Atlantis")], row) == pytest.approx(0.1)
    assert V2([ans("Siddhārtha Gautama")], samples[1]) == 1.0
    assert V2([ans("knights of st john")], samples[2]) == 1.0  # "St." loses its period


# ------------------------------------------------------------------------------------------ judge

@pytest.mark.parametrize("text,verdict", [
    ("Yes", True), ("No", False), ("yes.", True), ("**No**", False), ('"Yes"', True), ("No, it is wrong", False),
    ("<think>the answer says no wait</think>Yes", True), ("The verdict: yes", True), ("Verdict - NO", False),
    ("", None), ("Maybe", None), ("Yes or No", None), ("I don't know", None), ("<think>yes", None),
    (None, None), (42, None), ("Nope", None), ("Yessir", None), ("notice", None), ("Yes/No", None),
    ("\x00\xff garbage", None),
])
def test_parse_verdict(text, verdict):
    assert parse_verdict(text) is verdict


class _Judge(BaseHTTPRequestHandler):
    replies: list = []  # per request: (status, content)
    seen: list = []

    def do_POST(self):
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        type(self).seen.append(body)
        status, content = type(self).replies.pop(0)
        if status != 200:
            payload = {"error": {"message": "overloaded"}}
        elif content is None:
            payload = {"choices": []}  # a malformed reply
        else:
            payload = {"choices": [{"message": {"role": "assistant", "content": content}, "finish_reason": "stop"}]}
        data = json.dumps(payload).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args):
        pass


@pytest.fixture()
def judge_server():
    _Judge.replies, _Judge.seen = [], []
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), _Judge)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}/v1"
    httpd.shutdown()
    httpd.server_close()


def test_llm_judge_over_http(judge_server):
    judge = LLMJudge(ChatClient(judge_server, model="judge", retries=0, timeout=10))
    r = SearchReward(judge=judge)
    sample = {"answers": ["Spain", "ESP"], "question": "What is the country of origin of this food?"}
    _Judge.replies = [(200, "Yes"), (200, "No"), (200, "hmm, hard to say"), (500, ""), (200, None)]
    # the judge accepts a paraphrase EM rejects: 0.9*1*0.9 + 0.1
    assert r([IMG, ans("the Spanish kingdom")], sample) == pytest.approx(0.91)
    body = _Judge.seen[0]
    assert body["model"] == "judge" and body["temperature"] == 0.0 and body["top_p"] == 0.1
    prompt = body["messages"][0]["content"]
    assert "the Spanish kingdom" in prompt and "Spain" in prompt and "ESP" in prompt and "country of origin" in prompt
    # an exact match is accepted without a call (judge_shortcut)
    assert r([ans("Spain")], sample) == 1.0 and len(_Judge.seen) == 1
    assert r([ans("Portugal")], sample) == pytest.approx(0.1)  # "No"
    # garbage, an HTTP error and a reply without choices: the rule check decides (EM: wrong here, right there)
    assert r([ans("the Spanish kingdom")], sample) == pytest.approx(0.1)
    d = r.details([IMG, ans("the Spanish kingdom")], sample)
    assert d.judged is False and d.reward == pytest.approx(0.1)
    assert r([ans("the Spanish kingdom")], sample) == pytest.approx(0.1)
    assert (judge.calls, judge.unparsed, judge.failed) == (5, 1, 2)
    assert r(["no answer"], sample) == 0.0 and judge.calls == 5  # nothing to judge, no call
    strict = SearchReward(judge=judge, judge_shortcut=False)
    _Judge.replies = [(200, "No")]
    assert strict([ans("Spain")], sample) == pytest.approx(0.1)  # without the shortcut the judge decides
