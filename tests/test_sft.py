import pytest
import torch

from mmr1.config import load_config
from mmr1.data.encode import assistant_mask, collate, encode_for_sft
from mmr1.data.schema import Sample, assistant_turn, user_turn
from mmr1.models import load_model
from mmr1.train.run_dir import RunDir
from mmr1.train.sft import bucketed_batches, train_sft

from .conftest import solid_image

COLOURS = {"red": (220, 30, 30), "blue": (30, 30, 220), "green": (30, 180, 30)}


def colour_samples(n=24):
    out = []
    names = list(COLOURS)
    for i in range(n):
        c = names[i % len(names)]
        out.append(Sample(id=f"s{i}", messages=[user_turn("What colour is the image?"),
                                                assistant_turn(f"<think>It looks {c}.</think><answer>{c}</answer>")],
                          images=[solid_image(COLOURS[c])], answers=[c], source=f"mem:{i + 1}"))
    return out


def test_assistant_mask_hand_example():
    S, E = 1, 2  # <|im_start|>, <|im_end|>
    A = [7, 8]  # "assistant\n"
    ids = [S, 5, 9, E, 3, S, *A, 40, 41, E, 3, S, 5, 9, E, 3, S, *A, 50, E, 3]
    mask = assistant_mask(ids, S, E, A)
    assert [i for i, m in enumerate(mask) if m] == [8, 9, 10, 20, 21]  # 40 41 <|im_end|>, 50 <|im_end|>


def test_assistant_only_labels_multi_turn(tiny_dirs):
    lm = load_model(tiny_dirs["qwen2_5_vl"])
    s = Sample(id="mt", images=[solid_image()], messages=[
        user_turn("First question?"), assistant_turn("first reply"),
        {"role": "user", "content": [{"type": "text", "text": "Second question?"}]},
        assistant_turn("second reply")])
    enc = encode_for_sft(s, lm.processor, lm.adapter, max_length=512)
    tok = lm.tokenizer
    learned = tok.decode(enc.labels[enc.labels >= 0])
    assert learned == "first reply<|im_end|>second reply<|im_end|>"
    # image tokens and every user/system token carry no loss
    pad = tok.convert_tokens_to_ids("<|image_pad|>")
    assert int((enc.input_ids == pad).sum()) == 16
    assert not bool((enc.labels == pad).any())


def test_collate_right_pads(tiny_dirs):
    lm = load_model(tiny_dirs["qwen2_5_vl"])
    a, b = colour_samples(2)
    b.messages[-1] = assistant_turn("<think>longer reasoning here and more</think><answer>blue</answer>")
    ea, eb = (encode_for_sft(x, lm.processor, lm.adapter, 512) for x in (a, b))
    batch = collate([ea, eb], pad_id=lm.tokenizer.pad_token_id)
    T = max(len(ea), len(eb))
    assert batch["input_ids"].shape == (2, T)
    assert batch["attention_mask"].sum(1).tolist() == [len(ea), len(eb)]
    assert batch["image_grid_thw"].shape == (2, 3)
    assert batch["pixel_values"].shape[0] == 2 * 64


def test_bucketed_batches_deterministic_and_complete():
    lengths = [5, 50, 7, 48, 6, 49, 8, 47, 9, 46]
    b1 = bucketed_batches(lengths, 2, seed=3, epoch=0)
    assert b1 == bucketed_batches(lengths, 2, seed=3, epoch=0)
    assert b1 != bucketed_batches(lengths, 2, seed=3, epoch=1)
    assert sorted(i for b in b1 for i in b) == list(range(10))


def _cfg(run_dir, **over):
    base = ["trainer.lr=5e-3", "trainer.batch_size=4", "trainer.max_steps=6", "trainer.warmup_ratio=0",
            "trainer.save_every=3", "logging.progress=false", "logging.tensorboard=false", "logging.log_every=1",
            f"logging.run_dir={run_dir}"]
    return load_config(overrides=base + [f"{k}={v}" for k, v in over.items()])


def test_sft_learns_and_resume_is_exact(tiny_dirs, tmp_path):
    samples = colour_samples(24)
    # uninterrupted: 6 steps
    cfg = _cfg(tmp_path / "full")
    lm = load_model(tiny_dirs["qwen2_5_vl"])
    res = train_sft(cfg, lm, samples, RunDir(cfg.logging.run_dir, tensorboard=False), progress=False)
    assert res.steps == 6
    full = {k: v.clone() for k, v in lm.model.state_dict().items()}
    # a crash right after the step-3 checkpoint, then a rerun of the same command resumes to 6
    from mmr1.train.checkpoint import Checkpointer

    real_save = Checkpointer.save

    def crashing_save(self, step, *a, **k):
        path = real_save(self, step, *a, **k)
        if step == 3:
            raise RuntimeError("simulated crash")
        return path

    cfg6 = _cfg(tmp_path / "part")
    lm_a = load_model(tiny_dirs["qwen2_5_vl"])
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(Checkpointer, "save", crashing_save)
        with pytest.raises(RuntimeError, match="simulated crash"):
            train_sft(cfg6, lm_a, samples, RunDir(cfg6.logging.run_dir, tensorboard=False), progress=False)
    assert not (tmp_path / "part" / "final").exists()
    torch.manual_seed(12345)  # resume must not depend on the RNG state it starts from
    lm_b = load_model(tiny_dirs["qwen2_5_vl"])
    train_sft(cfg6, lm_b, samples, RunDir(cfg6.logging.run_dir, tensorboard=False), progress=False)
    for k, v in lm_b.model.state_dict().items():
        assert torch.equal(v, full[k]), k
    # the loss went down over training
    import json

    losses = [json.loads(line)["sft/loss"] for line in open(tmp_path / "full" / "metrics.jsonl")]
    assert losses[-1] < losses[0]
