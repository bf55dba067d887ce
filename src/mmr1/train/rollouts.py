"""Rollout records: what the model saw and wrote at sampled steps, kept for `mmr1 view` (RUN/rollouts/).

RL loses its rollouts after each step; a run is judged by reading them. At every `logging.rollouts.every`-th
step the first `logging.rollouts.groups` prompt groups (SFT: samples of the step's batch) are written:

    rollouts/step-000012.jsonl   one JSON object per group, written when the step ends
    rollouts/images/<sha1>.png   every image once, named by a hash of its pixels (prompt and tool images)

A group: {"step", "kind" ("grpo" | "agent" | "sft"), "group", "sample_id", "category", "gold", "prompt"
(chat messages; image parts point at "images/<sha1>.png"), "completions"}. A completion: {"index", "text",
"turns" (assistant turns, tool calls and observations with their images), "segments" (the decoded tokens in
runs of equal loss mask: {"text", "loss"}), "mask_spans" ([start, end, in_loss] token ranges of the completion's
ids; SFT: of the whole sequence), "rewards" (per reward function), "reward", "advantage",
"correct", "format_ok", "truncated", "used_tool", "finish_reason", "tokens" {"sampled", "injected",
"in_loss"}, "logprob" {"mean", "min", "entropy_est"}}. `entropy_est` is the mean -log p of the sampled
tokens, a Monte Carlo estimate of the policy's per-token entropy at the sampling temperature.

Only the main rank records (its own groups); a failure to record is logged once and recording stops, never
the run. `tool_collapse` is the check both the training log and the viewer use.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import re
from pathlib import Path

log = logging.getLogger("mmr1")

_PADS = re.compile(r"(<\|(?:image|video)_pad\|>)\1+")
TOOL_RATE_KEYS = ("tool_call_rate", "search_ratio")  # per-step metrics that give the share of rollouts using a tool


def collapse_pads(text: str) -> str:
    """'<|image_pad|>' repeated N times -> '<|image_pad|>×N' (an image is hundreds of identical tokens)."""
    return _PADS.sub(lambda m: f"{m.group(1)}×{len(m.group(0)) // len(m.group(1))}", text)


def mask_runs(mask: list[int]) -> list[tuple[int, int, int]]:
    """(start, end, value) runs of equal values: the loss-mask spans."""
    out: list[tuple[int, int, int]] = []
    for i, v in enumerate(mask):
        v = 1 if v else 0
        if out and out[-1][2] == v:
            out[-1] = (out[-1][0], i + 1, v)
        else:
            out.append((i, i + 1, v))
    return out


def _rolling(xs: list[float], w: int) -> list[float]:
    out, acc = [], 0.0
    for i, x in enumerate(xs):
        acc += x
        if i >= w:
            acc -= xs[i - w]
        out.append(acc / min(i + 1, w))
    return out


def tool_collapse(tool_rate: list[float], reward: list[float], window: int = 5) -> str | None:
    """A warning when the tool-call rate has fallen to half its peak or less while the reward rose.

    Both series are smoothed by a rolling mean over `window` steps; the reward is compared between the step
    where the tool rate peaked and the latest step. None when there is nothing to warn about."""
    pairs = [(t, r) for t, r in zip(tool_rate, reward) if _finite(t) and _finite(r)]
    if len(pairs) < 2:
        return None
    w = max(1, min(window, len(pairs) // 2))
    t = _rolling([p[0] for p in pairs], w)
    r = _rolling([p[1] for p in pairs], w)
    peak = max(range(len(t)), key=lambda i: t[i])
    if t[peak] <= 0 or peak == len(t) - 1 or t[-1] > 0.5 * t[peak] or r[-1] <= r[peak]:
        return None
    return (f"tool-use collapse? the tool-call rate fell from {t[peak]:.2f} to {t[-1]:.2f} "
            f"({100 * (1 - t[-1] / t[peak]):.0f}% down) while the reward rose from {r[peak]:.3f} to {r[-1]:.3f} "
            f"(rolling means over {w} steps): read the late rollouts before trusting the reward")


def _finite(x) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)


def _lp_summary(lps: list[float]) -> dict:
    if not lps:
        return {}
    mean = sum(lps) / len(lps)
    return {"mean": round(mean, 4), "min": round(min(lps), 4), "entropy_est": round(-mean, 4)}


class RolloutRecorder:
    """Writes RUN/rollouts/step-NNNNNN.jsonl and the images they show; see the module docstring."""

    def __init__(self, run_path: str | Path, cfg, tokenizer=None):
        self.cfg = cfg  # LoggingConfig.rollouts
        self.root = Path(run_path) / "rollouts"
        self.images = self.root / "images"
        self.tokenizer = tokenizer
        self._known: set[str] = set()
        self._tool_rate: list[float] = []
        self._reward: list[float] = []
        self._warned = False
        from .. import dist

        self.active = bool(cfg.enabled) and dist.is_main()

    @classmethod
    def for_run(cls, run, cfg, lm=None) -> RolloutRecorder:
        return cls(run.path, cfg.logging.rollouts, getattr(lm, "tokenizer", None))

    def wants(self, step: int) -> bool:
        return self.active and step % self.cfg.every == 0

    # ---------------------------------------------------------------------------------------- storing

    def image(self, img) -> str:
        """Store a PIL image once (by a hash of its pixels); its path relative to rollouts/."""
        h = hashlib.sha1(f"{img.mode}{img.size}".encode())
        h.update(img.tobytes())
        name = h.hexdigest()[:20] + ".png"
        if name not in self._known:
            path = self.images / name
            if not path.exists():
                self.images.mkdir(parents=True, exist_ok=True)
                tmp = path.with_suffix(f".tmp{os.getpid()}")
                img.save(tmp, format="PNG")
                os.replace(tmp, path)
            self._known.add(name)
        return f"images/{name}"

    def messages(self, messages: list[dict], images: list) -> list[dict]:
        """Chat messages with each image part pointing at its stored file (images in message order)."""
        it = iter(images or [])
        out = []
        for m in messages:
            c = m.get("content")
            if isinstance(c, str):
                out.append({"role": m.get("role"), "content": [{"type": "text", "text": c}]})
                continue
            parts = []
            for p in c or []:
                if p.get("type") == "image":
                    img = next(it, None)
                    parts.append({"type": "image", "image": self.image(img) if img is not None else None})
                else:
                    parts.append({"type": "text", "text": p.get("text", "")})
            out.append({"role": m.get("role"), "content": parts})
        return out

    def segments(self, ids: list[int], mask: list[int]) -> list[dict]:
        """The decoded tokens in runs of equal loss mask."""
        if self.tokenizer is None:
            return []
        return [{"text": collapse_pads(self.tokenizer.decode(ids[a:b], skip_special_tokens=False)), "loss": bool(v)}
                for a, b, v in mask_runs(mask)]

    def write(self, step: int, groups: list[dict]) -> Path:
        self.root.mkdir(parents=True, exist_ok=True)
        path = self.root / f"step-{step:06d}.jsonl"
        tmp = path.with_suffix(f".tmp{os.getpid()}")
        with open(tmp, "w") as f:
            for g in groups:
                f.write(json.dumps(g, default=_jsonable) + "\n")
        os.replace(tmp, path)
        return path

    def _guard(self, step: int, fn) -> None:
        try:
            fn()
        except Exception as e:  # noqa: BLE001 - recording is a side channel and must never stop training
            self.active = False
            log.warning("rollout recording failed at step %d (%s: %s); recording is off for the rest of the run",
                        step, type(e).__name__, e)

    # ------------------------------------------------------------------------------------------ hooks

    def after_rl_step(self, step: int, runner, metrics: dict) -> None:
        """Once per RL step (1-based `step`): the tool-collapse check, then the records of a recorded step."""
        rate = next((metrics[k] for k in TOOL_RATE_KEYS if k in metrics), None)
        if rate is not None and "reward/mean" in metrics:
            self._tool_rate.append(rate)
            self._reward.append(metrics["reward/mean"])
            msg = tool_collapse(self._tool_rate, self._reward)
            if msg and not self._warned:
                self._warned = True
                log.warning("step %d: %s", step, msg)
        last = getattr(runner, "last", None)
        if last is None or not self.wants(step):
            return
        build = {"grpo": grpo_records, "agent": agent_records}[last["kind"]]
        self._guard(step, lambda: self.write(step, build(self, step, last, self.cfg.groups)))

    def after_sft_step(self, step: int, encoded: list, samples_by_source: dict) -> None:
        """Once per SFT step: the first samples of the step's batch with their loss-mask spans."""
        if self.wants(step):
            self._guard(step, lambda: self.write(step, sft_records(self, step, encoded[:self.cfg.groups],
                                                                   samples_by_source)))


def _jsonable(x):
    if hasattr(x, "item"):
        return x.item()
    return str(x)


def _num(x) -> float | None:
    x = float(x)
    return round(x, 6) if math.isfinite(x) else None


def _sample_fields(s) -> dict:
    return {"sample_id": getattr(s, "id", None), "category": getattr(s, "category", None),
            "gold": list(getattr(s, "answers", []) or [])}


# --------------------------------------------------------------------------------------------- builders


def grpo_records(rec: RolloutRecorder, step: int, last: dict, n_groups: int) -> list[dict]:
    """Single-turn GRPO: `last` holds the step's samples, prompts (messages, images), completion groups, the
    per-function scores, total rewards and advantages, and whether truncated completions leave the loss."""
    out = []
    per_fn, total, adv = last["per_fn"], last["total"], last["adv"]
    for gi, (s, (msgs, imgs, *_), comps) in enumerate(zip(last["samples"], last["prompts"], last["groups"])):
        if gi >= n_groups:
            break
        G = len(comps)
        rows = []
        for k, c in enumerate(comps):
            i = gi * G + k
            rewards = {n: _num(v[i]) for n, v in per_fn.items()}
            truncated = c.finish_reason == "length"
            in_loss = 0 if truncated and last["mask_truncated"] else 1
            rows.append({
                "index": k, "text": c.text,
                "turns": [{"type": "assistant", "text": c.text, "round": 1, "finish": c.finish_reason,
                           "loss": bool(in_loss)}],
                "segments": rec.segments(list(c.token_ids), [in_loss] * len(c.token_ids)),
                "mask_spans": [[0, len(c.token_ids), in_loss]] if c.token_ids else [],
                "rewards": rewards, "reward": _num(total[i]), "advantage": _num(adv[i]),
                "correct": (rewards["accuracy"] > 0) if rewards.get("accuracy") is not None else None,
                "format_ok": (rewards["format"] >= 1) if rewards.get("format") is not None else None,
                "truncated": truncated, "used_tool": False, "finish_reason": c.finish_reason,
                "tokens": {"sampled": len(c.token_ids), "injected": 0, "in_loss": in_loss * len(c.token_ids)},
                "logprob": _lp_summary(list(c.logprobs or [])),
            })
        out.append({"step": step, "kind": "grpo", "group": gi, **_sample_fields(s),
                    "prompt": rec.messages(msgs, imgs), "completions": rows})
    return out


def agent_records(rec: RolloutRecorder, step: int, last: dict, n_groups: int) -> list[dict]:
    """Multi-turn agent GRPO: `last` holds the rows' samples, trajectories, reward details, advantages, the
    group size, the system prompt and whether truncated trajectories leave the loss."""
    from ..data.encode import with_system

    G, trajs, samples, details, adv = last["G"], last["trajs"], last["samples"], last["details"], last["adv"]
    out = []
    for gi in range(min(n_groups, len(trajs) // G)):
        s = samples[gi * G]
        t0 = trajs[gi * G]
        msgs = with_system(s.prompt_messages(), last["system_prompt"])
        rows = []
        for k in range(G):
            i = gi * G + k
            t, d = trajs[i], details[i]
            truncated = t.finish_reason in ("length", "turn_length")
            mask = [0] * len(t.response_mask) if truncated and last["mask_truncated"] else list(t.response_mask)
            tool_imgs = iter(t.images[t.n_prompt_images:])
            turns = []
            for turn in t.turns:
                turns.append({"type": "assistant", "text": turn.text, "round": turn.round, "finish": turn.finish,
                              "loss": any(mask[turn.start:turn.end]), "scripted": turn.scripted})
                for c in (c for c in t.tool_calls if c.round == turn.round):
                    turns.append({"type": "tool_call", "tool": c.tool, "query": c.query, "status": c.status,
                                  "error": c.error, "latency_s": round(c.latency_s, 4), "round": c.round})
                    if c.span is not None or c.observation:
                        imgs = [rec.image(next(tool_imgs)) for _ in range(c.n_images)]
                        turns.append({"type": "observation", "tool": c.tool, "text": c.observation,
                                      "images": imgs, "loss": False,
                                      "tokens": (c.span[1] - c.span[0]) if c.span else 0})
            rewards = {"accuracy": float(bool(getattr(d, "correct", False)))}
            parts = (("format", "format"), ("penalty", "search_penalty"))
            rewards.update({name: _num(getattr(d, f)) for f, name in parts if hasattr(d, f)})
            lps = [lp for lp, m in zip(t.logprobs, t.response_mask) if m]
            rows.append({
                "index": k, "text": t.text, "turns": turns, "segments": rec.segments(list(t.token_ids), mask),
                "mask_spans": [list(r) for r in mask_runs(mask)],
                "rewards": rewards, "reward": _num(d.reward), "advantage": _num(adv[i]),
                "correct": bool(getattr(d, "correct", False)),
                "format_ok": (float(d.format) >= 1) if hasattr(d, "format") else None,
                "answer": getattr(d, "answer", None), "truncated": truncated,
                "used_tool": any(c.status in ("ok", "error") for c in t.tool_calls),
                "finish_reason": t.finish_reason,
                "tokens": {"sampled": t.n_sampled, "injected": len(t.token_ids) - t.n_sampled, "in_loss": sum(mask)},
                "logprob": _lp_summary(lps),
            })
        out.append({"step": step, "kind": "agent", "group": gi, **_sample_fields(s),
                    "prompt": rec.messages(msgs, t0.images[:t0.n_prompt_images]), "completions": rows})
    return out


def sft_records(rec: RolloutRecorder, step: int, encoded: list, samples_by_source: dict) -> list[dict]:
    """SFT: each sample's prompt and its whole token sequence in loss-mask runs (assistant tokens carry loss)."""
    out = []
    for gi, e in enumerate(encoded):
        s = samples_by_source.get(e.source)
        ids = e.input_ids.tolist()
        mask = (e.labels >= 0).int().tolist()
        target = s.target() if s is not None and hasattr(s, "target") else None
        comp = {"index": 0, "text": target or "", "segments": rec.segments(ids, mask),
                "mask_spans": [list(r) for r in mask_runs(mask)],
                "turns": [{"type": "assistant", "text": target or "", "round": 1, "finish": None, "loss": True}],
                "rewards": {}, "reward": None, "advantage": None, "correct": None, "format_ok": None,
                "truncated": False, "used_tool": False, "finish_reason": None,
                "tokens": {"sampled": 0, "injected": 0, "in_loss": sum(mask), "total": len(ids)}, "logprob": {}}
        prompt = rec.messages(s.prompt_messages(), s.load_images()) if s is not None else []
        fields = _sample_fields(s) if s is not None else {"sample_id": e.source, "category": None, "gold": []}
        out.append({"step": step, "kind": "sft", "group": gi, **fields, "prompt": prompt, "completions": [comp]})
    return out


__all__ = ["RolloutRecorder", "TOOL_RATE_KEYS", "agent_records", "collapse_pads", "grpo_records", "mask_runs",
           "sft_records", "tool_collapse"]
