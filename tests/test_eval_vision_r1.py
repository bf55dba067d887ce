"""Vision-R1-style evaluation (METHODS §2.5): sampling at a temperature/top_p, and resampling the
completions that have no closing `</answer>`, in batches, up to N more times."""

from __future__ import annotations

import json
import logging

import pytest
import torch

from mmr1.cli import main
from mmr1.data import load_samples
from mmr1.data.schema import Sample, user_turn
from mmr1.eval.evaluate import evaluate, missing_answer, rows_to_retry
from mmr1.models import load_model
from mmr1.rewards import score_completion
from mmr1.rollout.hf import generate

from .conftest import solid_image
from .test_data_loaders import make_image, write_jsonl


def _samples(n: int) -> list[Sample]:
    return [Sample(id=f"s{i}", messages=[user_turn(f"How many objects? ({i})")],
                   images=[solid_image((20 * i % 256, 90, 160))], answers=["3"]) for i in range(n)]


def _rows(out_dir) -> list[dict]:
    return [json.loads(x) for x in (out_dir / "predictions.jsonl").read_text().splitlines()]


def _bigram_lm(path, chain: dict[str, list[str]], logit: float = 40.0):
    """The tiny model rewired into a bigram model: the next token depends only on the current one.

    Attention and MLP outputs are zeroed, so the last hidden state is RMSNorm(embedding of the current
    token). Each token in `chain` gets its own one-hot embedding, and lm_head gives every listed
    successor the logit `logit` (everything else 0), so they are equally likely and all others are
    negligible. No code is patched: the engine samples from this model like from any other.
    """
    lm = load_model(path)
    tok, hf = lm.tokenizer, lm.model
    with torch.no_grad():
        for name, mod in hf.named_modules():
            if "language_model" in name and name.rsplit(".", 1)[-1] in ("o_proj", "down_proj"):
                mod.weight.zero_()
                if mod.bias is not None:
                    mod.bias.zero_()
            if name.endswith("language_model.norm"):
                mod.weight.fill_(1.0)
        emb, head = hf.get_input_embeddings().weight, hf.get_output_embeddings().weight
        emb.zero_()
        head.zero_()
        dim = emb.shape[1]
        for d, (src, nexts) in enumerate(chain.items()):
            emb[tok.convert_tokens_to_ids(src), d] = 1.0  # RMSNorm scales a unit one-hot to sqrt(dim)
            for t in nexts:
                head[tok.convert_tokens_to_ids(t), d] = logit / dim ** 0.5
    return lm


# The chat template ends the prompt with "<|im_start|>assistant\n"; "Ċ" is "\n" in byte-level BPE.
# After it: "</answer>" (then the end token) or the end token right away (an empty completion), 50/50.
COIN_CHAIN = {"Ċ": ["</", "<|im_end|>"], "</": ["answer"], "answer": [">"], ">": ["<|im_end|>"]}


# ------------------------------------------------------------------ the pure helpers

def test_rows_to_retry_only_missing_answer_and_below_the_cap():
    texts = ["<think>a</think><answer>3</answer>", "no tags at all", "<answer> Final Answer: 3", "x </answer> y",
             "", "still nothing"]
    attempts = [1, 1, 2, 1, 3, 4]
    # rows 1, 2 lack </answer> and have attempts left; 4 and 5 lack it but used 3 (resp. 4) of 3 attempts
    assert rows_to_retry(texts, attempts, 3) == [1, 2]
    assert rows_to_retry(texts, attempts, 1) == []  # no retries at all
    assert rows_to_retry(texts, [1] * 6, 2) == [1, 2, 4, 5]
    assert [missing_answer(t) for t in texts] == [False, True, True, False, True, True]
    with pytest.raises(ValueError):
        rows_to_retry(texts, [1], 3)


# ------------------------------------------------------------------ greedy default

def test_greedy_default_is_generate(tiny_dirs, tmp_path):
    lm = load_model(tiny_dirs["qwen2_vl"])
    samples = _samples(5)
    ref = generate(lm, [(s.prompt_messages(), s.load_images()) for s in samples], max_new_tokens=8, batch_size=4)
    for kwargs in ({}, {"temperature": 0.0, "top_p": 1.0, "retries_missing_answer": 0, "seed": 0}):
        m = evaluate(lm, samples, max_new_tokens=8, batch_size=4, show_progress=False, **kwargs)
        assert (m["retried_rows"], m["retry_rounds"], m["missing_answer_rows"]) == (0, [], 5)
        assert m["sampling"] == {"temperature": 0.0, "top_p": 1.0, "seed": 0, "retries_missing_answer": 0}
    evaluate(lm, samples, max_new_tokens=8, batch_size=4, show_progress=False, out_dir=tmp_path)
    rows = _rows(tmp_path)
    assert [r["prediction"] for r in rows] == [c.text for c in ref]
    assert [r["tokens"] for r in rows] == [len(c.token_ids) for c in ref]
    assert all(r["attempts"] == 1 for r in rows)


def test_greedy_ignores_retries_with_a_warning(tiny_dirs, tmp_path, caplog):
    lm = load_model(tiny_dirs["qwen2_vl"])
    samples = _samples(3)
    with caplog.at_level(logging.WARNING, logger="mmr1"):
        m = evaluate(lm, samples, max_new_tokens=6, batch_size=4, show_progress=False, out_dir=tmp_path,
                     retries_missing_answer=3)
    assert "retries_missing_answer=3 ignored" in caplog.text
    assert m["retry_rounds"] == [] and m["sampling"]["retries_missing_answer"] == 0
    assert [r["attempts"] for r in _rows(tmp_path)] == [1, 1, 1]


def test_bad_sampling_settings_are_config_errors(tiny_dirs):
    from mmr1.errors import ConfigError

    lm = load_model(tiny_dirs["qwen2_vl"])
    for kw in ({"temperature": -0.1}, {"temperature": 0.6, "top_p": 0.0}, {"retries_missing_answer": -1}):
        with pytest.raises(ConfigError):
            evaluate(lm, _samples(1), max_new_tokens=2, show_progress=False, **kw)


# ------------------------------------------------------------------ sampling and retries

def test_random_model_never_closes_answer_so_every_row_uses_all_attempts(tiny_dirs, tmp_path):
    lm = load_model(tiny_dirs["qwen2_vl"])
    m = evaluate(lm, _samples(5), max_new_tokens=8, batch_size=4, show_progress=False, out_dir=tmp_path,
                 temperature=0.6, top_p=0.95, retries_missing_answer=2, seed=0)
    rows = _rows(tmp_path)
    assert all("</answer>" not in r["prediction"] for r in rows)
    assert [r["attempts"] for r in rows] == [3] * 5  # 1 + N, and not one more
    assert (m["retry_rounds"], m["retried_rows"], m["missing_answer_rows"]) == ([5, 5], 5, 5)
    assert json.loads((tmp_path / "metrics.json").read_text())["retry_rounds"] == [5, 5]


def test_sampling_is_reproducible_with_a_seed(tiny_dirs, tmp_path):
    lm = load_model(tiny_dirs["qwen2_vl"])
    samples = _samples(4)

    def preds(seed, name):
        evaluate(lm, samples, max_new_tokens=8, batch_size=4, show_progress=False, out_dir=tmp_path / name,
                 temperature=0.6, top_p=0.95, retries_missing_answer=1, seed=seed)
        return [(r["prediction"], r["attempts"]) for r in _rows(tmp_path / name)]

    a, b, c = preds(3, "a"), preds(3, "b"), preds(4, "c")
    assert a == b
    assert a != c
    greedy = evaluate(lm, samples, max_new_tokens=8, batch_size=4, show_progress=False, out_dir=tmp_path / "g")
    assert greedy["n"] == 4 and [p for p, _ in a] != [r["prediction"] for r in _rows(tmp_path / "g")]


def test_only_rows_without_closing_answer_are_resampled(tiny_dirs, tmp_path):
    """A model that, per attempt, writes `</answer>` or nothing with probability 1/2 each."""
    lm = _bigram_lm(tiny_dirs["qwen2_vl"], COIN_CHAIN)
    samples = _samples(12)
    kw = dict(max_new_tokens=8, batch_size=8, show_progress=False, temperature=0.6, top_p=0.95, seed=10)
    first = evaluate(lm, samples, out_dir=tmp_path / "once", **kw)  # one attempt: the first round alone
    once = _rows(tmp_path / "once")
    assert {r["prediction"] for r in once} == {"</answer>", ""}  # the coin really is a coin
    assert first["missing_answer_rows"] == sum(r["prediction"] == "" for r in once)

    N = 3
    m = evaluate(lm, samples, out_dir=tmp_path / "retry", retries_missing_answer=N, **kw)
    rows = _rows(tmp_path / "retry")
    attempts = [r["attempts"] for r in rows]
    for r0, r in zip(once, rows):
        assert r["prediction"] in ("</answer>", "")
        if r0["prediction"] == "</answer>":  # same generator state in round one: same first attempt ...
            assert (r["attempts"], r["prediction"]) == (1, "</answer>")  # ... and it was never resampled
        if r["prediction"] == "":
            assert r["attempts"] == 1 + N  # gave up after N retries
        else:
            assert 1 <= r["attempts"] <= 1 + N  # stopped at the first attempt that closed the answer
    # round k resampled exactly the rows that had used k attempts without closing the answer
    assert m["retry_rounds"] == [sum(k > j for k in attempts) for j in range(1, 1 + max(attempts))
                                 if sum(k > j for k in attempts)]
    assert m["retry_rounds"][0] == first["missing_answer_rows"]
    assert m["retried_rows"] == sum(k > 1 for k in attempts)
    assert m["missing_answer_rows"] == sum(r["prediction"] == "" for r in rows)
    # this seed exercises every case: right at once, after a retry, and never
    assert {1, 1 + N} <= set(attempts) and any(1 < k <= N for k in attempts)
    assert 0 < m["missing_answer_rows"] < first["missing_answer_rows"]


# ------------------------------------------------------------------ `mmr1 eval` on public formats

def _cli(tmp_path, name, data, capsys):
    args = ["eval", "--name", name, f"data.eval={data}", f"logging.run_dir={tmp_path / 'run'}",
            "model.tiny_family=qwen2_vl", "model.tiny_size=S", "model.device=cpu",
            "rollout.max_new_tokens=8", "rollout.batch_size=4", "logging.progress=false",
            "logging.tensorboard=false", "eval.retries_missing_answer=2", "eval.temperature=0.6", "eval.top_p=0.95"]
    assert main(args) == 0
    assert "still missing" in capsys.readouterr().out
    out = tmp_path / "run" / "eval" / name
    return json.loads((out / "metrics.json").read_text()), _rows(out)


def test_cli_eval_mathvista_json_and_geometry3k_jsonl(tmp_path, capsys):
    for i in range(3):
        make_image(w=28, h=28, seed=i).save(tmp_path / f"{i}.png")
    mv = [
        {"pid": "1", "question": "What is the angle?", "choices": ["30°", "45°"], "answer": "45°",
         "answer_type": "text", "question_type": "multi_choice", "precision": None, "image": "0.png",
         "metadata": {"category": "math-targeted-vqa", "task": "geometry problem solving"}},
        {"pid": "2", "question": "Area?", "choices": None, "answer": "1.5", "answer_type": "float",
         "question_type": "free_form", "precision": 1.0, "image": "1.png", "metadata": {}},
        {"pid": "3", "question": "How many?", "choices": None, "answer": "4", "answer_type": "integer",
         "question_type": "free_form", "precision": None, "image": "2.png", "metadata": {}},
    ]
    (tmp_path / "mv.json").write_text(json.dumps(mv))
    m, rows = _cli(tmp_path, "mathvista", tmp_path / "mv.json", capsys)
    assert m["n"] == 3 and m["sampling"] == {"temperature": 0.6, "top_p": 0.95, "seed": 0,
                                             "retries_missing_answer": 2}
    assert m["per_category"] == {"free_form": {"n": 2, "accuracy": 0.0}, "math-targeted-vqa": {"n": 1, "accuracy": 0.0}}
    # a random tiny model never closes an answer: every row was resampled twice, in two batched rounds
    assert [r["attempts"] for r in rows] == [3, 3, 3] and m["retry_rounds"] == [3, 3]
    assert (m["retried_rows"], m["missing_answer_rows"]) == (3, 3)
    assert [(r["id"], r["category"], r["answer"]) for r in rows] == [
        ("1", "math-targeted-vqa", ["45°"]), ("2", "free_form", ["1.5"]), ("3", "free_form", ["4"])]
    # eval grades each row against the loaded sample: MathVista's precision (1 decimal) applies to
    # the float question, not to the integer one; the choice question takes the letter or the text
    s_choice, s_float, s_int = load_samples(tmp_path / "mv.json").samples
    assert (s_float.precision, s_float.answer_type, s_int.answer_type) == (1, "float", "integer")

    def right(ans, s):
        return score_completion(f"<think>so</think><answer> Final Answer:{ans} </answer>", s)["correct"]

    assert right("1.46", s_float) and right("1.5", s_float) and not right("1.44", s_float)
    assert right("4", s_int) and right("4.4", s_int) and not right("5", s_int)  # MathVista truncates integers
    assert right("B", s_choice) and right("45°", s_choice) and not right("A", s_choice)

    write_jsonl(tmp_path / "geo.jsonl", [
        {"problem": "Find x.<image>Round to tenths.", "answer": "3.5", "images": ["0.png"]},
        {"problem": "Find y.", "answer": 12, "images": [{"bytes": None, "path": "1.png"}]},
    ])
    m, rows = _cli(tmp_path, "geo", tmp_path / "geo.jsonl", capsys)
    assert m["n"] == 2 and m["per_category"] == {"all": {"n": 2, "accuracy": 0.0}}
    assert [r["id"] for r in rows] == ["geo-1", "geo-2"] and [r["answer"] for r in rows] == [["3.5"], ["12"]]
    assert [r["attempts"] for r in rows] == [3, 3] and m["retry_rounds"] == [2, 2]
    logged = [json.loads(x) for x in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert any(r.get("eval/geo/retried_rows") == 2 for r in logged)
