"""mmr1 vs TRL's GRPOTrainer: one GRPO step on the same tiny Qwen2.5-VL, side by side, on the CPU.

    pip install -e ".[bench]"                    # trl 1.16 (never torchvision)
    python benchmarks/vs_trl.py                  # about 5 minutes on 2 busy cores
    python benchmarks/vs_trl.py --threads 2 --rounds 5

Both frameworks train the same saved checkpoint (a random tiny Qwen2.5-VL, size XL: 12 layers,
hidden 768, 81 M parameters, built by `mmr1.models.tiny.build_tiny_model` with a 224x224 pixel
budget when --model-dir has none) on the same 2 prompts, each with one 224x224 image (64 image
tokens), G = 8 completions per prompt, every completion exactly --length tokens (min = max new
tokens), beta = 0.04 with a reference model, one optimisation pass per rollout (mu = 1), the same
reward function, AdamW, constant LR, gradient clipping at 1.0, float32, no vLLM.

A step is one full RL step: generation, reward, reference log-probs, policy forward/backward,
gradient clipping and the optimizer step. TRL's step is timed from its `on_step_begin` to its
`on_step_end` callback (the Trainer's data loading and logging fall outside); mmr1's step is one
`GRPOStep.run` call (prompt loading included). Both run in one process and alternate: one
warm-up step each, then --rounds rounds of (TRL step, mmr1 step); medians are reported.

Peak memory: a thread samples the process's resident set size (/proc/self/statm) every 2 ms; a
step's peak is its highest sample minus the RSS just before the step. glibc's mmap threshold is
pinned at 128 KiB (so every large tensor is unmapped when freed) and the heap is trimmed before
each step, so one framework's step cannot reuse memory the other left behind. Weights, reference
model and AdamW state are resident in both, the same size, and not counted; gradients are.

Before timing, a loss check feeds TRL the completions mmr1 sampled (TRL's own tokenisation,
reference pass and loss code; only its generation is replaced by mmr1's token ids, cut to varied
lengths) and compares the first-step loss and gradients with mmr1's. Both reference models get
the same small perturbation for the check, so the KL term is not trivially zero; they are
restored before timing. Results go to benchmarks/results/vs_trl.json (see benchmarks/README.md).
"""

from __future__ import annotations

import argparse
import ctypes
import json
import os
import platform
import statistics
import sys
import threading
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")

import torch  # noqa: E402

HERE = Path(__file__).resolve().parent


def letters(text: str, sample=None) -> float:
    """The benchmark's reward: the share of the letter 'a' (cheap, and it varies across a group)."""
    return text.count("a") / max(1, len(text))


def trl_letters(completions, **kwargs) -> list[float]:
    return [letters(c[-1]["content"] if isinstance(c, list) else c) for c in completions]


# ----------------------------------------------------------------------------- memory


class RSSPeak:
    """Peak resident set size during a block, above the RSS at its start (sampled by a thread).

    The heap is trimmed (malloc_trim) before each block, so memory freed earlier, by the other
    framework's step for instance, is not there to be reused without showing up. `pin_mmap()`
    fixes glibc's mmap threshold at 128 KiB (no dynamic threshold): every large tensor is then
    mapped on allocation and unmapped on free, and RSS follows the live tensors closely.
    """

    def __init__(self, interval: float = 0.002):
        self.interval = interval
        self.page = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096
        self.pinned = False
        try:
            self._libc = ctypes.CDLL("libc.so.6")
            self._libc.malloc_trim
        except (OSError, AttributeError):  # not glibc: plain RSS sampling
            self._libc = None
        self._fd = os.open("/proc/self/statm", os.O_RDONLY) if os.path.exists("/proc/self/statm") else None

    def pin_mmap(self) -> None:
        if self._libc is not None and not self.pinned:
            self.pinned = bool(self._libc.mallopt(-3, 128 * 1024))  # M_MMAP_THRESHOLD

    def rss(self) -> int:
        if self._fd is not None:
            return int(os.pread(self._fd, 128, 0).split()[1]) * self.page
        import psutil

        return psutil.Process().memory_info().rss

    def __enter__(self):
        if self._libc is not None:
            self._libc.malloc_trim(0)
        self.start = self.peak = self.rss()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._poll, daemon=True)
        self._thread.start()
        return self

    def _poll(self):
        while not self._stop.is_set():
            self.peak = max(self.peak, self.rss())
            time.sleep(self.interval)

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, self.rss())
        self.increase = self.peak - self.start
        return False


# ----------------------------------------------------------------------------- set-up


def build_model(model_dir: Path) -> Path:
    from mmr1.models.tiny import build_tiny_model

    if not (model_dir / "config.json").exists():
        print(f"building tiny qwen2_5_vl XL (224x224 images) in {model_dir} ...", flush=True)
        build_tiny_model(model_dir, family="qwen2_5_vl", size="XL", image_size=224, seed=0)
    return model_dir


def mmr1_config(a, run_dir: Path):
    from mmr1.config import load_config

    return load_config(None, [
        f"logging.run_dir={run_dir}", "logging.tensorboard=false", "logging.progress=false",
        f"rl.prompts_per_step={a.prompts}", f"rollout.group_size={a.group}", f"rollout.batch_size={a.prompts * a.group}",
        f"rollout.max_new_tokens={a.length}", f"rollout.min_new_tokens={a.length}", "rollout.temperature=1.0",
        f"rl.micro_batch_size={a.prompts * a.group}", f"algorithm.beta={a.beta}", "algorithm.kl_estimator=k3",
        "algorithm.loss_agg=token-mean", "algorithm.adv_eps=1e-4", "algorithm.ppo_epochs=1",
        f"rl.lr={a.lr}", "rl.lr_scheduler=constant", "rl.steps=1000", "trainer.max_grad_norm=1.0",
        "trainer.weight_decay=0.0", "rewards.accuracy_weight=0", "rewards.format_weight=0",
        f"rewards.custom={{'{__name__}:letters': 1.0}}", "trainer.seed=0",
    ])


def trl_trainer(a, model_dir: Path, samples, out_dir: Path, callbacks, max_steps: int = 1):
    from datasets import Dataset
    from trl import GRPOConfig, GRPOTrainer

    from mmr1.models.processor import load_processor

    rows = [{"prompt": s.prompt_messages(), "image": s.load_images()[0]} for s in samples]
    args = GRPOConfig(
        output_dir=str(out_dir), use_cpu=True, bf16=False, gradient_checkpointing=False, use_vllm=False,
        report_to="none", disable_tqdm=True, save_strategy="no", logging_steps=10_000, seed=0,
        num_generations=a.group, per_device_train_batch_size=a.prompts * a.group, gradient_accumulation_steps=1,
        steps_per_generation=1, num_iterations=1, max_completion_length=a.length,
        generation_kwargs={"min_new_tokens": a.length}, temperature=1.0, top_p=1.0,
        beta=a.beta, loss_type="dapo", scale_rewards="group", epsilon=0.2,
        learning_rate=a.lr, lr_scheduler_type="constant", warmup_steps=0, weight_decay=0.0, max_grad_norm=1.0,
        max_steps=max_steps, dataloader_num_workers=0,
    )
    processor = load_processor(model_dir, "qwen2_5_vl")
    return GRPOTrainer(model=str(model_dir), reward_funcs=trl_letters, args=args, train_dataset=Dataset.from_list(rows),
                       processing_class=processor, callbacks=callbacks)


# ----------------------------------------------------------------------------- loss check


def _perturb_like(src_model, dst_model, scale: float, seed: int = 0):
    """Add the same small noise to two identical models (sorted by parameter name)."""
    g = torch.Generator().manual_seed(seed)
    dst = dict(dst_model.named_parameters())
    with torch.no_grad():
        for name, p in sorted(src_model.named_parameters()):
            noise = torch.randn(p.shape, generator=g) * scale * float(p.float().std().clamp(min=1e-3))
            p.add_(noise)
            dst[name].add_(noise)


def _grads(model) -> dict:
    return {n: p.grad.detach().clone() for n, p in model.named_parameters() if p.grad is not None}


def _compare_grads(a: dict, b: dict) -> dict:
    keys = sorted(set(a) & set(b))
    fa = torch.cat([a[k].flatten().double() for k in keys])
    fb = torch.cat([b[k].flatten().double() for k in keys])
    worst = max(float((a[k] - b[k]).norm() / a[k].norm().clamp(min=1e-30)) for k in keys)
    return {"params_compared": len(keys), "params_only_one_side": len(set(a) ^ set(b)),
            "rel_l2_diff": float((fa - fb).norm() / fa.norm()),
            "cosine": float(fa @ fb / (fa.norm() * fb.norm())), "worst_param_rel_l2_diff": worst}


def loss_check(a, runner, trainer, samples) -> dict:
    """Same completions, same advantages: TRL's first-step loss and gradients vs mmr1's.

    1. Model level: TRL's `_compute_loss` on its own forward vs mmr1's grouped forward +
       `grpo_loss`, token-mean vs dapo: loss and all parameter gradients. TRL's
       `use_bias_correction_kl` (default True in 1.16) is switched off here: it is the one
       definition that differs (see 2).
    2. Loss level (TRL's loss code fed the same per-token log-probs): seq-mean-token-mean vs
       grpo, and TRL's default dapo (bias-corrected KL) vs token-mean; loss values and the
       gradients with respect to the log-probs, before and after adding beta * k3 / N to mmr1's.
    """
    from mmr1.algos import compute_advantages, grpo_loss
    from mmr1.algos.kl import kl_k3
    from mmr1.data.encode import with_system
    from mmr1.models.forward import completion_logprobs
    from mmr1.rollout.batch import build_grouped_batch, encode_prompts
    from mmr1.train.grpo import _generator

    G, lm = a.group, runner.lm
    policy, ref = lm.model, runner.ref
    bias_kl = trainer.args.use_bias_correction_kl
    saved = {k: v.clone() for k, v in ref.model.state_dict().items()}
    _perturb_like(ref.model, trainer.ref_model, scale=0.05)
    try:
        prompts = [(with_system(s.prompt_messages(), None), s.load_images()) for s in samples]
        groups = runner.engine.sample(prompts, n=G, max_new_tokens=a.length, generator=_generator(123, 0))
        comps = [c for g in groups for c in g]
        # Cut the completions to varied lengths so that the two aggregations differ.
        cut = [max(1, a.length - (7 * i) % a.length) for i in range(len(comps))]
        ids = [c.token_ids[:n] for c, n in zip(comps, cut)]
        texts = [lm.tokenizer.decode(x, skip_special_tokens=True) for x in ids]
        rewards = torch.tensor([letters(t) for t in texts])
        adv = compute_advantages("grpo", rewards, G, scale_std=True, eps=1e-4)
        rows_prompt = [p for p in prompts for _ in range(G)]

        # TRL: its own tokenisation, reference pass, rewards and advantages, on mmr1's token ids.
        dataset_rows = [trainer.train_dataset[i] for i in range(len(samples)) for _ in range(G)]
        orig_generate = trainer._generate_single_turn
        trainer._generate_single_turn = lambda *args, **kw: ([list(x) for x in ids], None)
        trainer.model.train()
        try:
            with torch.no_grad():
                inputs = trainer._generate_and_score_completions(dataset_rows)
        finally:
            trainer._generate_single_turn = orig_generate
        trl_adv = inputs["advantages"].clone()
        mine_prompt = encode_prompts(lm, prompts, "left")
        same_prompt = all(
            [t for t, m in zip(inputs["prompt_ids"][r].tolist(), inputs["prompt_mask"][r].tolist()) if m]
            == [t for t, m in zip(mine_prompt["input_ids"][r // G].tolist(),
                                  mine_prompt["attention_mask"][r // G].tolist()) if m]
            for r in range(len(ids)))
        inputs["advantages"] = adv.clone()  # the loss comparison uses one advantage vector
        trainer.current_gradient_accumulation_steps = 1

        batch = build_grouped_batch(lm, rows_prompt, ids)
        mask = batch["token_mask"].float()
        with torch.no_grad():
            ref_lp = ref.logprobs(batch, 1.0)
        trl_ref = inputs["ref_per_token_logps"]
        out = {"rows": len(ids), "completion_lengths": cut, "same_prompt_tokens": bool(same_prompt),
               "ref_logprob_max_abs_diff": float(((ref_lp - trl_ref) * mask).abs().max()),
               "advantage_max_abs_diff_trl_formula": float((adv - trl_adv).abs().max())}

        # 1. Model level (TRL's own forward, loss and backward), TRL's bias-corrected KL off.
        policy.train()
        trainer.args.use_bias_correction_kl = False
        trainer.loss_type = "dapo"
        policy.zero_grad(set_to_none=True)
        trainer.model.zero_grad(set_to_none=True)
        logp = completion_logprobs(policy, batch, 1.0)
        loss, stats = grpo_loss(logp, None, adv, mask, ref_lp, beta=a.beta, kl_estimator="k3", loss_agg="token-mean")
        trl_loss = trainer._compute_loss(trainer.model, inputs)
        loss.backward()
        trl_loss.backward()
        out["token-mean vs dapo"] = {"mmr1_loss": loss.item(), "trl_loss": trl_loss.item(),
                                     "abs_diff": abs(loss.item() - trl_loss.item()), "kl": stats["kl"].item(),
                                     "grads": _compare_grads(_grads(trainer.model), _grads(policy))}
        policy.zero_grad(set_to_none=True)
        trainer.model.zero_grad(set_to_none=True)
        logp = logp.detach()

        # 2. Loss level: TRL's loss code on the same log-probs (its forward swapped for them), d loss / d logp.
        def trl_on(loss_type: str, bias_corrected: bool):
            trainer.loss_type, trainer.args.use_bias_correction_kl = loss_type, bias_corrected
            leaf = logp.clone().requires_grad_(True)
            orig = trainer._get_per_token_logps_and_entropies
            trainer._get_per_token_logps_and_entropies = lambda *args, **kw: (leaf, torch.zeros_like(leaf), None)
            try:
                value = trainer._compute_loss(trainer.model, inputs)
            finally:
                trainer._get_per_token_logps_and_entropies = orig
            value.backward()
            return value.item(), leaf.grad

        def mmr1_on(agg: str):
            leaf = logp.clone().requires_grad_(True)
            value = grpo_loss(leaf, None, adv, mask, trl_ref, beta=a.beta, kl_estimator="k3", loss_agg=agg)[0]
            value.backward()
            return value.item(), leaf.grad

        def rel(x, y):
            return float((x - y).norm() / y.norm())

        (l_t, g_t), (l_m, g_m) = trl_on("grpo", False), mmr1_on("seq-mean-token-mean")
        out["seq-mean-token-mean vs grpo"] = {"mmr1_loss": l_m, "trl_loss": l_t, "abs_diff": abs(l_m - l_t),
                                              "dlogp_rel_diff": rel(g_t, g_m)}
        (l_t, g_t), (l_m, g_m) = trl_on("dapo", True), mmr1_on("token-mean")
        extra = a.beta * kl_k3(logp, trl_ref) * mask / mask.sum()
        out["dapo default (bias-corrected KL) vs token-mean"] = {
            "mmr1_loss": l_m, "trl_loss": l_t, "abs_diff": abs(l_m - l_t), "dlogp_rel_diff": rel(g_t, g_m),
            "dlogp_rel_diff_after_adding_beta_k3_over_N": rel(g_t, g_m + extra)}
        return out
    finally:
        trainer.args.use_bias_correction_kl = bias_kl
        trainer.loss_type = "dapo"
        trainer.model.zero_grad(set_to_none=True)
        policy.zero_grad(set_to_none=True)
        with torch.no_grad():
            ref.model.load_state_dict(saved)
            trainer.ref_model.load_state_dict(saved)


# ----------------------------------------------------------------------------- timing


def _median(xs):
    return statistics.median(xs) if xs else float("nan")


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--model-dir", default="/tmp/mmr1-bench/qwen2_5_vl-XL-224",
                   help="saved checkpoint (built here if missing: qwen2_5_vl XL, 224x224 images)")
    p.add_argument("--threads", type=int, default=1, help="torch intra-op threads (both frameworks)")
    p.add_argument("--rounds", type=int, default=4, help="timed rounds of (TRL step, mmr1 step)")
    p.add_argument("--warmup", type=int, default=1, help="untimed warm-up steps of each, first")
    p.add_argument("--prompts", type=int, default=2, help="prompts per step")
    p.add_argument("--group", type=int, default=8, help="G, completions per prompt")
    p.add_argument("--length", type=int, default=32, help="completion length in tokens (min = max)")
    p.add_argument("--beta", type=float, default=0.04, help="KL weight (> 0: both run a reference model)")
    p.add_argument("--lr", type=float, default=1e-5)
    p.add_argument("--skip-loss-check", action="store_true")
    p.add_argument("--out", default=str(HERE / "results" / "vs_trl.json"))
    a = p.parse_args(argv)
    if a.beta <= 0:
        p.error("--beta must be > 0 (the comparison includes the reference pass)")
    if a.rounds < 1:
        p.error("--rounds must be >= 1")

    torch.set_num_threads(a.threads)
    torch.manual_seed(0)
    import transformers
    import trl
    from transformers import TrainerCallback

    from mmr1.data.worlds import make_world
    from mmr1.models.loading import load_model
    from mmr1.train.grpo import GRPOStep

    load_before = os.getloadavg() if hasattr(os, "getloadavg") else None
    t_all = time.time()
    model_dir = build_model(Path(a.model_dir))
    work = Path(os.environ.get("TMPDIR", "/tmp")) / "mmr1-bench-run"
    samples = make_world("counting", "train", a.prompts, 0, image_size=224)
    assert all(im.size == (224, 224) for s in samples for im in s.load_images())

    rss = RSSPeak()
    rss.pin_mmap()
    phases = ["warm-up"] * a.warmup + ["timed"] * a.rounds
    res = {k: {"step_s": [], "peak_bytes": []} for k in ("trl", "mmr1")}
    res["trl"].update(generate_and_score_s=[], generate_s=[])
    res["mmr1"]["metrics"] = []

    lm = load_model(model_dir)
    runner = GRPOStep(mmr1_config(a, work / "mmr1"), lm, samples)
    state = {"trl": 0, "mmr1": 0, "t": 0.0, "gen": []}

    def record(who: str, dt: float, extra=None) -> None:
        phase = phases[state[who]]
        if phase == "timed":
            res[who]["step_s"].append(dt)
            res[who]["peak_bytes"].append(rss.increase)
            for k, v in (extra or {}).items():
                res[who][k].append(v)
        name = "TRL " if who == "trl" else "mmr1"
        print(f"  {name} step {state[who]}: {dt:6.2f} s, peak +{rss.increase / 2**20:7.1f} MiB  ({phase})", flush=True)
        state[who] += 1

    def mmr1_step():
        with rss:
            t = time.perf_counter()
            out = runner.run(state["mmr1"])
            dt = time.perf_counter() - t
        record("mmr1", dt, {"metrics": {k: v for k, v in out.metrics.items() if k.startswith("time/")}})

    class Alternate(TrainerCallback):
        """Times TRL's steps and runs one mmr1 step after each (so the two alternate)."""

        def on_step_begin(self, args, st, control, **kw):
            state["gen"] = []
            rss.__enter__()
            state["t"] = time.perf_counter()

        def on_step_end(self, args, st, control, **kw):
            dt = time.perf_counter() - state["t"]
            rss.__exit__(None, None, None)
            gen = state["gen"]
            record("trl", dt, {"generate_and_score_s": sum(x for k, x in gen if k == "score"),
                               "generate_s": sum(x for k, x in gen if k == "gen")})
            mmr1_step()

    trainer = trl_trainer(a, model_dir, samples, work / "trl", [Alternate()], max_steps=len(phases))

    def timed_method(name, key):
        orig = getattr(trainer, name)

        def wrapper(*args, **kw):
            t = time.perf_counter()
            try:
                return orig(*args, **kw)
            finally:
                state["gen"].append((key, time.perf_counter() - t))
        setattr(trainer, name, wrapper)

    timed_method("_generate_and_score_completions", "score")
    timed_method("_generate_single_turn", "gen")

    check = None
    if not a.skip_loss_check:
        print("loss check (same completions, same advantages) ...", flush=True)
        t = time.time()
        check = loss_check(a, runner, trainer, samples)
        print(f"  done in {time.time() - t:.0f} s", flush=True)

    print(f"{a.warmup} warm-up + {a.rounds} timed rounds of (TRL step, mmr1 step), {a.threads} thread(s)", flush=True)
    trainer.train()
    load_after = os.getloadavg() if hasattr(os, "getloadavg") else None

    med = {k: _median(res[k]["step_s"]) for k in ("trl", "mmr1")}
    mem = {k: _median(res[k]["peak_bytes"]) for k in ("trl", "mmr1")}
    mmr1_phases = {k[5:]: _median([m[k] for m in res["mmr1"]["metrics"]]) for k in res["mmr1"]["metrics"][0]}
    gs, g = _median(res["trl"]["generate_and_score_s"]), _median(res["trl"]["generate_s"])
    trl_phases = {"generate": g, "reward+reference+batching": gs - g, "policy+optimizer": med["trl"] - gs}
    mib = 2**20
    out = {
        "trl_step_s": med["trl"], "mmr1_step_s": med["mmr1"], "speedup": med["trl"] / med["mmr1"],
        "trl_peak_mib": mem["trl"] / mib, "mmr1_peak_mib": mem["mmr1"] / mib,
        "peak_memory_ratio": mem["mmr1"] / max(1, mem["trl"]),
        "trl_steps_s": res["trl"]["step_s"], "mmr1_steps_s": res["mmr1"]["step_s"],
        "trl_peaks_mib": [x / mib for x in res["trl"]["peak_bytes"]],
        "mmr1_peaks_mib": [x / mib for x in res["mmr1"]["peak_bytes"]],
        "trl_phases_s": trl_phases, "mmr1_phases_s": mmr1_phases,
        "loss_check": check,
        "setup": {"model": "tiny qwen2_5_vl XL (random weights), 224x224 images", "model_dir": str(model_dir),
                  "params_m": sum(p.numel() for p in lm.model.parameters()) / 1e6,
                  "prompts_per_step": a.prompts, "group_size": a.group, "completion_tokens": a.length,
                  "beta": a.beta, "mu": 1, "warmup": a.warmup, "rounds": a.rounds, "threads": a.threads,
                  "step_time": "TRL: on_step_begin..on_step_end; mmr1: GRPOStep.run; median over timed rounds",
                  "peak_memory": "peak RSS above the pre-step RSS, 2 ms sampling, malloc_trim before each step, "
                                 f"mmap threshold pinned at 128 KiB ({'on' if rss.pinned else 'unavailable'}); "
                                 "median over timed rounds"},
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform(), "python": platform.python_version(),
                    "torch": torch.__version__, "transformers": transformers.__version__, "trl": trl.__version__,
                    "loadavg_before": load_before, "loadavg_after": load_after},
        "wall_s": time.time() - t_all,
    }
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    Path(a.out).write_text(json.dumps(out, indent=2) + "\n")

    print()
    print(f"{'':22}{'TRL GRPOTrainer':>17}{'mmr1':>11}{'mmr1 / TRL':>12}")
    print(f"{'step time (median)':22}{med['trl']:>15.2f} s{med['mmr1']:>9.2f} s{med['mmr1'] / med['trl']:>12.2f}"
          f"   -> mmr1 {out['speedup']:.2f}x faster")
    print(f"{'peak memory (median)':22}{mem['trl'] / mib:>13.0f} MiB{mem['mmr1'] / mib:>7.0f} MiB"
          f"{out['peak_memory_ratio']:>12.2f}")
    print("  TRL phases:  " + ", ".join(f"{k} {v:.2f} s" for k, v in trl_phases.items()))
    print("  mmr1 phases: " + ", ".join(f"{k} {v:.2f} s" for k, v in mmr1_phases.items()))
    print(f"  {a.prompts} prompts x G={a.group}, {a.length} tokens each, {a.threads} thread(s); "
          "peak memory = peak RSS above the RSS before the step")
    if check:
        print("loss check (mmr1 vs TRL on the same completions and advantages):")
        print(f"  same prompt tokens: {check['same_prompt_tokens']}; reference log-probs max |diff| "
              f"{check['ref_logprob_max_abs_diff']:.1e}; advantages vs TRL's own formula max |diff| "
              f"{check['advantage_max_abs_diff_trl_formula']:.1e}")
        for k, v in check.items():
            if isinstance(v, dict) and "mmr1_loss" in v:
                line = f"  {k:47} mmr1 {v['mmr1_loss']:+.7f}  TRL {v['trl_loss']:+.7f}  |diff| {v['abs_diff']:.1e}"
                if "grads" in v:
                    line += f"; parameter grads rel diff {v['grads']['rel_l2_diff']:.1e}"
                if "dlogp_rel_diff" in v:
                    line += f"; d/dlogp rel diff {v['dlogp_rel_diff']:.1e}"
                if "dlogp_rel_diff_after_adding_beta_k3_over_N" in v:
                    line += f" ({v['dlogp_rel_diff_after_adding_beta_k3_over_N']:.1e} with beta*k3/N added)"
                print(line)
    print(f"wrote {a.out} ({out['wall_s']:.0f} s in all)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
