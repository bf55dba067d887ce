"""Forward passes that compute logits only where they are needed.

A full-vocabulary projection over every prompt position is most of the memory
of a VLM training step; SFT and RL only need logits at target positions.
"""

from __future__ import annotations

import torch

from .overrides import OVERRIDES_KEY, embed_inputs

MODEL_INPUT_KEYS = ("input_ids", "attention_mask", "pixel_values", "image_grid_thw", "mm_token_type_ids",
                    "position_ids")


def unwrap(model):
    """The HF ...ForConditionalGeneration under a peft wrapper (LoRA layers stay injected)."""
    from peft import PeftModel

    # peft also sets `peft_config` on the wrapped HF model, so test the wrapper's class, not attributes.
    return model.get_base_model() if isinstance(model, PeftModel) else model


def rope_positions(model, batch: dict) -> torch.Tensor:
    """M-RoPE position ids [3, B, T] for a padded batch (pads get 0).

    Passed explicitly instead of letting the model derive them: the model caches
    `rope_deltas` across calls, and with a stale cache a text-only forward falls
    back to positions that ignore left padding. The rollout engine and the
    training forward both use this, so they place every token identically.
    """
    ids = batch["input_ids"]
    mm = batch.get("mm_token_type_ids")
    if mm is None:
        mm = torch.zeros_like(ids)
    pos, _ = unwrap(model).model.get_rope_index(ids, mm_token_type_ids=mm, image_grid_thw=batch.get("image_grid_thw"),
                                                attention_mask=batch.get("attention_mask"))
    return pos


def hidden_states(model, batch: dict) -> torch.Tensor:
    """Last hidden states [B, T, H] of the language model for a batch of model inputs."""
    hf = unwrap(model)
    inputs = {k: batch[k] for k in MODEL_INPUT_KEYS if k in batch and batch[k] is not None}
    if "position_ids" not in inputs:
        inputs["position_ids"] = rope_positions(hf, inputs)
    if batch.get(OVERRIDES_KEY) is not None:  # placeholder rows of the input embeddings (models/overrides.py)
        inputs["inputs_embeds"] = embed_inputs(hf, inputs["input_ids"], batch[OVERRIDES_KEY])
    out = hf.model(**inputs, use_cache=False, return_dict=True)
    return out.last_hidden_state


def shared_prefix_hidden_states(model, batch: dict) -> torch.Tensor:
    """Hidden states [B, Tc, H] that predict each completion token, for a grouped batch.

    The distinct prompts (with their images) run once, left-padded like the rollout
    engine's prefill; their per-layer keys/values are gathered to the completion rows
    (`row_prompt`) and the completions run on top of them. Gradients reach the prompt
    positions (and the vision tower) through the shared keys/values, so this equals the
    one-row-per-completion forward, at a 1/G share of the prompt's compute.
    Position j of the result predicts completion token j: j = 0 is the prompt's last
    hidden state, j >= 1 the completion's hidden state at j - 1.
    """
    hf = unwrap(model)
    prompt = {k: batch[f"prompt_{k}"] for k in ("input_ids", "attention_mask", "mm_token_type_ids", "position_ids")}
    for k in ("pixel_values", "image_grid_thw"):
        if batch.get(k) is not None:
            prompt[k] = batch[k]
    if batch.get(OVERRIDES_KEY) is not None:  # one per distinct prompt row
        prompt["inputs_embeds"] = embed_inputs(hf, prompt["input_ids"], batch[OVERRIDES_KEY])
    out = hf.model(**prompt, use_cache=True, return_dict=True)
    rows = batch["row_prompt"]
    first = out.last_hidden_state[:, -1][rows]  # left padding: every prompt ends in the last column
    ids, token_mask = batch["completion_ids"], batch["token_mask"]
    if ids.shape[1] == 1:
        return first[:, None]
    cache = out.past_key_values
    cache.batch_select_indices(rows)  # an index, so the gradient sums back over the G rows
    n = ids.shape[1] - 1  # the last token predicts nothing
    start = prompt["position_ids"].amax(dim=(0, 2))[rows] + 1  # the next text position of each prompt
    pos = (start[:, None] + torch.arange(n, device=ids.device)[None, :]).unsqueeze(0).expand(3, -1, -1)
    attn = torch.cat([prompt["attention_mask"][rows], token_mask[:, :n].to(prompt["attention_mask"].dtype)], dim=1)
    rest = hf.model(input_ids=ids[:, :n], attention_mask=attn, position_ids=pos, past_key_values=cache,
                    use_cache=True, return_dict=True).last_hidden_state
    return torch.cat([first[:, None], rest], dim=1)


def completion_logprobs(model, batch: dict, temperature: float = 1.0, with_entropy: bool = False):
    """Log-probs [B, Tc] of the completion tokens under the policy, with gradients.

    `batch` comes from `mmr1.rollout.batch.build_batch` (one row per completion: its
    `completion_mask` [B, T] marks completion tokens) or `build_grouped_batch` (each
    prompt once, see `shared_prefix_hidden_states`); in both, `token_mask` [B, Tc] says
    where the j-th completion token of row b lands in the result (left-aligned,
    whatever the padding side). The lm_head runs only at the positions that predict a
    completion token. The quantity is log_softmax(logits / temperature) over the
    full vocabulary, the same one the rollout engine reports at sampling time, so
    the two can be compared token for token (importance ratios, staleness checks).
    Returns the log-probs, or (log-probs, entropies) when `with_entropy`.
    """
    token_mask = batch.get("token_mask")
    if "row_prompt" in batch:
        token_mask = token_mask.bool()
        h = shared_prefix_hidden_states(model, batch)[token_mask]
        targets = batch["completion_ids"][token_mask]
    else:
        cmask = batch["completion_mask"].bool()
        predicts = torch.zeros_like(cmask)
        predicts[:, :-1] = cmask[:, 1:]
        h = hidden_states(model, batch)[predicts]
        targets = batch["input_ids"][cmask]
        if token_mask is None:
            lens = cmask.sum(1)
            token_mask = torch.arange(int(lens.max()), device=lens.device)[None, :] < lens[:, None]
        token_mask = token_mask.bool()
    logits = unwrap(model).lm_head(h).float() / temperature
    logp = torch.log_softmax(logits, dim=-1)
    token_lp = logp.gather(-1, targets[:, None]).squeeze(-1)
    out = token_lp.new_zeros(token_mask.shape).masked_scatter(token_mask, token_lp)
    if not with_entropy:
        return out
    ent = -(logp.exp() * logp).sum(-1)
    return out, ent.new_zeros(token_mask.shape).masked_scatter(token_mask, ent)


def shift_labels(labels: torch.Tensor) -> torch.Tensor:
    """targets[t] = labels[t+1]; positions with no next-token label get -100."""
    targets = torch.full_like(labels, -100)
    targets[:, :-1] = labels[:, 1:]
    return targets


def set_gradient_checkpointing(model, on: bool) -> None:
    """Recompute each layer's activations in backward (non-reentrant: works with frozen inputs and LoRA)."""
    if on:
        unwrap(model).gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
