"""Build complete tiny Qwen VL checkpoints locally: no hub, no download.

The directory written here has what a real checkpoint has (config, safetensors,
a byte-level BPE tokenizer with the Qwen special tokens and the real Qwen2-VL chat
template, an image processor), so it loads through the same code path.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import torch
from tokenizers import Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers

# The chat template shipped with Qwen2-VL-*-Instruct and Qwen2.5-VL-*-Instruct (chat_template.json).
QWEN2_VL_CHAT_TEMPLATE = (
    "{% set image_count = namespace(value=0) %}{% set video_count = namespace(value=0) %}"
    "{% for message in messages %}{% if loop.first and message['role'] != 'system' %}"
    "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n{% endif %}"
    "<|im_start|>{{ message['role'] }}\n{% if message['content'] is string %}"
    "{{ message['content'] }}<|im_end|>\n{% else %}{% for content in message['content'] %}"
    "{% if content['type'] == 'image' or 'image' in content or 'image_url' in content %}"
    "{% set image_count.value = image_count.value + 1 %}{% if add_vision_id %}"
    "Picture {{ image_count.value }}: {% endif %}<|vision_start|><|image_pad|><|vision_end|>"
    "{% elif content['type'] == 'video' or 'video' in content %}"
    "{% set video_count.value = video_count.value + 1 %}{% if add_vision_id %}"
    "Video {{ video_count.value }}: {% endif %}<|vision_start|><|video_pad|><|vision_end|>"
    "{% elif 'text' in content %}{{ content['text'] }}{% endif %}{% endfor %}<|im_end|>\n"
    "{% endif %}{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)

# Qwen2's pre-tokenizer split (digits one by one, words with a leading space).
QWEN_PRETOKENIZE_REGEX = (
    r"""(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"""
)

SPECIAL_TOKENS = [
    "<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|object_ref_start|>", "<|object_ref_end|>",
    "<|box_start|>", "<|box_end|>", "<|quad_start|>", "<|quad_end|>", "<|vision_start|>",
    "<|vision_end|>", "<|vision_pad|>", "<|image_pad|>", "<|video_pad|>",
]

# Text the tokenizer learns its merges from: the tags and words the recipes and worlds use.
_CORPUS = """
<think> </think> <answer> </answer> <reason> </reason> <search><img></search> <text_search> </text_search>
<information> </information> Final Answer: The answer is
A conversation between User and Assistant. The user asks a question, and the Assistant solves it.
The assistant first thinks about the reasoning process in the mind and then provides the user with the answer.
Output the thinking process in <think> </think> and final answer (number) in <answer> </answer> tags.
You are a helpful assistant. Look at the image. How many objects are there in the image? What is the total?
I see the following objects. Let me count them. Let me list the objects grouped by colour. Wait, let me check again.
Hmm. Alternatively, so the answer is. red green blue yellow purple orange gray black white cyan brown pink
circle square triangle cross diamond ring star cube sphere cylinder objects object shapes shape large small
each worth points point score sum total plus minus times more fewer than difference count counts counting
question answer image picture the a an of in on and or is are there what which who where how many much
0 1 2 3 4 5 6 7 8 9 10 11 12 + - * = , . : ; ( ) [ ] ? !
Searched results: Original user's question: Please analyze the search results and the question.
inspection candidate candidates query retrieve retrieval index result results best match matches
"""


@dataclass(frozen=True)
class TinySize:
    hidden: int
    layers: int
    heads: int
    kv_heads: int
    intermediate: int
    vision_dim: int
    vision_depth: int
    vision_heads: int


SIZES = {
    "S": TinySize(hidden=64, layers=2, heads=4, kv_heads=2, intermediate=128,
                  vision_dim=32, vision_depth=1, vision_heads=2),
    "M": TinySize(hidden=256, layers=4, heads=4, kv_heads=2, intermediate=512,
                  vision_dim=64, vision_depth=2, vision_heads=4),
    "L": TinySize(hidden=512, layers=8, heads=8, kv_heads=4, intermediate=1024,
                  vision_dim=128, vision_depth=2, vision_heads=4),
    "XL": TinySize(hidden=768, layers=12, heads=12, kv_heads=4, intermediate=2048,
                   vision_dim=256, vision_depth=4, vision_heads=8),
}
FAMILIES = ("qwen2_vl", "qwen2_5_vl", "qwen3_vl")


def mrope_section(head_dim: int) -> list[int]:
    """Split head_dim/2 rotary frequencies over (t, h, w) like Qwen's [16, 24, 24] for 128."""
    half = head_dim // 2
    t = half // 4
    h = (half - t) // 2
    return [t, h, half - t - h]


def build_tokenizer(vocab_size: int = 1024, extra_text: str = ""):
    """A byte-level BPE with the Qwen pre-tokenizer and special tokens, trained in well under a second."""
    from transformers.models.qwen2.tokenization_qwen2 import Qwen2Tokenizer

    tok = Tokenizer(models.BPE())
    tok.normalizer = normalizers.NFC()
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(QWEN_PRETOKENIZE_REGEX), behavior="isolated", invert=False),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
    ])
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=["<|endoftext|>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    from ..data.worlds import corpus_text  # the worlds' prompts and solutions: short token sequences

    lines = (_CORPUS + "\n" + corpus_text() + "\n" + extra_text).splitlines()
    tok.train_from_iterator(lines * 4, trainer=trainer)
    state = json.loads(tok.to_str())
    vocab = state["model"]["vocab"]
    merges = [tuple(m) if isinstance(m, list) else tuple(m.split(" ")) for m in state["model"]["merges"]]
    hf_tok = Qwen2Tokenizer(vocab=vocab, merges=merges, padding_side="left",
                            additional_special_tokens=SPECIAL_TOKENS[1:], errors="replace")
    hf_tok.pad_token = "<|endoftext|>"
    hf_tok.eos_token = "<|im_end|>"
    hf_tok.chat_template = QWEN2_VL_CHAT_TEMPLATE
    return hf_tok


def _configs(family: str, size: TinySize, tok, max_positions: int):
    ids = {t: tok.convert_tokens_to_ids(t) for t in SPECIAL_TOKENS}
    head_dim = size.hidden // size.heads
    text = dict(vocab_size=len(tok), hidden_size=size.hidden, intermediate_size=size.intermediate,
                num_hidden_layers=size.layers, num_attention_heads=size.heads,
                num_key_value_heads=size.kv_heads, max_position_embeddings=max_positions,
                rms_norm_eps=1e-6, bos_token_id=ids["<|endoftext|>"], eos_token_id=ids["<|im_end|>"],
                pad_token_id=ids["<|endoftext|>"],
                rope_parameters={"rope_type": "default", "rope_theta": 1e6,
                                 "mrope_section": mrope_section(head_dim)})
    top = dict(image_token_id=ids["<|image_pad|>"], video_token_id=ids["<|video_pad|>"],
               vision_start_token_id=ids["<|vision_start|>"], vision_end_token_id=ids["<|vision_end|>"],
               tie_word_embeddings=False)
    if family == "qwen2_vl":
        from transformers import Qwen2VLConfig

        vision = dict(depth=size.vision_depth, embed_dim=size.vision_dim, hidden_size=size.hidden,
                      num_heads=size.vision_heads, mlp_ratio=2, patch_size=14, spatial_merge_size=2,
                      temporal_patch_size=2)
        return Qwen2VLConfig(text_config=text, vision_config=vision, **top)
    if family == "qwen2_5_vl":
        from transformers import Qwen2_5_VLConfig

        vision = dict(depth=size.vision_depth, hidden_size=size.vision_dim,
                      intermediate_size=2 * size.vision_dim, num_heads=size.vision_heads,
                      out_hidden_size=size.hidden, patch_size=14, spatial_merge_size=2,
                      temporal_patch_size=2, window_size=112,
                      fullatt_block_indexes=[size.vision_depth - 1])
        return Qwen2_5_VLConfig(text_config=text, vision_config=vision, **top)
    if family == "qwen3_vl":
        from transformers import Qwen3VLConfig

        text.update(head_dim=head_dim)
        text["rope_parameters"] = {"rope_type": "default", "rope_theta": 5e6,
                                   "mrope_section": mrope_section(head_dim), "mrope_interleaved": True}
        vision = dict(depth=size.vision_depth, hidden_size=size.vision_dim,
                      intermediate_size=2 * size.vision_dim, num_heads=size.vision_heads,
                      out_hidden_size=size.hidden, patch_size=16, spatial_merge_size=2,
                      temporal_patch_size=2, num_position_embeddings=64,
                      deepstack_visual_indexes=[size.vision_depth - 1])
        return Qwen3VLConfig(text_config=text, vision_config=vision, **top)
    raise ValueError(f"unknown family {family!r}; choose one of {', '.join(FAMILIES)}")


def build_tiny_model(out: str | Path, family: str = "qwen2_5_vl", size: str = "M", seed: int = 0,
                     image_size: int = 112, vocab_size: int = 1024, extra_text: str = "") -> Path:
    """Write a complete random-weight checkpoint directory and return its path.

    `image_size` fixes the image processor's pixel budget so that an image of
    image_size x image_size keeps its size (one merged token per 28x28 cell).
    """
    from transformers import GenerationConfig

    from .adapters import adapter_for_family
    from .processor import PROCESSOR_CLASSES

    if size not in SIZES:
        raise ValueError(f"unknown size {size!r}; choose one of {', '.join(SIZES)}")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    tok = build_tokenizer(vocab_size, extra_text)
    config = _configs(family, SIZES[size], tok, max_positions=4096)
    adapter = adapter_for_family(family)
    torch.manual_seed(seed)
    model = adapter.model_class()(config)
    model.generation_config = GenerationConfig(
        eos_token_id=[tok.convert_tokens_to_ids("<|im_end|>"), tok.convert_tokens_to_ids("<|endoftext|>")],
        pad_token_id=tok.convert_tokens_to_ids("<|endoftext|>"), do_sample=False)
    model.save_pretrained(out, safe_serialization=True)

    from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil

    patch = 16 if family == "qwen3_vl" else 14
    cell = patch * 2
    side = max(cell, (image_size // cell) * cell)
    pixels = side * side
    image_processor = Qwen2VLImageProcessorPil(
        min_pixels=min(pixels, cell * cell * 4), max_pixels=max(pixels, cell * cell * 4),
        size={"shortest_edge": min(pixels, cell * cell * 4), "longest_edge": max(pixels, cell * cell * 4)},
        patch_size=patch, merge_size=2, temporal_patch_size=2)
    processor = PROCESSOR_CLASSES[family](image_processor=image_processor, tokenizer=tok,
                                          chat_template=QWEN2_VL_CHAT_TEMPLATE)
    processor.save_pretrained(out)
    tok.save_pretrained(out)
    (out / "mmr1_tiny.json").write_text(json.dumps(
        {"family": family, "size": size, "seed": seed, "image_size": image_size,
         "vocab_size": len(tok)}, indent=2) + "\n")
    return out
