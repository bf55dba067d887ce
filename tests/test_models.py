import json

import pytest
import torch

from mmr1.errors import ModelError
from mmr1.models import ADAPTERS, load_model
from mmr1.rollout.hf import generate

from .conftest import solid_image


@pytest.mark.parametrize("family", ["qwen2_vl", "qwen2_5_vl", "qwen3_vl"])
def test_tiny_round_trip_build_save_load_generate(tiny_dirs, family, tmp_path):
    path = tiny_dirs[family]
    for name in ("config.json", "model.safetensors", "tokenizer.json", "chat_template.jinja",
                 "processor_config.json", "generation_config.json"):
        assert (path / name).exists(), name
    assert json.loads((path / "config.json").read_text())["model_type"] == family
    lm = load_model(path)
    assert type(lm.model).__name__ == ADAPTERS[family].model_class_name
    # save again and reload: identical weights
    lm.model.save_pretrained(tmp_path / "again")
    lm.processor.save_pretrained(tmp_path / "again")
    lm.tokenizer.save_pretrained(tmp_path / "again")
    lm2 = load_model(tmp_path / "again")
    for (n1, p1), (n2, p2) in zip(lm.model.state_dict().items(), lm2.model.state_dict().items()):
        assert n1 == n2 and torch.equal(p1, p2)
    msgs = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "How many red objects?"}]}]
    outs = generate(lm2, [(msgs, [solid_image()]), (msgs, [solid_image((0, 0, 255))])], max_new_tokens=6)
    assert len(outs) == 2
    vision_ids = set(lm2.adapter.suppressed_token_ids(lm2.tokenizer))
    for o in outs:
        assert 1 <= len(o.token_ids) <= 6
        assert not vision_ids & set(o.token_ids)  # vision special tokens are never sampled
        assert o.finish_reason in ("stop", "length")


def test_chat_template_with_images(tiny_dirs):
    lm = load_model(tiny_dirs["qwen2_5_vl"])
    msgs = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "Count."}]},
            {"role": "assistant", "content": [{"type": "text", "text": "<answer>2</answer>"}]}]
    text = lm.adapter.render(lm.processor, msgs, add_generation_prompt=False)
    assert text == ("<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n"
                    "<|im_start|>user\n<|vision_start|><|image_pad|><|vision_end|>Count.<|im_end|>\n"
                    "<|im_start|>assistant\n<answer>2</answer><|im_end|>\n")
    prompt = lm.adapter.render(lm.processor, msgs[:1], add_generation_prompt=True)
    assert prompt.endswith("<|im_start|>assistant\n")
    batch = lm.adapter.encode(lm.processor, [prompt], [[solid_image(size=112)]])
    pad_id = lm.tokenizer.convert_tokens_to_ids("<|image_pad|>")
    # 112x112 -> 8x8 patches of 14 px -> 4x4 merged tokens
    assert int((batch["input_ids"] == pad_id).sum()) == 16
    assert batch["image_grid_thw"].tolist() == [[1, 8, 8]]
    assert int(batch["mm_token_type_ids"].sum()) == 16


def test_freeze_vision_and_lora(tiny_dirs):
    lm = load_model(tiny_dirs["qwen2_5_vl"], freeze_vision=True)
    vision = [p.requires_grad for n, p in lm.model.named_parameters() if "visual" in n]
    text = [p.requires_grad for n, p in lm.model.named_parameters() if "visual" not in n]
    assert vision and not any(vision) and all(text)
    lm = load_model(tiny_dirs["qwen2_5_vl"], freeze_vision=True, lora={"r": 4, "alpha": 8})
    trainable = [n for n, p in lm.model.named_parameters() if p.requires_grad]
    assert trainable and all("lora_" in n for n in trainable)
    assert not any("visual" in n for n in trainable)


def test_load_errors(tmp_path):
    with pytest.raises(ModelError, match="no config.json"):
        load_model(tmp_path)
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "llama"}))
    with pytest.raises(ModelError, match="model_type 'llama' is not supported"):
        load_model(tmp_path)


def test_pixel_budget_overrides_set_the_image_token_grid(tiny_dirs):
    """model.min_pixels / max_pixels reach the image processor (transformers 5 stores its size as a SizeDict)."""
    image = solid_image(size=224)
    grids = {}
    for budget in (None, 28 * 28 * 4):
        lm = load_model(tiny_dirs["qwen2_5_vl"], min_pixels=28 * 28 if budget else None, max_pixels=budget)
        grids[budget] = lm.processor.image_processor(images=[image], return_tensors="pt")["image_grid_thw"].tolist()
    assert grids[None] == [[1, 8, 8]] and grids[28 * 28 * 4] == [[1, 4, 4]]
