"""Supervised fine-tuning for cold-start / activation data.

Loss on assistant tokens only (every assistant turn), length-bucketed batches,
gradient accumulation with token-mean over the whole optimizer step, warm-up +
decay, clipping, periodic evaluation and checkpoints that resume exactly.
"""

from __future__ import annotations

import logging
import math
import random
import time
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from ..config import Config, save_config
from ..data.encode import Encoded, collate, encode_for_sft, to_device
from ..errors import DataError
from .. import dist
from ..models.forward import hidden_states, set_gradient_checkpointing, shift_labels, unwrap
from ..models.overrides import OVERRIDES_KEY
from .checkpoint import Checkpointer, StopOnSignal, seed_everything
from .rollouts import RolloutRecorder
from .run_dir import RunDir
from .schedule import lr_multiplier

log = logging.getLogger("mmr1")


def bucketed_batches(lengths: list[int], batch_size: int, seed: int, epoch: int, window: int = 50) -> list[list[int]]:
    """A deterministic epoch order: shuffle, sort by length inside windows, shuffle the batches.

    Similar lengths share a batch (little padding) while the order still changes every epoch.
    """
    rng = random.Random(seed * 1_000_003 + epoch)
    idx = list(range(len(lengths)))
    rng.shuffle(idx)
    batches = []
    span = batch_size * window
    for s in range(0, len(idx), span):
        chunk = sorted(idx[s:s + span], key=lambda i: lengths[i])
        batches += [chunk[j:j + batch_size] for j in range(0, len(chunk), batch_size)]
    rng.shuffle(batches)
    return batches


def encode_all(samples, lm, cfg: Config) -> tuple[list[Encoded], int]:
    encoded, bad = [], 0
    for s in samples:
        try:
            encoded.append(encode_for_sft(s, lm.processor, lm.adapter, cfg.trainer.max_length,
                                          cfg.data.system_prompt))
        except DataError as e:
            if cfg.data.on_error == "raise":
                raise
            log.warning("skipped bad record: %s", e)
            bad += 1
    if not encoded:
        raise DataError("no usable training samples")
    return encoded, bad


def sft_loss_sum(model, batch: dict) -> tuple[torch.Tensor, int]:
    """Summed cross-entropy over assistant tokens, with logits computed at those positions only."""
    targets = shift_labels(batch["labels"])
    mask = targets >= 0
    h = hidden_states(model, batch)
    logits = unwrap(model).lm_head(h[mask]).float()
    return F.cross_entropy(logits, targets[mask], reduction="sum"), int(mask.sum())


@dataclass
class SFTResult:
    steps: int
    final_loss: float
    seconds: float
    skipped_records: int
    final_dir: str


def train_sft(cfg: Config, lm, train_samples, run: RunDir, eval_fn=None, progress: bool = True,
              overrides=None) -> SFTResult:
    """Train `lm.model` in place; writes checkpoints and RUN/final. Resumes from RUN/checkpoints.

    `overrides` (Retrv-R1's compressed prompts): sample id -> its prompt's `EmbedOverrides` or None; each
    batch then carries them (`models.overrides`), so the loss also trains whatever produces them."""
    from ..ui import progress_bar

    t0 = time.time()
    tc = cfg.trainer
    seed_everything(tc.seed)
    save_config(cfg, run.path / "config.yaml")
    device = next(lm.model.parameters()).device
    encoded, bad = encode_all(train_samples, lm, cfg)
    lengths = [len(e) for e in encoded]
    n_targets = [int((e.labels[1:] >= 0).sum()) for e in encoded]  # tokens that carry loss
    n_batches = math.ceil(len(encoded) / tc.batch_size)
    steps_per_epoch = max(1, n_batches // tc.grad_accum)
    total = tc.max_steps or max(1, math.ceil(tc.epochs * steps_per_epoch))
    log.info("SFT: %d samples (%d skipped), %d steps, %d micro-batches/epoch", len(encoded), bad, total, n_batches)

    model = lm.model
    model.train()
    set_gradient_checkpointing(model, tc.gradient_checkpointing)
    root = dist.shard(model)  # data parallel: each rank takes every world_size-th row of each micro-batch
    rank, ws = dist.rank(), dist.world_size()
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=tc.lr, weight_decay=tc.weight_decay)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: lr_multiplier(s, total, tc.warmup_ratio, tc.lr_scheduler))
    ckpt = Checkpointer(run.path / "checkpoints", keep=tc.keep_checkpoints)
    step, micro = 0, 0
    latest = ckpt.latest() if tc.resume else None
    if latest is not None:
        state = Checkpointer.load(latest, model, opt, sched)
        step, micro = state["step"], state["micro"]
        log.info("resumed from %s (step %d)", latest, step)

    pad = lm.tokenizer.pad_token_id
    order_cache: dict[int, list[list[int]]] = {}

    def micro_batch(k: int) -> list[int]:
        epoch, pos = divmod(k, n_batches)
        if epoch not in order_cache:
            order_cache.clear()
            order_cache[epoch] = bucketed_batches(lengths, tc.batch_size, tc.seed, epoch)
        return order_cache[epoch][pos]

    recorder = RolloutRecorder.for_run(run, cfg, lm)
    by_source = {(s.source or s.id): s for s in train_samples} if recorder.active else {}
    loss_val = float("nan")
    with StopOnSignal() as stop, progress_bar("sft", total, enabled=progress) as advance:
        advance(step)
        while step < total:
            ts = time.time()
            idx = [micro_batch(micro + i) for i in range(tc.grad_accum)]
            n_tok = sum(n_targets[j] for b in idx for j in b)
            opt.zero_grad(set_to_none=True)
            total_loss = 0.0
            for b in idx:
                # A rank whose share is empty still runs a row with weight 0: FSDP's collectives need every rank.
                mine, weight = (b[rank::ws], 1.0) if b[rank::ws] else (b[:1], 0.0)
                batch = to_device(collate([encoded[j] for j in mine], pad), device)
                if overrides is not None:
                    batch[OVERRIDES_KEY] = [overrides(encoded[j].source) for j in mine]
                loss_sum, _ = dist.run(root, model, sft_loss_sum, batch)
                (loss_sum * (weight * ws / max(1, n_tok))).backward()  # the reduce-scatter averages ranks
                total_loss += float(loss_sum.detach()) * weight
            total_loss = dist.sum_across_ranks(total_loss)
            grad_norm = dist.clip_grad_norm(params, tc.max_grad_norm)
            opt.step()
            sched.step()
            step += 1
            micro += tc.grad_accum
            loss_val = total_loss / max(1, n_tok)
            recorder.after_sft_step(step, [encoded[j] for b in idx for j in b], by_source)
            advance(1)
            if step % cfg.logging.log_every == 0 or step == total:
                run.log_metrics(step, {"loss": loss_val, "lr": sched.get_last_lr()[0],
                                       "grad_norm": float(grad_norm), "tokens": n_tok,
                                       "tokens_per_s": n_tok / max(1e-9, time.time() - ts),
                                       "epoch": micro / n_batches}, prefix="sft/")
            if tc.save_every and step % tc.save_every == 0 and step < total:
                ckpt.save(step, model, opt, sched, {"micro": micro})
            if eval_fn is not None and tc.eval_every and step % tc.eval_every == 0 and step < total:
                run.log_metrics(step, _scalars(eval_fn(step)), prefix="eval/")
            if stop.hit:
                path = ckpt.save(step, model, opt, sched, {"micro": micro})
                log.info("interrupted at step %d; checkpoint %s", step, path)
                raise KeyboardInterrupt(f"interrupted at step {step}; rerun the same command to resume")
    final = save_final(lm, run.path / "final")
    ckpt.save(step, model, opt, sched, {"micro": micro})
    return SFTResult(step, loss_val, time.time() - t0, bad, str(final))


def _scalars(metrics: dict) -> dict:
    return {k: v for k, v in metrics.items() if isinstance(v, (int, float))}


def save_final(lm, path) -> str:
    """A plain HF checkpoint directory (LoRA merged) that `load_model` reads like any other.

    Every rank calls it (a sharded model's weights are gathered first); the main rank writes."""
    model = lm.model
    weights = dist.model_state(model) if dist.distributed() else None
    if not dist.is_main():
        dist.barrier()
        return str(path)
    if hasattr(model, "peft_config"):
        import copy

        if weights is not None:  # a sharded model cannot be copied: merge its gathered weights into a fresh copy
            from .merge import merged_weights

            weights = merged_weights(model, weights)
        else:
            model = copy.deepcopy(model).merge_and_unload()
    hf = unwrap(model)
    hf.save_pretrained(path, safe_serialization=True, **({"state_dict": weights} if weights is not None else {}))
    lm.processor.save_pretrained(path)
    lm.processor.tokenizer.save_pretrained(path)
    dist.barrier()
    return str(path)
