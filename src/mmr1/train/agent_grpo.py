"""GRPO over multi-turn agent trajectories (MMSearch-R1, METHODS §4.1-§4.4).

One step (`AgentGRPOStep.run`) = sample prompts -> G trajectories per prompt with the `AgentLoop` (sampled
turns, tool calls, injected observations) -> the search reward of each trajectory (its penalty read from the
warm-up schedule at this step) -> group advantages (`mmr1.algos.compute_advantages`) -> reference log-probs
(when beta > 0) -> policy loss + AdamW over mini-/micro-batches.

The loss is `mmr1.algos.grpo_loss` over the trajectory's response tokens with the response mask as its mask:
tool output and injected user text (image tokens included) never enter it. `agent_loss` additionally
replaces the log-probs at masked positions by constants before the loss sees them, so an extreme log-prob
of an injected token (an image pad the policy finds absurd) cannot turn the masked sum into NaN; their
gradient is exactly zero. Each trajectory is one row of `build_agent_batch` (prompt, sampled and injected
tokens, every image), run through `completion_logprobs`; the outcome advantage is broadcast over the row's
sampled tokens, which equals verl's reward on the last sampled token with GRPO's outcome advantage.

What is shared with the single-turn engine (`train/grpo.py`): the prompt sampler, the per-step sampling
generator, the reference model, checkpoints (`Checkpointer`: weights, optimizer, scheduler, RNG, histories),
the LR schedule, Ctrl-C handling and `save_final`. The step number alone decides the prompts and the sampling
randomness, so a resumed run re-samples what the original did; with a tool cache (`mmr1.tools.search.CachedTool`)
the tool calls of a step the interruption cut short are replayed from disk.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from typing import Sequence

import torch

from .. import dist
from ..algos import compute_advantages, grpo_loss, truncation_mask
from ..config import Config, save_config
from ..data.encode import to_device, with_system
from ..models.forward import completion_logprobs
from ..rewards.search import SearchReward
from ..rollout.agent import AgentConfig, AgentLoop, Trajectory, build_agent_batch
from ..tools.search import raise_if_down
from .checkpoint import seed_everything
from .grpo import HISTORIES, LossShares, PolicyUpdate, RLResult, StepOutput, rl_loop, rollout_generator
from .run_dir import RunDir

log = logging.getLogger("mmr1")

TOOLS = ("image_search", "text_search")
AGENT_HISTORIES = (*HISTORIES, "search_ratio_history", "format_history")


# ------------------------------------------------------------------------------------------ settings


def agent_config(cfg: Config, *, sample: bool = True, max_rounds: int | None = None) -> AgentConfig:
    """The AgentLoop settings of `cfg` (agent.*, rollout.temperature/top_p/batch_size); greedy unless `sample`."""
    ag, ro = cfg.agent, cfg.rollout
    rounds = {"image_search": tuple(ag.image_search_rounds)} if ag.image_search_rounds else {}
    return AgentConfig(max_rounds=max_rounds or ag.max_rounds, max_turn_tokens=ag.max_turn_tokens,
                       max_total_tokens=ag.max_total_tokens, temperature=ro.temperature if sample else 1.0,
                       top_p=ro.top_p if sample else 1.0, do_sample=sample,
                       tool_limits={"image_search": ag.image_search_limit, "text_search": ag.text_search_limit},
                       tool_rounds=rounds, tool_timeout_s=ag.tool_timeout_s, tool_threads=ag.tool_threads,
                       batch_size=ro.batch_size, max_observation_chars=ag.max_observation_chars,
                       max_observation_tokens=ag.max_observation_tokens)


def build_search_reward(cfg: Config, penalty: float | None = None) -> SearchReward:
    """MMSearch-R1's reward from search.* (`penalty` overrides search.penalty, e.g. 0 for the no-penalty run)."""
    sc = cfg.search
    p = sc.penalty if penalty is None else penalty
    spec = ({"kind": "search_penalty_warmup", "p": p, "warmup_steps": sc.penalty_warmup_steps}
            if sc.penalty_warmup_steps and p else p)
    return SearchReward(variant=sc.reward_variant, mode=sc.reward_mode, penalty=spec,
                        format_weight=sc.format_penalty, per_search=sc.per_search_penalty, total=cfg.rl.steps)


def question_of(sample) -> str:
    """The original question (what observations quote): meta["question"], else the prompt's text."""
    return str(sample.meta.get("question") or sample.question_text())


def searched(t: Trajectory) -> bool:
    """A search call was made (refused requests and a search asked for in the last round do not count)."""
    return any(c.status in ("ok", "error") for c in t.tool_calls)


# ------------------------------------------------------------------------------------------------ loss


def agent_loss(logp: torch.Tensor, loss_mask: torch.Tensor, advantages: torch.Tensor,
               old_logp: torch.Tensor | None, ref_logp: torch.Tensor | None, *, beta: float, cfg: Config):
    """`grpo_loss` over the sampled tokens of agent rows: `loss_mask` [B, Tc] is 1 on sampled tokens only.

    Log-probs at masked positions are swapped for 0 (policy, old and reference alike) before the loss:
    their ratio is 1, their KL 0 and their gradient exactly 0, whatever the model thinks of them.
    """
    ac, rc = cfg.algorithm, cfg.rl
    keep = loss_mask.bool()
    zero = torch.zeros((), dtype=logp.dtype, device=logp.device)
    logp = torch.where(keep, logp, zero)
    if old_logp is not None:
        old_logp = torch.where(keep, old_logp.to(logp.dtype), zero)
    if ref_logp is not None:
        ref_logp = torch.where(keep, ref_logp.to(logp.dtype), zero)
    return grpo_loss(logp, old_logp, advantages, loss_mask.float(), ref_logp, beta=beta,
                     kl_estimator=ac.kl_estimator, clip_low=ac.clip_low, clip_high=ac.clip_high,
                     ratio_level=rc.ratio_level, loss_agg=ac.loss_agg, norm=float(cfg.agent.max_total_tokens))


def _mini_batches(n_groups: int, group: int, parts: int) -> list[slice]:
    """Row slices of `parts` mini-batches of whole groups (the last ones smaller when it does not divide)."""
    parts = max(1, min(parts, n_groups))
    base, extra = divmod(n_groups, parts)
    out, start = [], 0
    for i in range(parts):
        g = base + (i < extra)
        out.append(slice(start * group, (start + g) * group))
        start += g
    return out


def _micro(sl: slice, size: int) -> list[slice]:
    return [slice(i, min(i + size, sl.stop)) for i in range(sl.start, sl.stop, size)]


# ------------------------------------------------------------------------------------------- metrics


def trajectory_metrics(trajs: Sequence[Trajectory], samples: Sequence, details: Sequence) -> dict:
    """Per-step (or per-evaluation) means over trajectories: reward, accuracy, format, search ratio (overall and,
    when samples carry meta["familiar"], familiar vs unfamiliar), calls per tool, turns, tokens, finish
    reasons and tool latency / failures / refusals."""
    n = len(trajs)
    m: dict[str, float] = {}
    if not n:
        return m
    s = [searched(t) for t in trajs]
    m["reward/mean"] = sum(d.reward for d in details) / n
    m["accuracy"] = sum(d.correct for d in details) / n
    m["format_rate"] = sum(d.format for d in details) / n
    m["search_ratio"] = sum(s) / n
    for name, want in (("familiar", True), ("unfamiliar", False)):
        idx = [i for i, x in enumerate(samples) if x.meta.get("familiar") is want]
        if idx:
            m[f"search_ratio/{name}"] = sum(s[i] for i in idx) / len(idx)
            m[f"accuracy/{name}"] = sum(details[i].correct for i in idx) / len(idx)
    for tool in TOOLS:
        calls = [c for t in trajs for c in t.tool_calls if c.tool == tool]
        made = [c for c in calls if c.status in ("ok", "error")]
        m[f"calls/{tool}"] = len(made) / n
        m[f"tool/{tool}/failures"] = sum(c.status == "error" for c in made)
        m["tool/errors"] = m.get("tool/errors", 0) + m[f"tool/{tool}/failures"]
        m[f"tool/{tool}/refusals"] = sum(c.status == "refused" for c in calls)
        m[f"tool/{tool}/latency_mean_s"] = sum(c.latency_s for c in made) / len(made) if made else 0.0
        m[f"tool/{tool}/latency_max_s"] = max((c.latency_s for c in made), default=0.0)
    m["tool/truncated"] = sum(c.truncated for t in trajs for c in t.tool_calls)
    m["turns/mean"] = sum(len(t.turns) for t in trajs) / n
    m["sampled_tokens/mean"] = sum(t.n_sampled for t in trajs) / n
    m["injected_tokens/mean"] = sum(len(t.token_ids) - t.n_sampled for t in trajs) / n
    for reason in ("answer", "stop", "turn_length", "length", "max_rounds"):
        m[f"finish/{reason}"] = sum(t.finish_reason == reason for t in trajs) / n
    return m


def _cache_counts(tools) -> dict[str, tuple[int, int]]:
    return {t.name: (t.hits, t.misses) for t in tools if hasattr(t, "hits") and hasattr(t, "misses")}


# ---------------------------------------------------------------------------------------------- step


class AgentGRPOStep(PolicyUpdate):
    """The machinery of one agent RL step (`fit_agent` runs it in a loop).

    `tools`: the Tool objects the AgentLoop may call (e.g. `make_search_tools(...)`, cached). `reward`: a
    `SearchReward` (default: from search.*); its `step` is set to the 1-based RL step before scoring, so a
    penalty warm-up schedule is read at the right step. `script` (tests and demos only) is passed to
    `AgentLoop.run` and supplies some turns instead of sampling them (they are trained on like sampled ones).
    """

    def __init__(self, cfg: Config, lm, train_samples: list, tools: Sequence = (), ref_path=None,
                 reward: SearchReward | None = None, script=None, agent_cfg: AgentConfig | None = None,
                 prompt_fn=None):
        rc = cfg.rl
        if cfg.rollout.engine != "hf":
            from ..errors import ConfigError

            raise ConfigError("rollout.engine: the multi-turn agent loop runs on the HF engine only; set rollout.engine=hf")
        super().__init__(cfg, lm, train_samples, ref_path)
        self.tools = list(tools)
        self.reward = reward if reward is not None else build_search_reward(cfg)
        self.reward.total = rc.steps
        self.script = script
        self.prompt_fn = prompt_fn
        self.loop = AgentLoop(lm, self.tools, agent_cfg or agent_config(cfg, sample=True), device=self.device)

    def close(self) -> None:
        self.loop.close()

    def rollout(self, step: int) -> tuple[list, list[Trajectory]]:
        """The step's samples (each repeated G times) and their trajectories, in group order."""
        cfg, G = self.cfg, self.cfg.rollout.group_size
        samples = [self.train_samples[i] for i in self.sampler.indices(step)]
        contexts = list(samples)  # tools that take a context see the sample (the web image search: its URL)
        if self.prompt_fn is None:
            prompts = [(with_system(s.prompt_messages(), cfg.data.system_prompt), s.load_images()) for s in samples]
        else:  # (prompt, tool context) per sample; the prompt may carry embedding overrides
            made = [self.prompt_fn(s) for s in samples]
            prompts = [(with_system(p[0], cfg.data.system_prompt), *p[1:]) for p, _ in made]
            contexts = [c for _, c in made]
        gen = rollout_generator(cfg.trainer.seed, step, self.sampler, cfg.rollout.seed_per_prompt)
        with dist.gathered(self.root):
            groups = self.loop.run(prompts, n=G, generator=gen, questions=[question_of(s) for s in samples],
                                   script=self.script, contexts=contexts)
        raise_if_down(self.tools)  # a web backend that keeps failing stops the run, naming itself and why
        return [s for s in samples for _ in range(G)], [t for g in groups for t in g]

    def run(self, step: int) -> StepOutput:
        """One RL step (step numbers from 0); the LR schedule advances by one."""
        cfg, lm, model, device = self.cfg, self.lm, self.model, self.device
        rc, ac, ro, tc = cfg.rl, cfg.algorithm, cfg.rollout, cfg.trainer
        G = ro.group_size
        times: dict[str, float] = {}
        t0 = time.time()
        cache0 = _cache_counts(self.tools)
        model.eval()
        rows_sample, trajs = self.rollout(step)
        model.train()
        times["rollout"] = time.time() - t0

        t = time.time()
        self.reward.step = step + 1  # verl's 1-based global step (the penalty warm-up reads it)
        details = [self.reward.details(tr, s) for tr, s in zip(trajs, rows_sample)]
        rewards = torch.tensor([d.reward for d in details], dtype=torch.float32)
        adv = compute_advantages(ac.adv_estimator, rewards, G, scale_std=ac.scale_std, eps=ac.adv_eps)
        times["reward"] = time.time() - t

        n_rows = len(trajs)
        minis = _mini_batches(n_rows // G, G, cfg.agent.mini_batches)
        batches = {}  # micro slice (start, stop) -> (slice, batch, loss mask)
        for mini in minis:
            for sl in _micro(mini, rc.micro_batch_size):
                b = to_device(build_agent_batch(lm, trajs[sl]), device)
                mask = b["loss_mask"].float()
                if rc.mask_truncated:
                    mask = truncation_mask([tr.finish_reason in ("length", "turn_length") for tr in trajs[sl]], mask)
                batches[sl.start, sl.stop] = (sl, b, mask)

        t = time.time()
        beta_now = self.beta.value(step, rc.steps)
        refs = {k: self.ref.logprobs(b, ro.temperature) if self.ref is not None else None
                for k, (_, b, _) in batches.items()}
        times["reference"] = time.time() - t

        # Several updates per rollout batch (mu > 1 or mini-batches): old log-probs of the policy that sampled.
        old = {k: None for k in batches}
        if ac.ppo_epochs > 1 or len(minis) > 1:
            with torch.no_grad():
                old = {k: self.call(completion_logprobs, b, ro.temperature) for k, (_, b, _) in batches.items()}

        times["policy"], times["optimizer"] = 0.0, 0.0
        agg: dict[str, float] = {}
        n_updates = ac.ppo_epochs * len(minis)
        grad_norms = []
        for _ in range(ac.ppo_epochs):
            for mini in minis:
                t = time.time()
                keys = [(s.start, s.stop) for s in _micro(mini, rc.micro_batch_size)]
                shares = LossShares(sum(float(batches[k][2].sum()) for k in keys), mini.stop - mini.start,
                                    ac.loss_agg == "token-mean")
                self.opt.zero_grad(set_to_none=True)
                for k in keys:
                    sl, b, mask = batches[k]
                    logp, ent = self.call(completion_logprobs, b, ro.temperature, with_entropy=True)
                    loss, stats = agent_loss(logp, mask, adv[sl].to(device), old[k], refs[k], beta=beta_now, cfg=cfg)
                    w = shares.backward(loss, mask, sl.stop - sl.start)  # of the global mini-batch's loss
                    stats["entropy"] = (ent.detach() * mask).sum() / mask.sum().clamp(min=1)
                    for name, v in stats.items():
                        agg[name] = agg.get(name, 0.0) + float(v) * w / n_updates
                times["policy"] += time.time() - t
                t = time.time()
                grad_norms.append(dist.clip_grad_norm(self.params, tc.max_grad_norm))
                self.opt.step()
                self.opt.zero_grad(set_to_none=True)
                times["optimizer"] += time.time() - t
        self.sched.step()

        step_s = time.time() - t0
        m = trajectory_metrics(trajs, rows_sample, details)
        m.update({"reward/std": float(rewards.std()) if n_rows > 1 else 0.0,
                  "search_penalty": self.reward.penalty_at(), "beta": beta_now, "lr": self.sched.get_last_lr()[0],
                  "grad_norm": sum(grad_norms) / len(grad_norms), "updates": n_updates,
                  "zero_adv_groups": float((adv.view(-1, G).abs().sum(-1) == 0).float().mean()),
                  "sampled_tokens_per_s": sum(tr.n_sampled for tr in trajs) / max(1e-9, step_s), "step_s": step_s})
        for name, (h, miss) in _cache_counts(self.tools).items():
            h0, m0 = cache0.get(name, (0, 0))
            m[f"tool/{name}/cache_hits"] = h - h0
            m[f"tool/{name}/cache_misses"] = miss - m0
        m.update(agg)
        m.update({f"time/{k}": v for k, v in times.items()})
        m = dist.mean_dict_across_ranks({k: float(v) for k, v in m.items()})
        self.last = {"kind": "agent", "G": G, "samples": rows_sample, "trajs": trajs, "details": details, "adv": adv,
                     "system_prompt": cfg.data.system_prompt, "mask_truncated": rc.mask_truncated}  # RolloutRecorder
        return StepOutput(m, 0)


# ----------------------------------------------------------------------------------------------- fit


@dataclass
class AgentRLResult(RLResult):
    search_ratio_history: list[float] = field(default_factory=list)  # share of trajectories that searched
    format_history: list[float] = field(default_factory=list)


def fit_agent(cfg: Config, lm, train_samples: list, tools: Sequence, run: RunDir, progress: bool = True,
              ref_path=None, reward: SearchReward | None = None, script=None, agent_cfg: AgentConfig | None = None,
              prompt_fn=None) -> AgentRLResult:
    """Agent GRPO on `lm.model` in place; writes RUN/checkpoints, RUN/final and per-step metrics (rl/...).

    Other agents (Retrv-R1) give `agent_cfg` (default: from agent.*), a `reward` with the same interface
    (``details(trajectory, sample)`` -> .reward/.correct/.format; ``step``/``total``), and `prompt_fn`:
    sample -> (prompt, tool context), the prompt possibly carrying embedding overrides.

    Resumes from the latest checkpoint in RUN/checkpoints (trainer.resume); Ctrl-C checkpoints and stops.
    """
    t_start = time.time()
    seed_everything(cfg.trainer.seed)
    save_config(cfg, run.path / "config.yaml")
    runner = AgentGRPOStep(cfg, lm, train_samples, tools, ref_path, reward, script, agent_cfg, prompt_fn)

    def record(result, m):
        result.search_ratio_history.append(m["search_ratio"])
        result.format_history.append(m["format_rate"])

    return rl_loop(cfg, lm, runner, run, AgentRLResult(0, 0.0), AGENT_HISTORIES, t_start, progress=progress,
                   name="agent-grpo", record=record)


__all__ = ["AgentGRPOStep", "AgentRLResult", "agent_config", "agent_loss", "build_search_reward", "fit_agent",
           "question_of", "searched", "trajectory_metrics"]
