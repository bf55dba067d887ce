"""Optional vLLM rollout engine behind the HF engine's token-in/token-out interface.

Written against the vLLM V1 offline API (``vllm.LLM`` / ``SamplingParams``), 0.8 - 0.11 era;
``logprobs_mode`` (needed for temperature-scaled log-probs) exists from 0.10 on and is only passed
there. UNTESTED in this repository: vLLM needs CUDA and is not installed here. Only the pure
conversion functions below are unit-tested (tests/test_vllm_engine.py); the vLLM release used must
also import with this repository's transformers version, which was not checked either.

What the engine relies on (see the report that came with this module for sources):

- ``LLM.generate(prompts, sampling_params)`` accepts token prompts
  ``{"prompt_token_ids": [...], "multi_modal_data": {"image": [PIL, ...]}}`` and one SamplingParams
  per prompt; it returns one RequestOutput per prompt, in order, each with ``outputs`` = the n
  CompletionOutputs (``token_ids``, ``logprobs``, ``finish_reason`` "stop" | "length",
  ``stop_reason`` None | stop token id | stop string).
- For token prompts vLLM runs the image processor itself and replaces every single ``<|image_pad|>``
  with that image's N pads. The HF processor (``encode_prompts``) has already expanded them, so the
  vLLM prompt is the *un-expanded* rendered chat text (one pad per image); ``collapse_image_pads``
  undoes an expansion for ids that arrive expanded. vLLM's expansion of the collapsed ids gives back
  exactly the ids the trainer scores, provided both sides resize images alike (``mm_processor_kwargs``
  carries this processor's min/max pixels).
- ``SamplingParams(logprobs=0)`` returns the sampled token's log-prob per step as
  ``outputs[i].logprobs[step][token_id].logprob``. With ``logprobs_mode="processed_logprobs"`` it is
  log_softmax of the logits after temperature, logit bias, min_tokens masking and top-k/top-p; the HF
  engine's is after temperature only. They agree when top_p == 1 (up to the -100 bias on suppressed
  tokens, i.e. float error); with top_p < 1 vLLM's value is renormalised over the nucleus.
- Weight sync (TRL ``vllm_mode="colocate"`` / verl pattern): the in-process driver model's
  ``load_weights`` takes HF checkpoint names (Qwen2.5-VL's ``hf_to_vllm_mapper`` maps
  ``model.language_model.``, ``model.visual.`` and ``lm_head.``); the engine core runs in-process with
  ``VLLM_ENABLE_V1_MULTIPROCESSING=0`` (or ``distributed_executor_backend="external_launcher"`` under
  torch.distributed), else ``LLM.collective_rpc`` ships the weights to the worker.
- ``enable_sleep_mode=True`` + ``LLM.sleep(level=1)`` / ``LLM.wake_up(tags=...)`` free the GPU
  between rollouts; after new weights the prefix cache is reset (``LLM.reset_prefix_cache``).

Differences from HFEngine: ``batch_size`` and ``share_prefix`` are accepted and ignored (vLLM schedules
all requests itself; n samples of one prompt share its prefix through prefix caching); ``generator``
only seeds vLLM's per-request sampler (reproducible for a fixed vLLM build and batch, never equal to
the HF engine's draws); vLLM checks stop strings only after ``min_new_tokens`` tokens; prompts with
input-embedding overrides (Retrv-R1) are not supported.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path

import torch

from .batch import Prompt
from .hf import Completion, sample_limits

INSTALL_HINT = "vLLM is not installed: pip install 'vllm>=0.8' (GPU only) or use rollout.engine=hf"
SUPPRESS_BIAS = -100.0  # logit bias on tokens a policy must never sample (EasyR1/verl use -100 too)
_SEED_RANGE = 2**31 - 1


# ---------------------------------------------------------------- pure conversions (unit-tested)

def collapse_image_pads(ids: Sequence[int], pad_id: int) -> list[int]:
    """Each run of consecutive `pad_id` tokens reduced to one (the un-expanded prompt vLLM expects)."""
    out: list[int] = []
    for t in ids:
        t = int(t)
        if t == pad_id and out and out[-1] == pad_id:
            continue
        out.append(t)
    return out


def image_pad_id(lm) -> int:
    token = getattr(lm.processor, "image_token", None) or "<|image_pad|>"
    return lm.tokenizer.convert_tokens_to_ids(token)


def to_vllm_prompt(lm, prompt: Prompt) -> dict:
    """A (messages, images) prompt as a vLLM token prompt: the rendered chat text with one image pad
    per image (vLLM expands each from the image's grid) and the PIL images alongside."""
    if len(prompt) > 2 and prompt[2] is not None:
        raise NotImplementedError("prompts with input-embedding overrides need the HF engine (rollout.engine=hf)")
    messages, images = prompt[0], list(prompt[1] or [])
    text = lm.adapter.render(lm.processor, messages, add_generation_prompt=True)
    pad = image_pad_id(lm)
    # Tokenised as the processor tokenises its (expanded) text; pads are special tokens, so the rest
    # of the text splits the same way and collapsing is a no-op unless a template pre-expands pads.
    ids = collapse_image_pads(lm.tokenizer(text)["input_ids"], pad)
    if ids.count(pad) != len(images):
        raise ValueError(f"{ids.count(pad)} image placeholders but {len(images)} images")
    out: dict = {"prompt_token_ids": ids}
    if images:
        out["multi_modal_data"] = {"image": images}
    return out


def request_seeds(generator, n_prompts: int) -> list[int | None]:
    """One vLLM request seed per prompt from the HF engine's `generator` argument.

    None -> None (vLLM's engine seed); one torch.Generator -> n_prompts draws from it; a list (one
    generator per prompt) -> one draw from each, so a prompt's seed does not depend on its batch.
    vLLM seeds the n samples of a request with seed, seed + 1, ..., seed + n - 1."""
    if generator is None:
        return [None] * n_prompts
    if isinstance(generator, (list, tuple)):
        if len(generator) != n_prompts:
            raise ValueError(f"{len(generator)} generators for {n_prompts} prompts")
        return [int(torch.randint(0, _SEED_RANGE, (1,), generator=g, device=g.device)) for g in generator]
    return torch.randint(0, _SEED_RANGE, (n_prompts,), generator=generator, device=generator.device).tolist()


def sampling_kwargs(*, n: int, max_new_tokens: int, min_new_tokens: int, temperature: float, top_p: float,
                    do_sample: bool, stop: Sequence[str] | None, seed: int | None, end_ids: Iterable[int],
                    suppress_ids: Iterable[int]) -> dict:
    """keyword arguments of one vLLM SamplingParams reproducing HFEngine.sample's settings."""
    if max_new_tokens < 1:
        raise ValueError(f"vLLM needs max_new_tokens >= 1, got {max_new_tokens}")
    bias = {int(t): SUPPRESS_BIAS for t in suppress_ids}
    return dict(
        n=n,
        max_tokens=max_new_tokens,
        min_tokens=min(min_new_tokens, max_new_tokens),  # vLLM rejects min_tokens > max_tokens
        temperature=temperature if do_sample else 0.0,  # 0 is greedy in vLLM
        top_p=top_p if do_sample else 1.0,
        stop=list(stop) if stop else None,
        stop_token_ids=sorted(int(t) for t in end_ids),  # kept as the last token id, as HF does
        logprobs=0,  # only the sampled token's log-prob
        seed=seed,
        logit_bias=bias or None,
        skip_special_tokens=False,  # stop strings match the text HF's decode gives
        spaces_between_special_tokens=False,
    )


def completion_text(tokenizer, ids: Sequence[int], end_ids, stop: Sequence[str], by_stop_string: bool) -> str:
    """HFEngine._completion's text: decoded without end tokens; cut right after the first stop string."""
    text = tokenizer.decode([t for t in ids if t not in end_ids], skip_special_tokens=False)
    if by_stop_string and stop:
        cuts = [i + len(s) for s in stop if (i := text.find(s)) >= 0]
        if cuts:
            text = text[:min(cuts)]
    return text


def from_vllm_output(request_output, *, n: int, tokenizer, end_ids, stop: Sequence[str] | None = None
                     ) -> list[Completion]:
    """One vLLM RequestOutput (n CompletionOutputs) as the HF engine's n Completions."""
    outs = list(request_output.outputs)
    if len(outs) != n:
        raise ValueError(f"vLLM returned {len(outs)} completions, expected n={n}")
    end_ids, stop = set(end_ids), list(stop or [])
    group = []
    for o in outs:
        ids = [int(t) for t in o.token_ids]
        finish = o.finish_reason
        if finish not in ("stop", "length"):
            raise RuntimeError(f"vLLM ended a completion with finish_reason={finish!r}")
        if o.logprobs is None:
            raise ValueError("vLLM returned no log-probs; SamplingParams(logprobs=0) is required")
        lps = []
        for step, t in zip(o.logprobs, ids):
            if t not in step:
                raise ValueError(f"vLLM log-probs lack the sampled token {t}")
            lps.append(float(step[t].logprob))
        if len(lps) != len(ids):
            raise ValueError(f"{len(lps)} log-probs for {len(ids)} tokens")
        stop_reason = getattr(o, "stop_reason", None)
        by_string = finish == "stop" and (isinstance(stop_reason, str)
                                          or (stop_reason is None and bool(ids) and ids[-1] not in end_ids))
        group.append(Completion(ids, completion_text(tokenizer, ids, end_ids, stop, by_string), finish, lps))
    return group


def processor_pixels(processor) -> dict:
    """min/max pixels of this processor's image resizing, for vLLM's mm_processor_kwargs.

    Qwen's image processors resize by ``size["shortest_edge"]`` / ``size["longest_edge"]`` (pixel
    counts); older ones also carry them as ``min_pixels`` / ``max_pixels`` attributes."""
    from ..models.processor import size_dict

    ip = processor.image_processor
    size = size_dict(getattr(ip, "size", None))
    lo = size.get("shortest_edge") or getattr(ip, "min_pixels", None)
    hi = size.get("longest_edge") or getattr(ip, "max_pixels", None)
    return {k: int(v) for k, v in (("min_pixels", lo), ("max_pixels", hi)) if v is not None}


def supports_logprobs_mode(version: str) -> bool:
    """`logprobs_mode` is an engine argument from vLLM 0.10.0 on."""
    from packaging.version import Version

    return Version(version).release[:2] >= (0, 10)


def llm_kwargs(lm, *, version: str, gpu_memory_utilization: float, sleep: bool, dtype: str, seed: int,
               max_images_per_prompt: int, max_model_len: int | None = None,
               logprobs_mode: str = "processed_logprobs", **extra) -> dict:
    """keyword arguments of vllm.LLM for this loaded model (image-only, log-probs as the trainer's)."""
    path = str(Path(lm.path))
    kw = dict(model=path, tokenizer=path, dtype=dtype, seed=seed, gpu_memory_utilization=gpu_memory_utilization,
              enable_sleep_mode=sleep, enable_prefix_caching=True,
              limit_mm_per_prompt={"image": max_images_per_prompt, "video": 0},
              mm_processor_kwargs=processor_pixels(lm.processor))
    if max_model_len is not None:
        kw["max_model_len"] = max_model_len
    if supports_logprobs_mode(version):
        kw["logprobs_mode"] = logprobs_mode
    kw.update(extra)
    return kw


def hf_weights_for_vllm(model) -> Iterator[tuple[str, torch.Tensor]]:
    """(HF checkpoint name, tensor) for every weight of the trainer's model, LoRA merged in, lazily.

    The names are what `save_pretrained` writes (``model.language_model.*``, ``model.visual.*``,
    ``lm_head.weight``), which vLLM's Qwen VL ``load_weights`` maps itself. Each LoRA layer is merged
    when reached (`train.merge`), so no second copy of the model is held; every rank of a sharded model
    must iterate this together (each sharded tensor is gathered)."""
    from ..dist import full_tensor
    from ..train.merge import hf_name, lora_layers, merge_lora

    adapter, layers = lora_layers(model)
    for key, value in model.state_dict().items():
        if adapter is not None and ".lora_" in key:
            continue
        t = full_tensor(value).detach()
        if key in layers:
            m = layers[key]
            t = merge_lora(t, full_tensor(m.lora_A[adapter].weight).detach(),
                           full_tensor(m.lora_B[adapter].weight).detach(), m.scaling[adapter])
        yield (hf_name(key) if adapter is not None else key), t


# ---------------------------------------------------------------- the engine (needs vLLM and a GPU)

def _driver_model(llm):
    """The in-process vLLM model (None when the engine core runs in another process)."""
    executor = getattr(getattr(llm, "llm_engine", None), "model_executor", None)
    worker = getattr(executor, "driver_worker", None)
    worker = getattr(worker, "worker", worker)  # V1 wraps the worker in a WorkerWrapperBase
    return _runner_model(getattr(worker, "model_runner", None))


def _runner_model(runner):
    if runner is None:
        return None
    return runner.get_model() if hasattr(runner, "get_model") else getattr(runner, "model", None)


def _load_weights_on_worker(worker, weights):
    """collective_rpc target: runs on each vLLM worker."""
    _runner_model(worker.model_runner).load_weights(weights)


class VLLMEngine:
    """`HFEngine.sample`'s contract on a colocated vLLM engine (see the module docstring).

    With `sleep=True` the engine is built with sleep mode and sleeps between calls: `sample` wakes it
    and puts it back to sleep (level `sleep_level`) when done, so training gets the GPU memory back.
    Extra keyword arguments go to `vllm.LLM` unchanged (e.g. enforce_eager, max_num_seqs)."""

    def __init__(self, lm, *, gpu_memory_utilization: float = 0.5, sleep: bool = True, dtype: str = "bfloat16",
                 seed: int = 0, max_model_len: int | None = None, max_images_per_prompt: int = 8,
                 sleep_level: int = 1, logprobs_mode: str = "processed_logprobs", **llm_extra):
        try:
            import vllm
        except ModuleNotFoundError as e:
            if e.name is not None and e.name != "vllm":
                raise  # vLLM is there but one of its own dependencies is missing
            raise ImportError(INSTALL_HINT) from e
        self.lm = lm
        tok = lm.tokenizer
        self.end_ids = {tok.convert_tokens_to_ids(t) for t in lm.adapter.end_tokens()}
        self.suppress = lm.adapter.suppressed_token_ids(tok)
        self.sleep_enabled, self.sleep_level = sleep, sleep_level
        kw = llm_kwargs(lm, version=vllm.__version__, gpu_memory_utilization=gpu_memory_utilization, sleep=sleep,
                        dtype=dtype, seed=seed, max_images_per_prompt=max_images_per_prompt,
                        max_model_len=max_model_len, logprobs_mode=logprobs_mode, **llm_extra)
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            # One engine per rank in this process, as TRL's colocate mode (tensor parallel size 1).
            kw.setdefault("distributed_executor_backend", "external_launcher")
            kw["seed"] = seed + torch.distributed.get_rank()
        else:
            # The engine core in this process, so sync_weights can reach the model directly.
            os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
        self.llm = vllm.LLM(**kw)
        self._sampling_params = vllm.SamplingParams
        self._asleep: set[str] = set()
        if sleep:
            self.sleep()

    # -- sleep mode
    def sleep(self) -> None:
        """Offload the weights (level 1: to CPU memory; level 2: dropped) and drop the KV cache."""
        if not self.sleep_enabled:
            raise RuntimeError("this VLLMEngine was built with sleep=False")
        if not self._asleep:
            self.llm.sleep(level=self.sleep_level)
            self._asleep = {"weights", "kv_cache"}

    def wake_up(self, tags: Sequence[str] | None = None) -> None:
        """Bring back the weights and/or KV cache (all when `tags` is None)."""
        want = set(tags) if tags is not None else set(self._asleep)
        todo = want & self._asleep
        if not todo:
            return
        import inspect

        if "tags" in inspect.signature(self.llm.wake_up).parameters:
            self.llm.wake_up(tags=sorted(todo))
            self._asleep -= todo
        else:  # older vLLM wakes everything at once
            self.llm.wake_up()
            self._asleep = set()

    # -- weights
    @torch.no_grad()
    def sync_weights(self, model) -> None:
        """Push the trainer's current weights (LoRA merged) into the engine and drop its prefix cache.

        A sleeping engine gets its weights woken first (and keeps them awake: the next `sample` needs
        them; it wakes the KV cache and sleeps again when done). Under torch.distributed every rank
        must call this together (sharded weights are gathered tensor by tensor)."""
        if "weights" in self._asleep:
            if torch.cuda.is_available():
                torch.cuda.empty_cache()
            self.wake_up(["weights"])
        weights = hf_weights_for_vllm(model)
        target = _driver_model(self.llm)
        if target is not None:
            target.load_weights(weights)
        else:  # engine core in another process: ship the weights over (slower, CPU copies)
            self.llm.collective_rpc(_load_weights_on_worker, args=([(k, v.cpu()) for k, v in weights],))
        self.llm.reset_prefix_cache()  # cached keys/values were computed with the old weights

    # -- sampling
    def sample(self, prompts: list[Prompt], *, n: int = 1, max_new_tokens: int | list[int], min_new_tokens: int = 0,
               temperature: float = 1.0, top_p: float = 1.0, do_sample: bool = True,
               stop: list[str] | None = None, batch_size: int = 64, generator=None, progress=None,
               share_prefix: bool = True) -> list[list[Completion]]:
        """n completions for each (messages, images) prompt, grouped per prompt, in order (HFEngine.sample)."""
        del batch_size, share_prefix  # vLLM batches and shares prefixes itself
        limits = sample_limits(len(prompts), n=n, max_new_tokens=max_new_tokens, min_new_tokens=min_new_tokens,
                               do_sample=do_sample, temperature=temperature)
        seeds = request_seeds(generator, len(prompts))
        stop = list(stop or [])
        todo = [i for i, lim in enumerate(limits) if lim > 0]  # vLLM needs max_tokens >= 1
        inputs = [to_vllm_prompt(self.lm, prompts[i]) for i in todo]
        params = [self._sampling_params(**sampling_kwargs(
            n=n, max_new_tokens=limits[i], min_new_tokens=min_new_tokens, temperature=temperature, top_p=top_p,
            do_sample=do_sample, stop=stop, seed=seeds[i], end_ids=self.end_ids, suppress_ids=self.suppress))
            for i in todo]
        outputs = []
        if todo:
            self.wake_up()
            try:
                outputs = self.llm.generate(inputs, params, use_tqdm=False)
            finally:
                if self.sleep_enabled:
                    self.sleep()
        groups: list[list[Completion]] = [[Completion([], "", "length", []) for _ in range(n)] for _ in prompts]
        for i, out in zip(todo, outputs, strict=True):
            groups[i] = from_vllm_output(out, n=n, tokenizer=self.lm.tokenizer, end_ids=self.end_ids, stop=stop)
        if progress is not None:
            progress(len(prompts))
        return groups
