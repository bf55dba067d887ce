"""The RL loop (`fit`): roll out G completions per prompt, score, normalise in groups, update.

One step (`GRPOStep.run`) = sample prompts -> rollout (shared-prefix engine) -> rewards ->
advantages -> reference log-probs (when beta > 0) -> mu passes of policy loss + AdamW over
micro-batches. The reference and policy passes run each prompt (images included) once and
share it across its G completions; logits are computed only over completion positions.
Data parallelism (torchrun) goes through one place each: `PromptSampler` (which prompts this
rank takes; a group's G samples stay on one rank, so group statistics need no communication),
`dist.shard` / `dist.run` / `dist.gathered` (FSDP2 policy; whole weights during rollouts),
the loss weights (shares of the global batch), `dist.mean_dict_across_ranks` (metrics) and
`Checkpointer` (whole state dicts, main rank writes, resumable on any world size).
"""

from __future__ import annotations

import contextlib
import logging
import math
import random
import time
from dataclasses import dataclass, field

import torch

from .. import dist
from ..algos import compute_advantages, grpo_loss, make_schedule, truncation_mask
from ..config import Config, save_config
from ..data.encode import to_device, with_system
from ..models.forward import completion_logprobs, set_gradient_checkpointing
from ..rewards.functions import build_rewards, score
from ..rollout.batch import build_batch, build_grouped_batch
from ..rollout.hf import HFEngine
from .checkpoint import Checkpointer, StopOnSignal, seed_everything
from .run_dir import RunDir
from .schedule import lr_multiplier
from .sft import save_final

log = logging.getLogger("mmr1")


@dataclass
class RLResult:
    steps: int
    seconds: float
    reward_history: list[float] = field(default_factory=list)  # mean sampled reward per step
    accuracy_history: list[float] = field(default_factory=list)  # mean sampled accuracy per step
    beta_history: list[float] = field(default_factory=list)  # KL weight used at each step
    kl_history: list[float] = field(default_factory=list)  # mean KL to the reference per step (nan: beta = 0)
    final_dir: str = ""
    reward_errors: int = 0


HISTORIES = ("reward_history", "accuracy_history", "beta_history", "kl_history")  # kept in checkpoints


class PromptSampler:
    """Which prompts a step uses: a seeded permutation per epoch, a pure function of the step.

    Resuming needs only the step number; each rank takes a disjoint slice of the step's prompts.
    """

    def __init__(self, n: int, per_step: int, seed: int):
        if n == 0:
            raise ValueError("no training prompts")
        if per_step % dist.world_size():
            raise ValueError(f"rl.prompts_per_step={per_step} must be a multiple of the number of ranks "
                             f"({dist.world_size()}), so every rank takes the same share")
        self.n, self.per_step, self.seed = n, per_step, seed

    def _order(self, epoch: int) -> list[int]:
        order = list(range(self.n))
        random.Random(f"{self.seed}/{epoch}").shuffle(order)
        return order

    def indices(self, step: int) -> list[int]:
        out = []
        for k in range(step * self.per_step, (step + 1) * self.per_step):
            epoch, pos = divmod(k, self.n)
            out.append(self._order(epoch)[pos])
        return out[dist.rank()::dist.world_size()]

    def positions(self) -> list[int]:
        """Where this rank's prompts sit in the step's global batch."""
        return list(range(self.per_step))[dist.rank()::dist.world_size()]


def _generator(seed: int, step: int) -> torch.Generator:
    """Sampling randomness keyed by (seed, step), so a resumed run samples what the original would."""
    return torch.Generator().manual_seed(seed * 1_000_003 + step)


def rollout_generator(seed: int, step: int, sampler: PromptSampler, per_prompt: bool):
    """One stream for the step, or one per prompt keyed by its place in the global batch: the latter makes
    rollouts independent of batch and world size (required under data parallelism, where a shared stream
    would give every rank the same draws)."""
    if not (per_prompt or dist.distributed()):
        return _generator(seed, step)
    return [torch.Generator().manual_seed((seed * 1_000_003 + step) * 1_000_033 + k) for k in sampler.positions()]


def make_engine(cfg: Config, lm, device):
    """The rollout engine `rollout.engine` names: the HF engine, or vLLM (imported only when asked for)."""
    if cfg.rollout.engine == "hf":
        return HFEngine(lm, device=device)
    from ..errors import ConfigError
    from ..rollout.vllm_engine import VLLMEngine

    try:
        return VLLMEngine(lm, gpu_memory_utilization=cfg.rollout.vllm_gpu_memory_utilization,
                          dtype=cfg.model.dtype, seed=cfg.trainer.seed)
    except ImportError as e:
        raise ConfigError(f"rollout.engine=vllm: {e}") from e


class Reference:
    """Reference-policy log-probs: the adapter-free base under LoRA, else a frozen copy loaded from disk.

    The copy is whole on every rank (it has no optimizer state; under FSDP only the policy is sharded).
    `offload` keeps it in CPU memory and moves it to the accelerator for the reference pass only."""

    def __init__(self, lm, path=None, root=None, offload: bool = False):
        self.model, self.root = None, root
        self.lora = hasattr(lm.model, "disable_adapter")
        self.device = next(lm.model.parameters()).device
        self.offload = offload and self.device.type != "cpu"
        if not self.lora:
            from ..models.loading import load_model

            dtype = str(next(lm.model.parameters()).dtype).replace("torch.", "")
            device = "cpu" if self.offload else str(self.device)
            self.model = load_model(path or lm.path, dtype=dtype, device=device).model.eval()
            for p in self.model.parameters():
                p.requires_grad_(False)
        self.policy = lm.model

    @torch.no_grad()
    def logprobs(self, batch: dict, temperature: float) -> torch.Tensor:
        if self.lora:  # the policy without its adapter (through the FSDP root when sharded)
            with self.policy.disable_adapter():
                return dist.run(self.root, self.policy, completion_logprobs, batch, temperature)
        if not self.offload:
            return completion_logprobs(self.model, batch, temperature)
        try:
            return completion_logprobs(self.model.to(self.device), batch, temperature)
        finally:
            self.model.to("cpu")


def _chunks(n_rows: int, group: int, size: int) -> list[slice]:
    """Micro-batches that keep each prompt's G completions together (one encode per prompt)."""
    step = max(group, (size // group) * group)
    return [slice(i, min(i + step, n_rows)) for i in range(0, n_rows, step)]


@dataclass
class StepOutput:
    metrics: dict  # this step's metrics (mean over ranks), without the "rl/" prefix
    reward_errors: int


class PolicyUpdate:
    """What every RL step holds besides its rollouts: the policy (FSDP2-sharded over the ranks, None
    root in one process), the beta schedule and the reference, the prompt sampler, AdamW and the LR
    schedule. `call(fn, ...)` runs `fn(policy, ...)` through the FSDP root when there is one."""

    def __init__(self, cfg: Config, lm, train_samples: list, ref_path=None):
        rc, ac, tc = cfg.rl, cfg.algorithm, cfg.trainer
        self.cfg, self.lm = cfg, lm
        self.model = lm.model
        self.device = next(self.model.parameters()).device
        self.train_samples = train_samples
        self.beta = make_schedule(rc.beta_schedule if rc.beta_schedule else ac.beta)
        uses_kl = any(self.beta.value(s, rc.steps) != 0.0 for s in range(rc.steps + 1))
        self.sampler = PromptSampler(len(train_samples), rc.prompts_per_step, tc.seed)
        set_gradient_checkpointing(self.model, tc.gradient_checkpointing)
        self.root = dist.shard(self.model)  # None in a single process
        self.ref = Reference(lm, ref_path, self.root, rc.ref_offload) if uses_kl else None
        self.params = [p for p in self.model.parameters() if p.requires_grad]
        self.opt = torch.optim.AdamW(self.params, lr=rc.lr, weight_decay=tc.weight_decay)
        self.sched = torch.optim.lr_scheduler.LambdaLR(
            self.opt, lambda s: lr_multiplier(s, rc.steps, rc.warmup_ratio, rc.lr_scheduler))

    def call(self, fn, *args, **kwargs):
        return dist.run(self.root, self.model, fn, *args, **kwargs)


class LossShares:
    """Micro-batch weights in a batch aggregate: a micro-batch's tokens for token-mean, its rows otherwise.

    The loss is the global batch's (every rank's rows), times the world size because the gradient
    reduce-scatter averages over ranks; metrics are weighted by the share of this rank's batch. Built on
    every rank at the same point (it sums the token count across ranks)."""

    def __init__(self, tokens: float, rows: int, token_mean: bool):
        self.tokens, self.rows, self.token_mean = tokens, rows, token_mean
        self.world = dist.world_size()
        self.global_tokens, self.global_rows = dist.sum_across_ranks(tokens), rows * self.world

    def _share(self, mask: torch.Tensor, rows: int, tokens_total: float, rows_total: int) -> float:
        return float(mask.sum()) / max(1.0, tokens_total) if self.token_mean else rows / rows_total

    def backward(self, loss: torch.Tensor, mask: torch.Tensor, rows: int) -> float:
        """Backpropagate this micro-batch's part of the global loss; returns its share of this rank's batch."""
        (loss * (self._share(mask, rows, self.global_tokens, self.global_rows) * self.world)).backward()
        return self._share(mask, rows, self.tokens, self.rows)


class GRPOStep(PolicyUpdate):
    """The machinery of one RL step (`fit` runs it in a loop; benchmarks call it directly).

    A PolicyUpdate with the rewards and the rollout engine. `run(step)` does one full step on `lm.model`:
    rollout -> rewards -> advantages -> reference log-probs -> mu passes of policy loss + AdamW.
    Each micro-batch is a grouped batch (`build_grouped_batch`): every prompt and its images
    run once through the model and its G completions share the prompt's keys/values, in the
    reference pass and in the policy pass alike.
    """

    def __init__(self, cfg: Config, lm, train_samples: list, ref_path=None):
        super().__init__(cfg, lm, train_samples, ref_path)
        self.rewards = build_rewards(cfg.rewards)
        self.engine = make_engine(cfg, lm, self.device)

    def run(self, step: int) -> StepOutput:
        """One RL step (step numbers from 0); the LR schedule advances by one."""
        cfg, lm, model, device = self.cfg, self.lm, self.model, self.device
        rc, ac, ro, tc = cfg.rl, cfg.algorithm, cfg.rollout, cfg.trainer
        G = ro.group_size
        m, times = {}, {}
        t0 = time.time()
        samples = [self.train_samples[i] for i in self.sampler.indices(step)]
        prompts = [(with_system(s.prompt_messages(), cfg.data.system_prompt), s.load_images()) for s in samples]
        model.eval()
        vllm = not isinstance(self.engine, HFEngine)
        if vllm:  # the engine holds its own copy of the weights: push the current ones
            self.engine.sync_weights(model)
        with contextlib.nullcontext() if vllm else dist.gathered(self.root):
            groups = self.engine.sample(prompts, n=G, max_new_tokens=ro.max_new_tokens,
                                        min_new_tokens=min(ro.min_new_tokens, ro.max_new_tokens),
                                        temperature=ro.temperature, top_p=ro.top_p, stop=ro.stop or None,
                                        batch_size=ro.batch_size,
                                        generator=rollout_generator(tc.seed, step, self.sampler, ro.seed_per_prompt))
        model.train()
        comps = [c for g in groups for c in g]
        rows_prompt = [p for p in prompts for _ in range(G)]
        rows_sample = [s for s in samples for _ in range(G)]
        times["rollout"] = time.time() - t0

        t = time.time()
        sc = score(self.rewards, [c.text for c in comps], rows_sample, cfg.rewards.combine, cfg.rewards.on_error)
        adv = compute_advantages(ac.adv_estimator, sc.total, G, scale_std=ac.scale_std, eps=ac.adv_eps)
        times["reward"] = time.time() - t

        # One grouped batch per micro-batch, built once and reused by the reference and all mu passes.
        # Under gradient checkpointing a row per completion: the shared prefix needs a key/value cache with
        # gradients, which checkpointed layers cannot keep (HF turns the cache off while checkpointing).
        build = build_batch if tc.gradient_checkpointing else build_grouped_batch
        batches = []
        for sl in _chunks(len(comps), G, rc.micro_batch_size):
            b = to_device(build(lm, rows_prompt[sl], comps[sl]), device)
            mask = b["token_mask"]
            if rc.mask_truncated:
                mask = truncation_mask([c.finish_reason for c in comps[sl]], mask)
            batches.append((sl, b, mask.float()))
        n_rows = len(comps)
        shares = LossShares(sum(float(mk.sum()) for _, _, mk in batches), n_rows, ac.loss_agg == "token-mean")

        t = time.time()
        beta_now = self.beta.value(step, rc.steps)
        refs = [self.ref.logprobs(b, ro.temperature) if self.ref is not None else None for _, b, _ in batches]
        times["reference"] = time.time() - t

        old = [None] * len(batches)
        if ac.ppo_epochs > 1:  # stored old log-probs make the clip active on passes 2..mu
            with torch.no_grad():
                old = [self.call(completion_logprobs, b, ro.temperature) for _, b, _ in batches]

        times["policy"], times["optimizer"] = 0.0, 0.0
        agg: dict[str, float] = {}
        for _ in range(ac.ppo_epochs):
            t = time.time()
            self.opt.zero_grad(set_to_none=True)
            for (sl, b, mask), ref_lp, old_lp in zip(batches, refs, old):
                logp, ent = self.call(completion_logprobs, b, ro.temperature, with_entropy=True)
                loss, stats = grpo_loss(logp, old_lp, adv[sl].to(device), mask, ref_lp, beta=beta_now,
                                        kl_estimator=ac.kl_estimator, clip_low=ac.clip_low,
                                        clip_high=ac.clip_high, ratio_level=rc.ratio_level,
                                        loss_agg=ac.loss_agg, norm=float(ro.max_new_tokens))
                w = shares.backward(loss, mask, sl.stop - sl.start)
                stats["entropy"] = ((ent.detach() * mask).sum() / mask.sum().clamp(min=1))
                for k, v in stats.items():
                    agg[k] = agg.get(k, 0.0) + float(v) * w / ac.ppo_epochs
            times["policy"] += time.time() - t
            t = time.time()
            grad_norm = dist.clip_grad_norm(self.params, tc.max_grad_norm)
            self.opt.step()
            self.opt.zero_grad(set_to_none=True)  # free the gradients now, not during the next rollout
            times["optimizer"] += time.time() - t
        self.sched.step()

        lens = torch.tensor([len(c.token_ids) for c in comps], dtype=torch.float32)
        step_s = time.time() - t0
        m.update({f"reward/{k}/mean": float(v.mean()) for k, v in sc.per_fn.items()})
        m.update({f"reward/{k}/errors": v for k, v in sc.errors.items()})
        m.update({"reward/mean": float(sc.total.mean()), "reward/std": float(sc.total.std()) if n_rows > 1 else 0.0,
                  "accuracy": float(sc.per_fn["accuracy"].mean()) if "accuracy" in sc.per_fn else float("nan"),
                  "format_rate": float(sc.per_fn["format"].mean()) if "format" in sc.per_fn else float("nan"),
                  "beta": beta_now, "lr": self.sched.get_last_lr()[0], "grad_norm": float(grad_norm),
                  "completion_len/mean": float(lens.mean()), "completion_len/max": float(lens.max()),
                  "completion_len/min": float(lens.min()),
                  "truncated_rate": sum(c.finish_reason == "length" for c in comps) / n_rows,
                  "zero_adv_groups": float((adv.view(-1, G).abs().sum(-1) == 0).float().mean()),
                  "tokens_per_s": float(lens.sum()) / max(1e-9, step_s), "step_s": step_s})
        m.update({k: v for k, v in agg.items()})
        m.update({f"time/{k}": v for k, v in times.items()})
        m = dist.mean_dict_across_ranks(m)
        self.last = {"kind": "grpo", "samples": samples, "prompts": prompts, "groups": groups, "per_fn": sc.per_fn,
                     "total": sc.total, "adv": adv, "mask_truncated": rc.mask_truncated}  # for RolloutRecorder
        return StepOutput(m, int(dist.sum_across_ranks(sum(sc.errors.values()))))


def fit(cfg: Config, lm, train_samples: list, run: RunDir, eval_fn=None, progress: bool = True,
        ref_path=None) -> RLResult:
    """GRPO on `lm.model` in place; writes RUN/checkpoints, RUN/final and per-step metrics."""
    t_start = time.time()
    seed_everything(cfg.trainer.seed)
    save_config(cfg, run.path / "config.yaml")
    runner = GRPOStep(cfg, lm, train_samples, ref_path)
    return rl_loop(cfg, lm, runner, run, RLResult(0, 0.0), HISTORIES, t_start, progress=progress, eval_fn=eval_fn)


def rl_loop(cfg: Config, lm, runner, run: RunDir, result, histories: tuple[str, ...], t_start: float, *,
            progress: bool = True, eval_fn=None, name: str = "grpo", record=None):
    """Run `runner.run(step)` until rl.steps, shared by every RL loop: resume from RUN/checkpoints, per-step
    histories (`record(result, metrics)` adds a loop's own), metrics, periodic checkpoints and evaluation,
    a checkpoint on Ctrl-C, then RUN/final."""
    from ..ui import progress_bar
    from .rollouts import RolloutRecorder

    rc, tc, model = cfg.rl, cfg.trainer, lm.model
    recorder = RolloutRecorder.for_run(run, cfg, lm)
    opt, sched = runner.opt, runner.sched
    ckpt = Checkpointer(run.path / "checkpoints", keep=tc.keep_checkpoints)
    step = 0
    latest = ckpt.latest() if tc.resume else None
    if latest is not None:
        state = Checkpointer.load(latest, model, opt, sched)
        step = state["step"]
        for h in histories:
            setattr(result, h, state.get(h, []))
        log.info("resumed %s from %s (step %d)", name, latest, step)

    def save(at: int):
        return ckpt.save(at, model, opt, sched, {h: getattr(result, h) for h in histories})

    try:
        with StopOnSignal() as stop, progress_bar(name, rc.steps, enabled=progress) as advance:
            advance(step)
            while step < rc.steps:
                out = runner.run(step)
                m = out.metrics
                step += 1
                recorder.after_rl_step(step, runner, m)
                result.reward_history.append(m["reward/mean"])
                result.accuracy_history.append(m["accuracy"])
                result.beta_history.append(m["beta"])
                result.kl_history.append(m.get("kl", math.nan))
                if record is not None:
                    record(result, m)
                result.reward_errors += out.reward_errors
                advance(1)
                if step % cfg.logging.log_every == 0 or step == rc.steps or step == 1:
                    run.log_metrics(step, m, prefix="rl/")
                if tc.save_every and step % tc.save_every == 0 and step < rc.steps:
                    save(step)
                if eval_fn is not None and tc.eval_every and step % tc.eval_every == 0 and step < rc.steps:
                    run.log_metrics(step, {k: v for k, v in eval_fn(step).items() if isinstance(v, (int, float))},
                                    prefix="eval/")
                if stop.hit:
                    path = save(step)
                    log.info("interrupted at %s step %d; checkpoint %s", name, step, path)
                    raise KeyboardInterrupt(f"interrupted at step {step}; rerun the same command to resume")
    finally:
        if hasattr(runner, "close"):
            runner.close()
    save(step)
    result.steps = step
    result.final_dir = save_final(lm, run.path / "final")
    result.seconds = time.time() - t_start
    if result.reward_errors:
        log.warning("%d reward evaluations failed and scored 0 (see the log for the samples)", result.reward_errors)
    return result


def mean_first_last(history: list[float], k: int = 5) -> tuple[float, float]:
    """Mean of the first and of the last k values: the 'did sampled reward rise' summary."""
    if not history:
        return math.nan, math.nan
    k = max(1, min(k, len(history) // 2 or 1))
    return sum(history[:k]) / k, sum(history[-k:]) / k

