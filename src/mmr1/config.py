"""One tree of typed config objects, loaded from YAML with dotted overrides.

Every key is checked before any work starts: unknown keys, wrong types and
out-of-range values raise a ConfigError that names the key and what is allowed.
"""

from __future__ import annotations

import dataclasses
import difflib
import math
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Optional

import yaml

from .errors import ConfigError


def _f(default, help: str = "", min: float | None = None, max: float | None = None, **kw):
    """A config field with its help text and numeric range."""
    meta = {"help": help, "min": min, "max": max}
    if isinstance(default, (list, dict)):
        return field(default_factory=lambda d=default: type(d)(d), metadata=meta, **kw)
    return field(default=default, metadata=meta, **kw)


@dataclass
class LoraConfig:
    enabled: bool = _f(False, "train LoRA adapters on the language model instead of all weights")
    r: int = _f(16, "LoRA rank", min=1)
    alpha: int = _f(32, "LoRA alpha", min=1)
    dropout: float = _f(0.0, "LoRA dropout", min=0.0, max=1.0)
    target_modules: list = _f([], "linear layer names to adapt (empty: all attention and MLP projections)")


@dataclass
class ModelConfig:
    path: str = _f("", "local checkpoint directory; empty builds a tiny model into the run directory")
    tiny_family: Literal["qwen2_vl", "qwen2_5_vl", "qwen3_vl"] = _f(
        "qwen2_5_vl", "family of the tiny model built when path is empty")
    tiny_size: Literal["S", "M", "L", "XL"] = _f("M", "size of the tiny model built when path is empty")
    dtype: Literal["float32", "bfloat16", "float16"] = _f("float32", "parameter dtype")
    device: str = _f("auto", "auto, cpu, cuda or cuda:N")
    attn_implementation: Literal["sdpa", "eager", "flash_attention_2"] = _f("sdpa", "attention kernel")
    freeze_vision: bool = _f(False, "keep the vision tower (and merger) frozen")
    min_pixels: Optional[int] = _f(None, "image processor min_pixels override", min=1)
    max_pixels: Optional[int] = _f(None, "image processor max_pixels override", min=1)
    lora: LoraConfig = field(default_factory=LoraConfig)


@dataclass
class DataConfig:
    train: str = _f("world:counting", "training data: a file/directory, or world:NAME for a synthetic world")
    eval: str = _f("world:counting", "held-out data: a file/directory, or world:NAME")
    format: str = _f("auto", "record format (auto, mmr1, geometry3k, sharegpt, r1v, mathvista, mmsearch)")
    image_root: Optional[str] = _f(None, "directory that relative image paths are resolved against")
    train_size: int = _f(2000, "number of training samples drawn from a synthetic world", min=1)
    train_limit: int = _f(0, "few-shot: keep a random subset of this many training records, drawn with "
                             "data.world_seed (0: keep all)", min=0)
    eval_size: int = _f(500, "number of held-out samples (worlds), or a cap on eval files", min=1)
    world_seed: int = _f(0, "seed of the synthetic world generator", min=0)
    world_params: dict = _f({}, "synthetic world parameters: grid, image_size, colours, shapes, n_objects, "
                                "count_range, weights, variants")
    teacher_miss: float = _f(0.0, "synthetic worlds: chance that the cold-start teacher overlooks each object, so its "
                                  "solutions are imperfect as distilled ones are (0: a perfect teacher)",
                             min=0.0, max=0.99)
    on_error: Literal["raise", "skip"] = _f("raise", "bad records: stop with the error, or skip and count them")
    max_image_pixels: int = _f(50_000_000, "images with more pixels are bad records (decompression bombs; checked "
                                           "from the header before decoding)", min=1)
    instruction: Optional[str] = _f(None, "text appended to every question (None: the world's default)")
    system_prompt: Optional[str] = _f(None, "system message prepended to every prompt")
    mathvista_prompt: Literal["query", "question"] = _f(
        "query", "MathVista prompt text: its `query` (the question with the answer-format hint and unit; "
                 "from query.json beside testmini.json) or the bare `question` with the choices")


@dataclass
class RolloutConfig:
    max_new_tokens: int = _f(96, "maximum completion length in tokens", min=1)
    min_new_tokens: int = _f(0, "end tokens are not sampled before this many tokens (max_new_tokens as well: "
                                "fixed-length completions, for benchmarks)", min=0)
    temperature: float = _f(1.0, "sampling temperature for RL rollouts (eval is greedy)", min=0.0)
    top_p: float = _f(1.0, "nucleus sampling threshold", min=0.0, max=1.0)
    group_size: int = _f(8, "completions per prompt (G)", min=1)
    batch_size: int = _f(32, "sequences per generation batch (eval: prompts; RL: prompts x group_size)", min=1)
    stop: list = _f([], "stop strings: a completion ends right after the first one it produces")
    engine: Literal["hf", "vllm"] = _f("hf", "RL rollout engine: hf (CPU and GPU) or vllm (optional, GPU only, "
                                              "untested here; weights synced from the trainer every step)")
    vllm_gpu_memory_utilization: float = _f(0.5, "vllm: share of GPU memory its KV cache and weights may take",
                                            min=0.05, max=1.0)
    seed_per_prompt: bool = _f(False, "RL: sample each prompt from its own seeded stream, so rollouts do not depend "
                                      "on batch size or world size (always on under torchrun)")


@dataclass
class AlgorithmConfig:
    adv_estimator: Literal["grpo", "rloo"] = _f("grpo", "advantage estimator")
    scale_std: bool = _f(True, "divide group-centred rewards by the group std")
    adv_eps: float = _f(1e-6, "epsilon added to the group std", min=0.0)
    clip_low: float = _f(0.2, "PPO clip epsilon below 1", min=0.0)
    clip_high: float = _f(0.2, "PPO clip epsilon above 1", min=0.0)
    loss_agg: Literal["token-mean", "seq-mean-token-mean", "seq-mean-token-sum-norm"] = _f(
        "token-mean", "how token losses are aggregated")
    kl_estimator: Literal["k1", "k2", "k3", "low_var_kl"] = _f("k3", "KL estimator used as a loss term")
    beta: float = _f(0.04, "KL weight (0 loads no reference model)", min=0.0)
    ppo_epochs: int = _f(1, "optimisation passes over each rollout batch (mu)", min=1)


@dataclass
class RewardsConfig:
    checker: Literal["auto", "math", "exact", "substring", "choice", "number", "r1v", "mathvista"] = _f(
        "auto", "how answers are compared with the reference (r1v: math-verify, then exact match, as R1-V; "
                "mathvista: MathVista's scorer; auto: a benchmark's own scorer where its loader names one)")
    format_weight: float = _f(1.0, "weight of the format reward", min=0.0)
    accuracy_weight: float = _f(1.0, "weight of the accuracy reward", min=0.0)
    custom: dict = _f({}, "extra reward functions {'module:function': weight}; each is called as "
                          "fn(completion_text, sample) -> float")
    combine: Literal["sum", "product"] = _f(
        "sum", "sum: weighted sum of the rewards; product: product of the weighted rewards (all must hold)")
    on_error: Literal["zero", "raise"] = _f(
        "zero", "a reward function that raises: score 0 and count it (zero), or stop the run (raise)")


@dataclass
class TrainerConfig:
    lr: float = _f(1e-3, "peak learning rate", min=0.0)
    lr_scheduler: Literal["constant", "linear", "cosine"] = _f("cosine", "learning-rate schedule after warm-up")
    warmup_ratio: float = _f(0.05, "fraction of steps spent warming up", min=0.0, max=1.0)
    weight_decay: float = _f(0.0, "AdamW weight decay", min=0.0)
    max_grad_norm: float = _f(1.0, "gradient clipping norm (0 disables)", min=0.0)
    batch_size: int = _f(16, "samples per micro-batch", min=1)
    grad_accum: int = _f(1, "micro-batches per optimizer step", min=1)
    epochs: float = _f(1.0, "passes over the training data (max_steps wins when set)", min=0.0)
    max_steps: int = _f(0, "optimizer steps (0: derived from epochs)", min=0)
    max_length: int = _f(1024, "longest tokenised sample; longer ones are truncated", min=8)
    seed: int = _f(0, "seed of model init, data order and sampling", min=0)
    eval_every: int = _f(0, "evaluate every N steps (0: only at the end)", min=0)
    save_every: int = _f(50, "checkpoint every N steps (0: only at the end)", min=0)
    keep_checkpoints: int = _f(2, "how many step checkpoints to keep", min=1)
    resume: bool = _f(True, "resume from the latest checkpoint in the run directory (only when its saved config "
                            "matches on every key that changes the result; false: start afresh, in a new run "
                            "directory)")
    overwrite: bool = _f(False, "replace the run in the run directory: remove its checkpoints, final model, metrics "
                                "and TensorBoard events, then start afresh")
    gradient_checkpointing: bool = _f(False, "recompute activations in the backward pass (SFT and RL policy "
                                             "passes): less memory, more compute (RL then also runs each "
                                             "completion with its own copy of the prompt)")


@dataclass
class RLConfig:
    lr: float = _f(1e-5, "peak learning rate of the policy in RL", min=0.0)
    lr_scheduler: Literal["constant", "linear", "cosine"] = _f("constant", "RL learning-rate schedule after warm-up")
    warmup_ratio: float = _f(0.0, "fraction of RL steps spent warming up", min=0.0, max=1.0)
    steps: int = _f(100, "RL steps (one rollout batch each)", min=1)
    prompts_per_step: int = _f(8, "prompts sampled per step; each gets rollout.group_size completions", min=1)
    micro_batch_size: int = _f(16, "completions per forward/backward pass", min=1)
    mask_truncated: bool = _f(False, "drop completions cut at max_new_tokens from the loss")
    ref_offload: bool = _f(False, "keep the reference model in CPU memory, on the accelerator only for its pass")
    ratio_level: Literal["token", "sequence"] = _f("token", "importance ratio per token (PPO/GRPO) or per "
                                                            "sequence (GSPO)")
    beta_schedule: dict = _f({}, "KL weight schedule {'kind': 'othink'|'linear'|..., ...}; empty: "
                                 "constant algorithm.beta")


@dataclass
class RolloutsLogConfig:
    enabled: bool = _f(True, "write sampled rollouts (SFT: trained samples) to RUN/rollouts/ for `mmr1 view`")
    every: int = _f(1, "record every N-th step", min=1)
    groups: int = _f(2, "prompt groups recorded per recorded step (SFT: samples of the step's batch)", min=1)


@dataclass
class LoggingConfig:
    run_dir: str = _f("runs/default", "run directory (config, logs, metrics, checkpoints, predictions)")
    log_every: int = _f(10, "write step metrics every N steps", min=1)
    tensorboard: bool = _f(True, "write TensorBoard event files")
    progress: bool = _f(True, "show progress bars")
    rollouts: RolloutsLogConfig = field(default_factory=RolloutsLogConfig)


@dataclass
class EvalConfig:
    temperature: float = _f(0.0, "0: greedy; > 0 samples (Vision-R1 evaluates at 0.6 with top_p 0.95)", min=0.0)
    top_p: float = _f(1.0, "nucleus sampling threshold when sampling", min=0.0, max=1.0)
    retries_missing_answer: int = _f(0, "resample a completion up to N more times while it has no closing "
                                        "</answer> (Vision-R1's evaluation retries about 4 times)", min=0)
    seed: int = _f(0, "seed of evaluation sampling", min=0)
    answer_fallback: Literal["auto", "on", "off"] = _f(
        "auto", "grade an output without <answer> tags on the final answer read from its whole text, as R1-V's "
                "GeoQA evaluation does (math-verify's parse); auto: on for R1-V GeoQA-style eval records only")


@dataclass
class ColdstartConfig:
    teacher: Literal["programmatic", "api"] = _f(
        "programmatic", "programmatic: the synthetic worlds' own teacher, offline; api: OpenAI-compatible servers")
    base_url: str = _f("http://127.0.0.1:8000/v1", "the MLLM (pseudo-CoT, description): OpenAI-compatible base URL")
    model: str = _f("", "the MLLM's model name (empty: the server's first model)")
    api_key_env: str = _f("OPENAI_API_KEY", "environment variable holding the MLLM's API key (unset: no key)")
    reasoner_base_url: str = _f("", "the reasoning LLM (DeepSeek-R1 in the paper); empty: base_url")
    reasoner_model: str = _f("", "the reasoning LLM's model name; empty: model")
    reasoner_api_key_env: str = _f("", "environment variable with the reasoner's key; empty: api_key_env")
    concurrency: int = _f(8, "samples in flight at once", min=1)
    timeout: float = _f(120.0, "seconds per request before it is retried", min=0.1)
    retries: int = _f(4, "retries per request (timeouts, connection errors, 429 and 5xx), with back-off", min=0)
    backoff: float = _f(1.0, "first back-off in seconds, doubled at every retry", min=0.0)
    max_tokens: int = _f(2048, "completion length per request", min=1)
    temperature: float = _f(0.6, "sampling temperature of the teachers", min=0.0)
    style: Literal["plain", "reflective"] = _f("reflective", "programmatic teacher: reflective CoT has 'Wait' / "
                                                             "'Hmm' re-checks, as R1's")
    miss_rate: float = _f(0.1, "programmatic teacher: chance that a description leaves out one object (as a real "
                               "captioner does; the answer check then drops the sample)", min=0.0, max=1.0)


R1_ZERO_PROMPT = ("A conversation between User and Assistant. The user asks a question, and the Assistant solves "
                  "it. The assistant first thinks about the reasoning process in the mind and then provides the user "
                  "with the answer. The reasoning process and answer are enclosed within <think> </think> and "
                  "<answer> </answer> tags, respectively, i.e., <think> reasoning process here </think> <answer> "
                  "answer here </answer>.")


@dataclass
class PTSTStage:
    """One stage of Progressive Thinking Suppression Training (Vision-R1 §3.4)."""
    max_new_tokens: int = _f(4096, "longest completion in this stage (L_s)", min=1)
    group_size: int = _f(16, "completions per prompt in this stage (G_s)", min=1)
    steps: int = _f(100, "RL steps in this stage", min=1)


@dataclass
class VisionR1Config:
    seeds: list = _f([0], "seeds; every method is trained and evaluated once per seed")
    methods: list = _f(["zero", "ci", "ci_ptst", "ci_long"], "zero: RL from the base with the R1-Zero format "
                       "prompt; ci: cold-start SFT; ci_ptst: ci + PTST RL; ci_long: ci + RL at the longest length "
                       "without PTST")
    stages: list = _f([{"max_new_tokens": 4096, "group_size": 16, "steps": 100},
                       {"max_new_tokens": 8192, "group_size": 8, "steps": 100}],
                      "PTST stages [{max_new_tokens, group_size, steps}], each continuing from the previous one; "
                      "zero runs at the first stage's length and group size, ci_long at the last's, each for the "
                      "stages' total steps")
    zero_system_prompt: str = _f(R1_ZERO_PROMPT, "system prompt of the Zero baseline (DeepSeek-R1-Zero's)")
    base_sft_steps: int = _f(0, "0: model.path is the base; N: first SFT a tiny model for N steps into an "
                                "instruct-like base (direct answers, and tagged answers under the Zero prompt)",
                             min=0)
    base_sft_size: int = _f(2000, "samples in that base SFT", min=1)
    coldstart_size: int = _f(0, "training samples bridged into cold-start CoT (0: all of data.train)", min=0)


@dataclass
class OThinkTask:
    """One task of the OThink-MR1 experiment: its data and its KL weights (paper §3.2)."""
    data: dict = _f({}, "data.* keys for this task (train, eval, format, train_limit, world_params, ...)")
    beta: float = _f(0.04, "constant KL weight of the GRPO baseline", min=0.0)
    beta_min: float = _f(0.04, "GRPO-D: the KL weight at the end of exploration (s = w)", min=0.0)
    beta_max: float = _f(0.10, "GRPO-D: the KL weight at the last step (s = t)", min=0.0)
    w_ratio: float = _f(0.3, "GRPO-D: exploration steps w as a fraction of all steps t", min=0.0, max=1.0)
    rl_steps: int = _f(0, "RL steps on this task (0: rl.steps)", min=0)


@dataclass
class OThinkConfig:
    seeds: list = _f([0], "seeds; every method is trained and evaluated once per seed")
    tasks: dict = _f({}, "task name -> {data: {...}, beta, beta_min, beta_max, w_ratio} (see OThinkTask); each "
                         "trained model is evaluated on every task's eval data (same-task and cross-task)")
    methods: list = _f(["sft", "grpo", "grpo_d"], "methods trained from the base model: sft, grpo (constant "
                                                  "beta), grpo_d (dynamic beta)")
    base_sft_steps: int = _f(0, "0: model.path is the base (an instruct checkpoint); N: first SFT the model for "
                                "N steps on every task's data, the tiny model's stand-in for an instruct model",
                             min=0)
    base_sft_size: int = _f(500, "samples per task in that base SFT mix", min=1)


@dataclass
class AgentRolloutConfig:
    """Multi-turn agent rollouts (MMSearch-R1, METHODS §4.1): rounds, budgets and per-tool limits."""
    max_rounds: int = _f(3, "assistant turns per trajectory (MMSearch-R1 max_gen_round)", min=1)
    max_turn_tokens: int = _f(2048, "sampled tokens per assistant turn", min=1)
    max_total_tokens: int = _f(8192, "all tokens after the prompt, sampled and injected (tool results, images)",
                               min=1)
    image_search_limit: int = _f(1, "image searches per trajectory", min=0)
    text_search_limit: int = _f(2, "text searches per trajectory", min=0)
    image_search_rounds: list = _f([1], "rounds in which image search is allowed (MMSearch-R1: round 1 only; "
                                        "empty: any round)")
    tool_timeout_s: float = _f(30.0, "seconds per tool call before it counts as timed out", min=0.001)
    tool_threads: int = _f(16, "tool calls run concurrently", min=1)
    max_observation_chars: int = _f(20_000, "a tool result's text is cut to this many characters before it is "
                                            "tokenised (marked, counted as tool/truncated)", min=1)
    max_observation_tokens: int = _f(2048, "... and to this many tokens after", min=1)
    mini_batches: int = _f(1, "optimizer steps per rollout batch: the batch is split into this many mini-batches "
                              "of whole groups (verl: prompts per step / ppo_mini_batch_size)", min=1)


@dataclass
class SearchConfig:
    """Search tools and MMSearch-R1's reward (METHODS §4.3, §4.5)."""
    backend: Literal["local", "web"] = _f("local", "local: an index built with `mmr1 search build-index`; web: "
                                                   "SerpApi + page reader (keys from SERPAPI_API_KEY, JINA_API_KEY)")
    index: str = _f("", "local index directory; empty with world:entities data: the world's corpus is indexed "
                        "into the run directory")
    embedder: str = _f("builtin", "embedder for building the entity world's index: builtin (no weights) or a "
                                  "local CLIP/SigLIP checkpoint directory")
    top_k: int = _f(5, "results per search", min=1)
    image_results: Literal["titles", "pages"] = _f(
        "titles", "what an image search returns per hit: titles (the paper: thumbnail + title) or pages "
                  "(thumbnail, title and page text, the entity world's teacher format)")
    thumb_size: Optional[int] = _f(None, "longest side of result thumbnails in pixels (null: as stored)", min=8)
    text_mode: Literal["bm25", "dense", "hybrid"] = _f("bm25", "local text search ranking")
    max_chars: int = _f(1000, "characters kept of each text-search page", min=1)
    max_consecutive_failures: int = _f(5, "web backend: stop the run after this many failed searches in a row "
                                          "(bad key, quota, timeouts, garbage); 0 never stops", min=0)
    cache: bool = _f(True, "keep tool results on disk (a resumed or repeated run replays them)")
    cache_dir: str = _f("", "tool cache directory (empty: beside the index, shared by every stage of a seed)")
    reward_variant: Literal["v2", "v1"] = _f("v2", "v2: the penalty multiplies correct answers that searched "
                                                   "(released code); v1: subtracted whenever a search was used")
    reward_mode: Literal["EM", "SubEM"] = _f("EM", "answer match after normalisation: exact or substring")
    penalty: float = _f(0.1, "search penalty p", min=0.0, max=1.0)
    penalty_warmup_steps: int = _f(0, "ramp the penalty from -p (a bonus) to +p over this many RL steps "
                                      "(0: +p throughout)", min=0)
    per_search_penalty: bool = _f(False, "v2: apply the penalty once per search instead of once")
    format_penalty: float = _f(0.1, "format weight alpha: reward = (1 - alpha) * score + alpha * format",
                               min=0.0, max=1.0)


@dataclass
class MMSearchConfig:
    seeds: list = _f([0], "seeds; every model is trained and evaluated once per seed")
    methods: list = _f(["warmup", "rl", "rl_penalty", "always_search", "never_search"],
                       "rows of the table: warmup (the warm-up SFT model), rl (RL without the search penalty), "
                       "rl_penalty (RL with search.penalty), always_search (image search results always injected "
                       "before answering, RAG-style), never_search (one round, no tools)")
    warmup_steps: int = _f(0, "warm-up SFT steps on direct and search teacher trajectories (entity world); 0: "
                              "model.path is the start of RL", min=0)
    warmup_size: int = _f(0, "warm-up SFT samples (0: as many as the world gives)", min=0)
    warmup_search_share: float = _f(0.0, "share of search trajectories in the warm-up mix, each pool drawn (and "
                                         "repeated when short) to its count; 0: as the world gives them",
                                    min=0.0, max=1.0)


@dataclass
class RetrvConfig:
    """Retrv-R1: first stage, compression, inspection and reward (METHODS §1; unpublished values are choices)."""
    top_k: int = _f(50, "candidates the first stage passes to the reranker (K; the paper's efficiency runs: 50)",
                    min=1)
    first_stage_embedder: str = _f("builtin", "first-stage embedder: builtin (color-grid, no weights) or a local "
                                              "CLIP/SigLIP checkpoint directory")
    fusion: Literal["auto", "concat", "sum"] = _f(
        "auto", "how a record's image and text vectors combine: concat (score fusion, for unaligned spaces), "
                "sum (one shared space, CLIP-like), auto (concat for builtin, sum otherwise)")
    text_weight: float = _f(0.2, "weight w of the text part for image+text records: (1-w) cos_img + w cos_txt",
                            min=0.0, max=1.0)
    recall_ks: list = _f([1, 5, 10], "k values for the Recall@k tables (top_k is always added)")
    n_compress: int = _f(1, "compressed tokens of each kind (content, relationship) per candidate; the paper: 1, "
                            "so 2 tokens per candidate", min=1)
    icm_width: int = _f(256, "attention width inside the compression module", min=8)
    icm_heads: int = _f(4, "attention heads in the compression module", min=1)
    icm_layers: int = _f(2, "layers of each attention block (the paper: two-layer attention)", min=1)
    icm_share_pooler: bool = _f(True, "the relationship token reuses the content pooler and its query (the "
                                      "paper's formula); false: a separate learnable query and pooler")
    lambda_schedule: Literal["curriculum", "fixed"] = _f(
        "curriculum", "efficiency weight lambda: curriculum i / N_iter, or fixed (the ablation)")
    lambda_fixed: float = _f(0.5, "lambda when lambda_schedule is fixed (the paper's ablation: 0.5)",
                             min=0.0, max=1.0)
    format_weight: float = _f(1.0, "weight of the format reward in r = w * r_format + r_efficiency", min=0.0)
    max_inspections: int = _f(5, "inspection calls served per query; further calls get an observation saying "
                                 "the limit is reached (keeps N_ins <= K)", min=0)
    index_base: int = _f(1, "number of the first candidate in prompts, inspection calls and answers", min=0,
                         max=1)
    world_size: int = _f(200, "queries of the synthetic composed-image world (world:cir) per split", min=1)
    world_params: dict = _f({}, "synthetic world parameters: grid, image_size, colours, shapes, n_objects, edits, "
                                "n_hard, n_distractors")
    seeds: list = _f([0, 1, 2], "seeds of `mmr1 retrv` (each seed draws its own world and model init)")
    eval_size: int = _f(50, "test queries evaluated per seed by `mmr1 retrv`", min=1)
    align_steps: int = _f(200, "ICM self-alignment steps (LM frozen) before activation SFT; 0: none", min=0)
    align_lr: float = _f(1e-3, "learning rate of the ICM self-alignment pretraining", min=0.0)
    align_batch: int = _f(8, "candidates per self-alignment step", min=1)
    scene_handle: Literal["shape", "colour", "count"] = _f(
        "shape", "synthetic world: what a candidate's handle counts (shapes, colours or objects only), which is "
                 "what the world teacher's phase 1 hypothesises and phase 2 eliminates on")
    sft_mode: Literal["compressed", "inspect", "full", "mixed"] = _f(
        "compressed", "prompts of the activation-SFT samples (the teacher's four-phase CoT): compressed "
                      "(compression + inspection: the inspect-mode CoT over the compressed prompt), inspect "
                      "(text handles + inspection), full (every candidate inline), or mixed (each query three "
                      "times: compression + inspection, compression only and full, the three evaluated modes)")
    lambda_runs: list = _f(["curriculum", "fixed"], "RL runs of `mmr1 retrv` (lambda schedules); [] skips RL")


@dataclass
class Config:
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    rollout: RolloutConfig = field(default_factory=RolloutConfig)
    algorithm: AlgorithmConfig = field(default_factory=AlgorithmConfig)
    rewards: RewardsConfig = field(default_factory=RewardsConfig)
    trainer: TrainerConfig = field(default_factory=TrainerConfig)
    rl: RLConfig = field(default_factory=RLConfig)
    logging: LoggingConfig = field(default_factory=LoggingConfig)
    othink: OThinkConfig = field(default_factory=OThinkConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    coldstart: ColdstartConfig = field(default_factory=ColdstartConfig)
    vision_r1: VisionR1Config = field(default_factory=VisionR1Config)
    agent: AgentRolloutConfig = field(default_factory=AgentRolloutConfig)
    search: SearchConfig = field(default_factory=SearchConfig)
    mmsearch: MMSearchConfig = field(default_factory=MMSearchConfig)
    retrv: RetrvConfig = field(default_factory=RetrvConfig)


# ----------------------------------------------------------------------------- building and checking


def _type_name(tp) -> str:
    origin = typing.get_origin(tp)
    if origin is Literal:
        return "one of " + ", ".join(repr(a) for a in typing.get_args(tp))
    if origin in (typing.Union, types.UnionType):
        return " or ".join(_type_name(a) for a in typing.get_args(tp))
    return getattr(tp, "__name__", str(tp)).replace("NoneType", "null")


def _coerce(key: str, tp, value):
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return None
        inner = [a for a in args if a is not type(None)]
        return _coerce(key, inner[0], value)
    if origin is Literal:
        allowed = typing.get_args(tp)
        if value not in allowed:
            raise ConfigError(f"{key}: {value!r} is not allowed; choose {_type_name(tp)}")
        return value
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, dict):
            raise ConfigError(f"{key}: expected a mapping of {tp.__name__} keys, got {type(value).__name__}")
        return _build(tp, value, key + ".")
    if tp is bool:
        if isinstance(value, bool):
            return value
    elif tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    elif tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
    elif tp is str:
        if isinstance(value, str):
            return value
    elif tp is list:
        if isinstance(value, list):
            return value
    elif tp is dict:
        if isinstance(value, dict):
            return value
    else:  # pragma: no cover - only reached by a new field type
        return value
    raise ConfigError(f"{key}: expected {_type_name(tp)}, got {value!r} ({type(value).__name__})")


def _build(cls, data: dict, prefix: str = ""):
    hints = typing.get_type_hints(cls)
    names = {f.name: f for f in dataclasses.fields(cls)}
    for k in data:
        if k not in names:
            close = difflib.get_close_matches(str(k), names, n=1)
            hint = f"; did you mean '{prefix}{close[0]}'?" if close else ""
            raise ConfigError(f"unknown key '{prefix}{k}'{hint} (known: {', '.join(names)})")
    kwargs = {}
    for name, f in names.items():
        if name not in data:
            continue
        key = prefix + name
        value = _coerce(key, hints[name], data[name])
        _check_finite(key, value)
        lo, hi = f.metadata.get("min"), f.metadata.get("max")
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            if lo is not None and value < lo or hi is not None and value > hi:
                rng = f"[{lo if lo is not None else '-inf'}, {hi if hi is not None else 'inf'}]"
                raise ConfigError(f"{key}: {value!r} is out of range; allowed {rng}")
        kwargs[name] = value
    return cls(**kwargs)


def _check_finite(key: str, value) -> None:
    """NaN and infinities pass every range check and poison a run silently (trainer.lr=nan trains nothing):
    refused anywhere in the tree, free-form dicts and lists included."""
    if isinstance(value, float) and not math.isfinite(value):
        raise ConfigError(f"{key}: {value!r} is not a finite number; give a real value")
    if isinstance(value, dict):
        for k, v in value.items():
            _check_finite(f"{key}.{k}", v)
    elif isinstance(value, (list, tuple)):
        for i, v in enumerate(value):
            _check_finite(f"{key}[{i}]", v)


def build_section(cls, data: dict, prefix: str = ""):
    """Check and build one config dataclass from a dict (for sections nested inside free-form dicts)."""
    if not isinstance(data, dict):
        raise ConfigError(f"{prefix.rstrip('.')}: expected a mapping of {cls.__name__} keys, got {data!r}")
    return _build(cls, data, prefix)


def parse_override(text: str) -> tuple[list[str], Any]:
    if "=" not in text:
        raise ConfigError(f"override {text!r} must look like key.sub=value (e.g. trainer.lr=1e-5)")
    key, raw = text.split("=", 1)
    try:
        value = yaml.safe_load(raw) if raw != "" else ""
    except yaml.YAMLError:
        value = raw
    if isinstance(value, str) and _looks_numeric(raw):
        value = float(raw)
    return key.strip().split("."), value


def _looks_numeric(raw: str) -> bool:
    try:
        float(raw)
        return True
    except ValueError:
        return False


def merge_overrides(data: dict, overrides: list[str]) -> dict:
    for text in overrides:
        path, value = parse_override(text)
        node = data
        for part in path[:-1]:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise ConfigError(f"override {text!r}: '{part}' is not a section")
        node[path[-1]] = value
    return data


def load_config(path: str | Path | None = None, overrides: list[str] | None = None,
                base: dict | None = None) -> Config:
    """Defaults <- `base` dict <- YAML file <- dotted overrides, then validate the lot."""
    data: dict = {}
    _deep_update(data, base or {})
    if path is not None:
        p = Path(path)
        if not p.exists():
            raise ConfigError(f"config file not found: {p}")
        try:
            loaded = yaml.safe_load(p.read_text()) or {}
        except yaml.YAMLError as e:
            raise ConfigError(f"{p}: not valid YAML ({e})") from None
        if not isinstance(loaded, dict):
            raise ConfigError(f"{p}: the top level must be a mapping of sections")
        _deep_update(data, loaded)
    merge_overrides(data, overrides or [])
    return _build(Config, data)


def _deep_update(dst: dict, src: dict) -> dict:
    for k, v in src.items():
        if isinstance(v, dict) and isinstance(dst.get(k), dict):
            _deep_update(dst[k], v)
        else:
            dst[k] = v
    return dst


def to_dict(cfg) -> dict:
    return dataclasses.asdict(cfg)


def save_config(cfg: Config, path: str | Path) -> None:
    """Write a run's resolved config to RUN/config.yaml, after checking it against the one a previous run left
    there (`train.run_dir.claim`: a different run is refused, never silently resumed or relabelled)."""
    from .train.run_dir import claim

    path = Path(path)
    if path.name != "config.yaml":
        raise ValueError(f"save_config writes a run directory's config.yaml, not {path}")
    claim(path.parent, cfg)


def describe(cls=Config, prefix: str = "") -> list[tuple[str, str, Any, str]]:
    """(key, type, default, help) for every leaf key: the source of `mmr1 config --help`."""
    rows = []
    hints = typing.get_type_hints(cls)
    default = cls()
    for f in dataclasses.fields(cls):
        tp = hints[f.name]
        if dataclasses.is_dataclass(tp):
            rows += describe(tp, prefix + f.name + ".")
        else:
            rows.append((prefix + f.name, _type_name(tp), getattr(default, f.name), f.metadata.get("help", "")))
    return rows
