"""The vLLM engine's pure conversions, checked without vLLM (it needs CUDA and is not installed here).

vLLM's output objects are stood in for by dataclasses with the attribute names vLLM uses
(RequestOutput.outputs[i].token_ids / .logprobs / .finish_reason / .stop_reason / .text,
Logprob.logprob); vLLM's own placeholder expansion (one <|image_pad|> per image -> the image's
grid_t * grid_h * grid_w / merge_size**2 pads) is simulated by `expand_like_vllm`.
"""

import copy
import sys
from dataclasses import dataclass, field

import pytest
import torch

from mmr1.models.overrides import EmbedOverrides
from mmr1.rollout.batch import encode_prompts
from mmr1.rollout.hf import HFEngine
from mmr1.rollout.vllm_engine import (INSTALL_HINT, SUPPRESS_BIAS, VLLMEngine, collapse_image_pads,
                                      from_vllm_output, hf_weights_for_vllm, image_pad_id, llm_kwargs,
                                      processor_pixels, request_seeds, sampling_kwargs, supports_logprobs_mode,
                                      to_vllm_prompt)

from .conftest import solid_image

FAMILIES = ["qwen2_vl", "qwen2_5_vl", "qwen3_vl"]


def image(rgb, w, h):
    from PIL import Image

    return Image.new("RGB", (w, h), rgb)


def msgs(text, n_images, system=None):
    out = [{"role": "system", "content": system}] if system else []
    return out + [{"role": "user", "content": [{"type": "image"}] * n_images + [{"type": "text", "text": text}]}]


# ---------------------------------------------------------------- stand-ins for vLLM's outputs

@dataclass
class Logprob:
    logprob: float
    rank: int | None = None
    decoded_token: str | None = None


@dataclass
class CompletionOutput:
    index: int
    text: str
    token_ids: list
    cumulative_logprob: float | None
    logprobs: list | None
    finish_reason: str | None = None
    stop_reason: int | str | None = None


@dataclass
class RequestOutput:
    request_id: str
    prompt_token_ids: list
    outputs: list = field(default_factory=list)


def expand_like_vllm(ids, pad_id, counts):
    """What vLLM's PromptReplacement does to a token prompt: the k-th pad becomes counts[k] pads."""
    out, k = [], 0
    for t in ids:
        if t == pad_id:
            out += [pad_id] * counts[k]
            k += 1
        else:
            out.append(t)
    assert k == len(counts)
    return out


def completion_output(ids, lps, finish, stop_reason=None, extra=None, index=0):
    steps = []
    for t, lp in zip(ids, lps):
        step = {t: Logprob(lp, rank=1)}
        step.update(extra or {})  # top-k alternatives that are not the sampled token
        steps.append(step)
    return CompletionOutput(index, "ignored", list(ids), sum(lps), steps, finish, stop_reason)


# ---------------------------------------------------------------- prompts

def test_collapse_image_pads():
    P = 7
    assert collapse_image_pads([1, P, P, P, 2, P, 3, P, P], P) == [1, P, 2, P, 3, P]
    assert collapse_image_pads([P, P, 4, 5, 5], P) == [P, 4, 5, 5]  # only pad runs collapse
    assert collapse_image_pads(torch.tensor([9, P, P]).tolist(), P) == [9, P]
    assert collapse_image_pads([], P) == []


@pytest.mark.parametrize("family", FAMILIES)
def test_vllm_prompt_expands_to_the_processor_ids(lms, family):
    """vLLM's expansion of the engine's prompt gives exactly the ids the trainer scores (encode_prompts)."""
    lm = lms(family)
    images = [image((0, 0, 255), 56, 84), solid_image((200, 30, 30), 112)]
    prompt = (msgs("Count the objects in both images.", 2, system="You are a helpful assistant."), images)
    vp = to_vllm_prompt(lm, prompt)
    pad = image_pad_id(lm)
    ids = vp["prompt_token_ids"]
    assert ids.count(pad) == 2
    assert vp["multi_modal_data"]["image"] == images and vp["multi_modal_data"]["image"][0] is images[0]

    enc = encode_prompts(lm, [prompt], "left")
    proc = enc["input_ids"][0][enc["attention_mask"][0].bool()].tolist()
    assert proc.count(pad) > 2  # the HF processor expanded the pads ...
    assert collapse_image_pads(proc, pad) == ids  # ... and collapsing them gives the vLLM prompt
    merge = lm.processor.image_processor.merge_size
    counts = (enc["image_grid_thw"].prod(-1) // merge**2).tolist()
    assert counts[0] != counts[1]
    assert expand_like_vllm(ids, pad, counts) == proc


def test_vllm_prompt_text_only_and_errors(lms):
    lm = lms("qwen2_5_vl")
    prompt = (msgs("What is the total?", 0), [])
    vp = to_vllm_prompt(lm, prompt)
    assert "multi_modal_data" not in vp
    enc = encode_prompts(lm, [prompt], "left")
    assert vp["prompt_token_ids"] == enc["input_ids"][0].tolist()
    with pytest.raises(ValueError, match="1 image placeholders but 0 images"):
        to_vllm_prompt(lm, (msgs("Count.", 1), []))
    ov = EmbedOverrides(lm.tokenizer.convert_tokens_to_ids("<|vision_pad|>"), torch.zeros(2, 8))
    with pytest.raises(NotImplementedError, match="rollout.engine=hf"):
        to_vllm_prompt(lm, (msgs("Count.", 0), [], ov))
    assert to_vllm_prompt(lm, (msgs("Count.", 0), [], None)) == to_vllm_prompt(lm, (msgs("Count.", 0), []))


# ---------------------------------------------------------------- outputs

def test_outputs_become_completions_like_the_hf_engine(lms):
    lm = lms("qwen2_5_vl")
    tok = lm.tokenizer
    hf = HFEngine(lm)
    end = tok.convert_tokens_to_ids("<|im_end|>")
    stop = ["</answer>"]
    body = tok.encode("<think> count </think> <answer>5</answer> extra", add_special_tokens=False)
    cut = tok.encode("<think> count </think> <answer>5</answer>", add_special_tokens=False)
    plain = tok.encode("red green blue", add_special_tokens=False)
    other = tok.encode("circle", add_special_tokens=False)[0]
    outs = [
        completion_output(plain + [end], [-0.5 - i for i in range(len(plain) + 1)], "stop", stop_reason=end),
        completion_output(cut, [-0.25] * len(cut), "stop", stop_reason="</answer>", index=1,
                          extra={other: Logprob(-9.0, rank=2)}),
        completion_output(body, [-1.0] * len(body), "length", index=2),
    ]
    group = from_vllm_output(RequestOutput("0", [1, 2], outs), n=3, tokenizer=tok, end_ids=hf.end_ids, stop=stop)

    eos, by_string, length = group
    assert eos.token_ids == plain + [end] and eos.finish_reason == "stop"
    assert eos.text == "red green blue"  # end token kept as the last id, not in the text
    assert eos.logprobs == [-0.5 - i for i in range(len(plain) + 1)]
    assert by_string.finish_reason == "stop" and by_string.token_ids == cut
    assert by_string.text.endswith("</answer>") and by_string.logprobs == [-0.25] * len(cut)
    assert length.finish_reason == "length" and length.text.endswith(" extra")
    # The same text, ids and finish reason as the HF engine's own conversion of those tokens.
    assert eos.text == hf._completion(plain + [end], [], "stop", stop).text
    assert by_string.text == hf._completion(cut, [], "stop_string", stop).text
    assert length.text == hf._completion(body, [], "length", stop).text
    # Without vLLM's stop_reason, a "stop" that did not end on an end token was a stop string.
    outs[1].stop_reason = None
    again = from_vllm_output(RequestOutput("0", [1], outs), n=3, tokenizer=tok, end_ids=hf.end_ids, stop=stop)
    assert again[1].text == by_string.text


def test_stop_string_cut_right_after_the_first_stop(lms):
    lm = lms("qwen2_5_vl")
    tok = lm.tokenizer
    ids = tok.encode("<answer>5</answer> extra words", add_special_tokens=False)
    out = completion_output(ids, [-1.0] * len(ids), "stop", stop_reason="</answer>")
    (c,) = from_vllm_output(RequestOutput("0", [1], [out]), n=1, tokenizer=tok, end_ids={0},
                            stop=["words", "</answer>"])
    assert c.text == "<answer>5</answer>"
    assert c.token_ids == ids  # the ids stay as sampled


def test_bad_outputs_raise(lms):
    tok = lms("qwen2_5_vl").tokenizer
    ok = completion_output([5, 6], [-1.0, -2.0], "length")
    with pytest.raises(ValueError, match="expected n=2"):
        from_vllm_output(RequestOutput("0", [1], [ok]), n=2, tokenizer=tok, end_ids={0})
    aborted = completion_output([5], [-1.0], "abort")
    with pytest.raises(RuntimeError, match="abort"):
        from_vllm_output(RequestOutput("0", [1], [aborted]), n=1, tokenizer=tok, end_ids={0})
    no_lp = CompletionOutput(0, "", [5], None, None, "length")
    with pytest.raises(ValueError, match="logprobs=0"):
        from_vllm_output(RequestOutput("0", [1], [no_lp]), n=1, tokenizer=tok, end_ids={0})
    wrong = completion_output([5, 6], [-1.0, -2.0], "length")
    wrong.logprobs[1] = {7: Logprob(-3.0)}
    with pytest.raises(ValueError, match="sampled token 6"):
        from_vllm_output(RequestOutput("0", [1], [wrong]), n=1, tokenizer=tok, end_ids={0})


# ---------------------------------------------------------------- sampling settings

def test_request_seeds():
    assert request_seeds(None, 3) == [None, None, None]
    a = request_seeds(torch.Generator().manual_seed(0), 4)
    assert a == request_seeds(torch.Generator().manual_seed(0), 4)
    assert a != request_seeds(torch.Generator().manual_seed(1), 4)
    assert len(set(a)) == 4 and all(isinstance(s, int) and 0 <= s < 2**31 for s in a)
    # One generator per prompt: a prompt's seed does not depend on the other prompts of the batch.
    gens = lambda *seeds: [torch.Generator().manual_seed(s) for s in seeds]  # noqa: E731
    assert request_seeds(gens(5, 6, 7), 3)[1:] == request_seeds(gens(6, 7), 2)
    with pytest.raises(ValueError, match="2 generators for 3 prompts"):
        request_seeds(gens(1, 2), 3)


def test_sampling_kwargs(lms):
    lm = lms("qwen2_5_vl")
    hf = HFEngine(lm)
    common = dict(n=4, max_new_tokens=16, stop=["</answer>"], seed=11, end_ids=hf.end_ids,
                  suppress_ids=hf.suppress.tolist())
    kw = sampling_kwargs(min_new_tokens=3, temperature=0.7, top_p=0.9, do_sample=True, **common)
    assert (kw["n"], kw["max_tokens"], kw["min_tokens"], kw["temperature"], kw["top_p"]) == (4, 16, 3, 0.7, 0.9)
    assert kw["stop"] == ["</answer>"] and kw["seed"] == 11 and kw["logprobs"] == 0
    assert kw["stop_token_ids"] == sorted(hf.end_ids)
    assert kw["logit_bias"] == {t: SUPPRESS_BIAS for t in hf.suppress.tolist()} and len(kw["logit_bias"]) > 0
    assert image_pad_id(lm) in kw["logit_bias"]
    greedy = sampling_kwargs(min_new_tokens=40, temperature=0.7, top_p=0.9, do_sample=False, **common)
    assert greedy["temperature"] == 0.0 and greedy["top_p"] == 1.0
    assert greedy["min_tokens"] == 16  # clamped to max_tokens, which vLLM requires
    assert sampling_kwargs(min_new_tokens=0, temperature=1.0, top_p=1.0, do_sample=True,
                           **{**common, "stop": []})["stop"] is None
    with pytest.raises(ValueError, match="max_new_tokens >= 1"):
        sampling_kwargs(min_new_tokens=0, temperature=1.0, top_p=1.0, do_sample=True,
                        **{**common, "max_new_tokens": 0})


def test_processor_pixels(lms):
    """vLLM must resize images as the trainer's processor does, or the image token counts differ."""
    from types import SimpleNamespace

    lm = lms("qwen2_5_vl")
    size = lm.processor.image_processor.size
    assert processor_pixels(lm.processor) == {"min_pixels": size.shortest_edge, "max_pixels": size.longest_edge}
    assert size.shortest_edge != size.longest_edge
    older = SimpleNamespace(image_processor=SimpleNamespace(min_pixels=100, max_pixels=900, size=None))
    assert processor_pixels(older) == {"min_pixels": 100, "max_pixels": 900}
    as_dict = SimpleNamespace(image_processor=SimpleNamespace(size={"shortest_edge": 7, "longest_edge": 70}))
    assert processor_pixels(as_dict) == {"min_pixels": 7, "max_pixels": 70}


def test_llm_kwargs(lms):
    lm = lms("qwen2_5_vl")
    pixels = processor_pixels(lm.processor)
    common = dict(gpu_memory_utilization=0.4, sleep=True, dtype="bfloat16", seed=3, max_images_per_prompt=5)
    old = llm_kwargs(lm, version="0.9.2", **common)
    assert "logprobs_mode" not in old and "max_model_len" not in old
    assert old["model"] == str(lm.path) and old["tokenizer"] == str(lm.path)
    assert old["enable_sleep_mode"] is True and old["gpu_memory_utilization"] == 0.4 and old["seed"] == 3
    assert old["limit_mm_per_prompt"] == {"image": 5, "video": 0}
    assert old["mm_processor_kwargs"] == pixels
    new = llm_kwargs(lm, version="0.10.2", max_model_len=4096, enforce_eager=True, **common)
    assert new["logprobs_mode"] == "processed_logprobs" and new["max_model_len"] == 4096
    assert new["enforce_eager"] is True  # extra engine arguments pass through
    assert supports_logprobs_mode("0.11.1rc2.dev45+g1234abc") and not supports_logprobs_mode("0.8.5.post1")


# ---------------------------------------------------------------- weights

ALLOWED_PREFIXES = ("model.language_model.", "model.visual.", "lm_head.")  # what vLLM's Qwen VL mapper maps


def test_weights_for_vllm_plain_model(lms):
    model = lms("qwen2_5_vl").model
    sd = model.state_dict()
    got = list(hf_weights_for_vllm(model))
    assert [k for k, _ in got] == list(sd)
    assert all(k.startswith(ALLOWED_PREFIXES) for k, _ in got)
    assert all(torch.equal(v, sd[k]) and not v.requires_grad for k, v in got)


def test_weights_for_vllm_merge_lora(tiny_dirs):
    from mmr1.models import load_model
    from mmr1.train.merge import merged_weights

    lm = load_model(tiny_dirs["qwen2_5_vl"], lora={"r": 4, "alpha": 8})
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():  # LoRA B starts at zero; give it values so the merge changes the weights
        for name, p in lm.model.named_parameters():
            if "lora_B" in name:
                p.copy_(torch.randn(p.shape, generator=g) * 0.1)
    before = {k: v.clone() for k, v in lm.model.state_dict().items()}
    got = dict(hf_weights_for_vllm(lm.model))
    ref = copy.deepcopy(lm.model).merge_and_unload().state_dict()
    assert set(got) == set(ref)
    assert all(k.startswith(ALLOWED_PREFIXES) and "lora_" not in k and "base_layer" not in k for k in got)
    for k in ref:
        assert torch.allclose(got[k], ref[k], atol=1e-6), k
    q = "model.language_model.layers.0.self_attn.q_proj.weight"
    base_q = before["base_model.model.model.language_model.layers.0.self_attn.q_proj.base_layer.weight"]
    assert (got[q] - base_q).abs().max() > 1e-3  # the LoRA update is in the pushed weight
    v = "model.visual.blocks.0.attn.qkv.weight"  # no LoRA on the vision tower: passed as it is
    assert torch.equal(got[v], before[f"base_model.model.{v}"])
    assert all(torch.equal(t, before[k]) for k, t in lm.model.state_dict().items())  # the model is untouched
    saved = merged_weights(lm.model, before)  # the sharded final checkpoint's merge: the same weights
    assert set(saved) == set(ref) and all(torch.equal(saved[k], got[k]) for k in ref)


# ---------------------------------------------------------------- construction without vLLM

def test_engine_without_vllm_names_the_install(lms, monkeypatch):
    monkeypatch.setitem(sys.modules, "vllm", None)  # what `import vllm` sees when vLLM is not installed
    with pytest.raises(ImportError) as err:
        VLLMEngine(lms("qwen2_5_vl"), gpu_memory_utilization=0.3)
    assert str(err.value) == INSTALL_HINT
    assert "pip install 'vllm>=0.8'" in str(err.value) and "rollout.engine=hf" in str(err.value)


def test_grpo_with_the_vllm_engine_but_no_vllm_is_one_line(tiny_dirs, tmp_path, capsys):
    from mmr1.cli import main

    assert main(["grpo", f"model.path={tiny_dirs['qwen2_5_vl']}", "rollout.engine=vllm", "data.train_size=8",
                 "logging.progress=false", "logging.tensorboard=false", f"logging.run_dir={tmp_path}"]) == 2
    err = [line for line in capsys.readouterr().err.splitlines() if line.startswith("error:")]
    assert len(err) == 1 and "rollout.engine=vllm" in err[0] and "pip install" in err[0]
