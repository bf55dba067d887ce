"""MMSearch-R1 (METHODS §4): does RL teach a model to search only when it must, and does the search penalty
make it search less for what it already knows?

Per seed (the seed also draws the entity world, so each seed is another world):

1. **World and index.** The `entities` world (`mmr1.data.worlds.entities`): emblems of invented organisations,
   questions about facts the image does not show; half of the entities are "familiar". Its corpus (one page
   and emblem per entity) is indexed locally (`mmr1.tools.index.build_index`) into OUT/seedS/index, and tool
   results are cached on disk beside it, shared by every stage of the seed.
2. **Warm-up SFT** (the tiny model's stand-in for an instruct model that already follows the protocol): direct
   answers for every fact of every familiar entity (its "world knowledge") and image-search trajectories for
   the search-required train questions; the search observations are the real tool's results, rendered as the
   agent loop renders them, so SFT sees what rollouts see. Loss on every assistant turn.
3. **RL** from the warm-up model (also the KL reference) with `fit_agent`: once without the search penalty
   (p = 0) and once with search.penalty (the paper's 0.1).
4. **Evaluation**, greedy multi-turn rollouts on the test split: the warm-up model, both RL models, and two
   baselines on the warm-up model: always search (RAG-style: round 1 is the image-search turn, so its results
   are always injected before the answer) and never search (one round, no tools: a turn that asks for a search
   ends without an answer). Accuracy and search ratio (a search call was made), overall and on familiar vs
   unfamiliar entities.

Stages write STAGE/result.json when done (`experiment.run_stage`), so rerunning the command resumes; training
stages resume from their checkpoints. The run ends in OUT/results.json and OUT/results.md (mean ± std over seeds).
With model.path and a data file (FVQA parquet) instead of the world, set mmsearch.warmup_steps=0 and give
search.index (or search.backend=web); the familiar/unfamiliar columns then stay empty.
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path

from ...build import build_model, build_samples
from ...config import Config, load_config, to_dict
from ...data.schema import Sample, assistant_turn, count_image_parts, load_image
from ...errors import ConfigError
from ..common import derive_config, fingerprint, fmt_mean_std, markdown_rows, run_recipe, run_stage
from ...rollout.agent import AgentLoop, ObservationFormat
from ...tools import IMAGE_MARKER, ToolResult, marked_parts
from ...tools.search import raise_if_down
from ...train.agent_grpo import (agent_config, build_search_reward, fit_agent, question_of, searched,
                               trajectory_metrics)
from ...train.grpo import mean_first_last
from ...train.sft import train_sft
from ...ui import print_table

log = logging.getLogger("mmr1")

METHODS = ("warmup", "rl", "rl_penalty", "always_search", "never_search")
LABELS = {"warmup": "warm-up SFT", "base": "base", "rl": "RL, no search penalty", "rl_penalty": "RL, search penalty",
          "always_search": "always search (RAG)", "never_search": "never search (direct)"}
TINY_VOCAB = 4096  # room for every word of the entity world: ~2K tokens, prompts half as long as with 1K
GENERIC_SEARCH_TURN = "<reason>I need to search with the image.</reason><search><img></search>"
COLUMNS = [("accuracy", "accuracy"), ("accuracy/familiar", "acc. familiar"), ("accuracy/unfamiliar", "acc. unfamiliar"),
           ("search_ratio", "search ratio"), ("search_ratio/familiar", "search familiar"),
           ("search_ratio/unfamiliar", "search unfamiliar")]


# ------------------------------------------------------------------------------------------ checks


def is_entity_world(cfg: Config) -> bool:
    return cfg.data.train == "world:entities"


def check_mmsearch(cfg: Config) -> None:
    mc = cfg.mmsearch
    unknown = [m for m in mc.methods if m not in METHODS]
    if unknown or not mc.methods:
        raise ConfigError(f"mmsearch.methods: unknown {unknown} or empty; choose from {list(METHODS)}")
    if not mc.seeds or not all(isinstance(s, int) and not isinstance(s, bool) and s >= 0 for s in mc.seeds):
        raise ConfigError(f"mmsearch.seeds: need a non-empty list of integers >= 0; got {mc.seeds!r}")
    if not cfg.model.path and not mc.warmup_steps:
        raise ConfigError("model.path is empty and mmsearch.warmup_steps is 0: give the base checkpoint in model.path, "
                          "or set mmsearch.warmup_steps > 0 to warm up a tiny model on the entity world first")
    if mc.warmup_steps and not is_entity_world(cfg):
        raise ConfigError("mmsearch.warmup_steps > 0 needs data.train=world:entities (its teacher trajectories); "
                          "with other data set mmsearch.warmup_steps=0")
    if cfg.search.backend == "local" and not cfg.search.index and not is_entity_world(cfg):
        raise ConfigError("search.index is empty: give a local index (`mmr1 search build-index`), use "
                          "data.train=world:entities, or search.backend=web")
    for split in ("train", "eval"):
        if not getattr(cfg.data, split):
            raise ConfigError(f"data.{split} is empty: give a data path or world:entities")


# ------------------------------------------------------------------------------------------ tools


def _thumb(img, size: int | None):
    img = img.convert("RGB")
    if size:
        img.thumbnail((size, size))
    return img


class PageImageSearchTool:
    """Image search over a local index whose hits carry their page: per hit a thumbnail, the title and the page
    text (`entities.format_results`, the entity world's teacher observation). `ImageSearchTool` is the paper's
    titles-only variant."""

    uses_images = True

    def __init__(self, index, k: int = 5, *, name: str = "image_search", thumb_size: int | None = None,
                 max_chars: int | None = None):
        self.index, self.k, self.name, self.thumb_size, self.max_chars = index, int(k), name, thumb_size, max_chars

    def __call__(self, query: str, *, images: list) -> ToolResult:
        from ...data.worlds.entities import format_results
        from ...tools.search import truncate

        if not images:
            raise ValueError("no image to search with: image search looks up the question's image")
        hits = [h for h in self.index.search_image(images[0], self.k) if h.thumbnail]
        records = [{"title": h.title, "text": truncate(h.text, self.max_chars)} for h in hits]
        return ToolResult(format_results(records), [_thumb(h.image(), self.thumb_size) for h in hits])


def entity_params(cfg: Config) -> dict:
    params = dict(cfg.data.world_params)
    if cfg.data.instruction is not None:
        params["instruction"] = cfg.data.instruction
    return params


def ensure_index(cfg: Config, seed_dir: Path) -> Path:
    """search.index, or the entity world's corpus indexed into SEED/index (built once; a rerun reuses it)."""
    if cfg.search.index:
        return Path(cfg.search.index)
    from ...data.worlds import entities
    from ...tools.embedders import make_embedder
    from ...tools.index import build_index

    out = seed_dir / "index"
    if not (out / "meta.json").exists():
        p = entities.EntityParams.make(entity_params(cfg))
        build_index(entities.corpus(cfg.data.world_seed, p.n_entities, p.image_size), out,
                    make_embedder(cfg.search.embedder), source="world:entities")
    return out


def make_tools(cfg: Config, index_path: Path | None, cache_root: Path | None) -> list:
    """[image_search, text_search] per search.*, each wrapped in a disk cache when search.cache."""
    from ...tools.search import CachedTool, ImageSearchTool, TextSearchTool, make_search_tools

    sc = cfg.search
    if sc.backend == "web":
        tools = make_search_tools(backend="web", k=sc.top_k, max_chars=sc.max_chars,
                                  max_consecutive_failures=sc.max_consecutive_failures)
    else:
        from ...tools.index import SearchIndex

        idx = SearchIndex.load(index_path)
        image = (PageImageSearchTool(idx, sc.top_k, thumb_size=sc.thumb_size, max_chars=sc.max_chars)
                 if sc.image_results == "pages" else ImageSearchTool(idx, sc.top_k, thumb_size=sc.thumb_size))
        tools = [image, TextSearchTool(idx, sc.top_k, sc.text_mode, max_chars=sc.max_chars)]
    if sc.cache and cache_root is not None:
        # results depend on these settings, not only on the query: one cache per combination
        sub = f"{sc.backend}-{sc.image_results}-k{sc.top_k}-t{sc.thumb_size or 0}-c{sc.max_chars}-{sc.text_mode}"
        tools = [CachedTool(t, Path(sc.cache_dir or cache_root) / sub) for t in tools]
    return tools


# ------------------------------------------------------------------------------------------ warm-up data


def search_turn(samples: list[Sample]) -> str:
    """The image-search turn of the entity world's teacher (the always-search baseline's round 1)."""
    from ...data.worlds.entities import teacher_trajectory

    for s in samples:
        if s.meta.get("world") == "entities" and not s.meta.get("familiar", True):
            return teacher_trajectory(s).turns[0]
    return GENERIC_SEARCH_TURN


def with_tool_observations(sample: Sample, tools: dict, fmt: ObservationFormat) -> Sample | None:
    """The sample's prompt followed by its teacher trajectory, each observation being the real tool's result for
    the question image (rendered by `fmt`, images at their markers, as the agent loop renders it). None when the
    tool's top hit is not the entity (the teacher's answer turn would not follow from the result)."""
    from ...data.worlds.entities import teacher_trajectory

    t = teacher_trajectory(sample)
    first = next((i for i, m in enumerate(sample.messages) if m["role"] == "assistant"), len(sample.messages))
    messages = list(sample.messages[:first])
    images = list(sample.images[:count_image_parts(messages)])
    for k, turn in enumerate(t.turns):
        messages.append(assistant_turn(turn))
        if k < len(t.observations):
            obs = t.observations[k]
            res = tools[obs.tool](obs.query, images=[load_image(images[0])])
            if f"1. {IMAGE_MARKER} {sample.meta['name']}\n" not in res.text:
                return None
            text = fmt.success(obs.tool, res.text, question_of(sample))
            messages.append({"role": "user", "content": marked_parts(text, len(res.images))})
            images += res.images
    return Sample(id=sample.id, messages=messages, images=images, answers=sample.answers,
                  answer_type=sample.answer_type, category=sample.category, source=sample.source, meta=sample.meta)


def _draw(pool: list, n: int, rng) -> list:
    """n items of `pool`: seeded shuffles of it, one after another (repeats only when n > len(pool))."""
    out = []
    while pool and len(out) < n:
        order = list(pool)
        rng.shuffle(order)
        out += order[:n - len(out)]
    return out


def warmup_samples(cfg: Config, tools: list, fmt: ObservationFormat | None = None) -> tuple[list[Sample], int]:
    """The warm-up SFT mix with real tool observations; (samples, dropped). Its pools are `entities.warmup_sft`'s:
    direct answers (every fact of every familiar entity) and image-search trajectories (one per search-required
    train question). mmsearch.warmup_size and warmup_search_share set how many of each are drawn."""
    import random

    from ...data.worlds.entities import warmup_sft

    mc = cfg.mmsearch
    fmt = fmt or ObservationFormat()
    base = warmup_sft(cfg.data.world_seed, render=fmt.success, **entity_params(cfg))
    direct = [s for s in base if s.meta.get("familiar")]
    search = [s for s in base if not s.meta.get("familiar")]
    if mc.warmup_size or mc.warmup_search_share:
        n = mc.warmup_size or len(base)
        share = mc.warmup_search_share or len(search) / max(1, len(base))
        rng = random.Random(f"warmup/{cfg.trainer.seed}")
        n_search = round(share * n)
        direct, search = _draw(direct, n - n_search, rng), _draw(search, n_search, rng)
    by_name = {t.name: t for t in tools}
    out, dropped, built = list(direct), 0, {}
    for s in search:
        if s.id not in built:
            built[s.id] = with_tool_observations(s, by_name, fmt)
        if built[s.id] is None:
            dropped += 1
        else:
            out.append(built[s.id])
    return out, dropped


def vocab_text(cfg: Config) -> str:
    """Text the tiny model's tokenizer learns its merges from: the entity world's prompts, pages and teacher turns."""
    from ...data.worlds import entities
    from ...rollout.agent import AFTER_IMAGE_SEARCH, AFTER_TEXT_SEARCH

    p = entities.EntityParams.make(entity_params(cfg))
    lines = [p.instruction or "", AFTER_IMAGE_SEARCH, AFTER_TEXT_SEARCH, entities.IMAGE_RESULTS_HEADER,
             "Searched results: <information> </information> Original user's question:"]
    lines += [q for qs in entities.TEMPLATES.values() for q in qs]
    for e in entities.entities(cfg.data.world_seed, p.n_entities, p.familiar_fraction):
        lines += [e.text, *(e.fact_sentence(k) for k in entities.VARIANTS)]
    ws = entities.warmup_sft(cfg.data.world_seed, render=lambda tool, text, q: text, **entity_params(cfg))
    lines += [m["content"][0]["text"] for s in ws[::7] for m in s.messages if m["role"] == "assistant"]
    return "\n".join(lines)


# ------------------------------------------------------------------------------------------ evaluation


def evaluate_search(lm, samples: list[Sample], cfg: Config, tools: list, *, mode: str = "policy",
                    out_dir: Path | None = None) -> dict:
    """Greedy multi-turn rollouts, one per sample. mode: "policy" (the model decides), "always_search" (round 1 is
    the image-search turn), "never_search" (one round, no tools). Writes predictions.jsonl and metrics.json."""
    if mode not in ("policy", "always_search", "never_search"):
        raise ValueError(f"mode must be policy, always_search or never_search, got {mode!r}")
    from ...data.encode import with_system

    reward = build_search_reward(cfg)
    loop = AgentLoop(lm, [] if mode == "never_search" else tools,
                     agent_config(cfg, sample=False, max_rounds=1 if mode == "never_search" else None))
    script = {1: search_turn(samples)} if mode == "always_search" else None
    trajs, details = [], []
    bs = max(1, cfg.rollout.batch_size)
    try:
        for i in range(0, len(samples), bs):
            chunk = samples[i:i + bs]
            prompts = [(with_system(s.prompt_messages(), cfg.data.system_prompt), s.load_images()) for s in chunk]
            groups = loop.run(prompts, n=1, questions=[question_of(s) for s in chunk], script=script,
                              contexts=list(chunk))
            raise_if_down(tools)
            trajs += [g[0] for g in groups]
    finally:
        loop.close()
    details = [reward.details(t, s) for t, s in zip(trajs, samples)]
    m = trajectory_metrics(trajs, samples, details)
    m["n"] = len(samples)
    m["n_familiar"] = sum(s.meta.get("familiar") is True for s in samples)
    m["n_unfamiliar"] = sum(s.meta.get("familiar") is False for s in samples)
    if out_dir is not None:
        out_dir = Path(out_dir)
        out_dir.mkdir(parents=True, exist_ok=True)
        with open(out_dir / "predictions.jsonl", "w") as f:
            for s, t, d in zip(samples, trajs, details):
                f.write(json.dumps({"id": s.id, "familiar": s.meta.get("familiar"), "answers": s.answers,
                                    "answer": d.answer, "correct": d.correct, "reward": d.reward,
                                    "format": d.format, "searched": searched(t), "finish": t.finish_reason,
                                    "turns": [x.text for x in t.turns],
                                    "tool_calls": [{"round": c.round, "tool": c.tool, "status": c.status,
                                                    "error": c.error} for c in t.tool_calls]}) + "\n")
        (out_dir / "metrics.json").write_text(json.dumps(m, indent=1) + "\n")
    return m


# ------------------------------------------------------------------------------------------ the experiment


class MMSearchExperiment:
    def __init__(self, cfg: Config, out: str | Path):
        check_mmsearch(cfg)
        self.cfg, self.out = cfg, Path(out)
        self.progress = cfg.logging.progress
        # every setting but logging, the seeds and the methods (the rows shown) decides a stage's result
        d = to_dict(cfg)
        d["mmsearch"]["methods"] = list(METHODS)
        self.settings = fingerprint(load_config(base=d), "mmsearch")
        self._tests: dict = {}

    def _cfg(self, seed: int, **sections) -> Config:
        return derive_config(self.cfg, seed, **sections)

    def _tools(self, c: Config, seed: int) -> list:
        seed_dir = self.out / f"seed{seed}"
        index = ensure_index(c, seed_dir) if c.search.backend == "local" else None
        return make_tools(c, index, seed_dir / "tool_cache")

    def _eval(self, lm, c: Config, seed: int, tools: list, out_dir: Path, mode: str = "policy") -> dict:
        if seed not in self._tests:
            self._tests[seed] = build_samples(c.data, "eval")[0]
        return evaluate_search(lm, self._tests[seed], c, tools, mode=mode, out_dir=out_dir)

    def _stage(self, stage_dir: Path, work) -> dict:
        return run_stage(stage_dir, work, self.cfg.logging.tensorboard, self.settings)

    def warmup(self, seed: int) -> dict:
        """The warm-up SFT model (or model.path when mmsearch.warmup_steps is 0) and its evaluation."""
        mc = self.cfg.mmsearch

        def work(run):
            c = self._cfg(seed, trainer={"max_steps": mc.warmup_steps} if mc.warmup_steps else {})
            tools = self._tools(c, seed)
            if not mc.warmup_steps:
                lm = build_model(c, path=c.model.path)
                extra = {"path": c.model.path}
            else:
                mix, dropped = warmup_samples(c, tools)
                path = c.model.path
                if not path:  # a tiny model whose tokenizer knows the world's words
                    from ...models.tiny import build_tiny_model

                    target = run.path / "model"
                    if not (target / "config.json").exists():
                        build_tiny_model(target, family=c.model.tiny_family, size=c.model.tiny_size, seed=seed,
                                         extra_text=vocab_text(c), vocab_size=TINY_VOCAB)
                    path = str(target)
                lm = build_model(c, path=path)
                res = train_sft(c, lm, mix, run, progress=self.progress)
                extra = {"path": res.final_dir, "sft_steps": res.steps, "train_size": len(mix), "dropped": dropped,
                         "direct": sum(bool(s.meta.get("familiar")) for s in mix), "final_loss": res.final_loss}
            return {**extra, "eval": self._eval(lm, c, seed, tools, run.path / "eval")}

        return self._stage(self.out / f"seed{seed}" / "warmup", work)

    def rl(self, seed: int, init_path: str, method: str) -> dict:
        """Agent GRPO from the warm-up model (also the KL reference), without (rl) or with (rl_penalty) the penalty."""
        def work(run):
            c = self._cfg(seed, search={"penalty": 0.0} if method == "rl" else {})
            tools = self._tools(c, seed)
            train = build_samples(c.data, "train")[0]
            lm = build_model(c, path=init_path)
            res = fit_agent(c, lm, train, tools, run, progress=self.progress, ref_path=init_path)
            first, last = mean_first_last(res.reward_history)
            s_first, s_last = mean_first_last(res.search_ratio_history)
            return {"path": res.final_dir, "steps": res.steps, "penalty": c.search.penalty,
                    "reward_first": first, "reward_last": last, "search_first": s_first, "search_last": s_last,
                    "curves": {"reward": res.reward_history, "accuracy": res.accuracy_history,
                               "search_ratio": res.search_ratio_history, "kl": res.kl_history},
                    "eval": self._eval(lm, c, seed, tools, run.path / "eval")}

        return self._stage(self.out / f"seed{seed}" / method, work)

    def baseline(self, seed: int, warm_path: str, mode: str) -> dict:
        def work(run):
            c = self._cfg(seed)
            tools = self._tools(c, seed)
            lm = build_model(c, path=warm_path)
            return {"path": warm_path, "eval": self._eval(lm, c, seed, tools, run.path / "eval", mode=mode)}

        return self._stage(self.out / f"seed{seed}" / mode, work)

    def run(self) -> dict:
        t0 = time.time()
        mc = self.cfg.mmsearch
        self.out.mkdir(parents=True, exist_ok=True)
        results: dict[str, list[dict]] = {m: [] for m in METHODS if m in mc.methods}
        stages: dict[str, list[dict]] = {m: [] for m in results}
        seconds = {}
        for seed in mc.seeds:
            ts = time.time()
            warm = self.warmup(seed)
            todo = {"warmup": lambda: warm,
                    "rl": lambda: self.rl(seed, warm["path"], "rl"),
                    "rl_penalty": lambda: self.rl(seed, warm["path"], "rl_penalty"),
                    "always_search": lambda: self.baseline(seed, warm["path"], "always_search"),
                    "never_search": lambda: self.baseline(seed, warm["path"], "never_search")}
            for method in results:
                r = todo[method]()
                results[method].append(r["eval"])
                stages[method].append({k: v for k, v in r.items() if k not in ("eval", "curves")})
            seconds[seed] = round(time.time() - ts, 1)
        label = "warmup" if mc.warmup_steps else "base"
        table = results_table(results, base_label=LABELS[label])
        summary = {"table": table, "results": results, "stages": stages, "seeds": mc.seeds,
                   "seconds_per_seed": seconds, "seconds": round(time.time() - t0, 1), "out": str(self.out),
                   "settings": {"group_size": self.cfg.rollout.group_size, "rl_steps": self.cfg.rl.steps,
                                "search_penalty": self.cfg.search.penalty, "beta": self.cfg.algorithm.beta,
                                "max_rounds": self.cfg.agent.max_rounds, "top_k": self.cfg.search.top_k,
                                "warmup_steps": mc.warmup_steps}}
        (self.out / "results.json").write_text(json.dumps(summary, indent=1) + "\n")
        (self.out / "results.md").write_text(markdown(table, summary))
        print_table(f"MMSearch-R1: accuracy and search ratio on the test split, familiar vs unfamiliar entities, "
                    f"mean ± std over seeds {mc.seeds}", table["columns"], table["rows"])
        return summary


def results_table(results: dict[str, list[dict]], base_label: str = LABELS["warmup"]) -> dict:
    """Rows = models, columns = accuracy and search ratio (all, familiar, unfamiliar): mean ± std over seeds;
    '-' where no test sample has the familiar flag."""
    columns = ["model", *[c for _, c in COLUMNS], "format rate", "turns"]
    rows = []
    for method, evals in results.items():
        if not evals:
            continue
        row = [base_label if method == "warmup" else LABELS[method]]
        for key, _ in [*COLUMNS, ("format_rate", ""), ("turns/mean", "")]:
            vals = [e[key] for e in evals if e.get(key) is not None]
            row.append(fmt_mean_std(vals, 2 if key == "turns/mean" else 3) if len(vals) == len(evals) else "-")
        rows.append(row)
    return {"columns": columns, "rows": rows}


def markdown(table: dict, summary: dict) -> str:
    s = summary["settings"]
    lines = [f"MMSearch-R1 on the test split (greedy multi-turn rollouts), mean ± sample std over seeds "
             f"{summary['seeds']} ({summary['seconds']:.0f} s in all). Search ratio: share of questions with at "
             f"least one search call. RL: G = {s['group_size']}, {s['rl_steps']} steps, beta = {s['beta']}, "
             f"≤ {s['max_rounds']} rounds, top-{s['top_k']} results; the penalty run uses p = {s['search_penalty']}. "
             "Always search: round 1 is the image-search turn; never search: one round, no tools.", ""]
    lines += markdown_rows(table)
    return "\n".join(lines) + "\n"


def run_mmsearch(recipe: str | Path, out: str | None = None, seeds: list[int] | None = None,
                 overrides: list[str] | None = None) -> dict:
    return run_recipe(MMSearchExperiment, "mmsearch", recipe, out, seeds, overrides)
