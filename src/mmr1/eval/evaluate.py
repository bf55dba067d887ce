"""`mmr1 eval`: answers for a dataset (greedy, or sampled with Vision-R1's retries), accuracy, format rate,
lengths, per-category breakdown."""

from __future__ import annotations

import json
import logging
from collections import defaultdict
from pathlib import Path

import torch

from ..data.encode import with_system
from ..data.schema import Sample
from ..errors import ConfigError, DataError
from ..rewards import score_completion
from ..rollout.hf import HFEngine, generate
from ..ui import progress_bar

log = logging.getLogger("mmr1")

ANSWER_CLOSE = "</answer>"


def missing_answer(text: str) -> bool:
    """No closing `</answer>` anywhere in the completion: Vision-R1's evaluation resamples such outputs."""
    return ANSWER_CLOSE not in text


FALLBACK = ("auto", "on", "off")


def uses_fallback(sample: Sample, setting: str = "auto") -> bool:
    """Whether `sample` is graded with the answer fallback: on/off as set; under auto, only where the
    sample's published evaluation reads answers outside the tags (loaders set `meta["answer_fallback"]`)."""
    if setting == "auto":
        return bool(sample.meta.get("answer_fallback", False))
    return setting == "on"


def rows_to_retry(texts: list[str], attempts: list[int], max_attempts: int) -> list[int]:
    """Indices of the completions to resample: still no `</answer>` and fewer than max_attempts attempts used."""
    return [i for i, (t, k) in enumerate(zip(texts, attempts, strict=True)) if k < max_attempts and missing_answer(t)]


def breakdown(rows: list[dict]) -> dict:
    """Accuracy by every field the rows' benchmark reports by (MathVista: question type, answer type, language,
    source, category, task, context, grade, skills), as MathVista's calculate_score.py: {field: {value: {n,
    correct, accuracy}}}, values by accuracy, best first. A list value (skills) counts the row under each."""
    groups: dict[str, dict[str, list[bool]]] = defaultdict(lambda: defaultdict(list))
    for r in rows:
        for f, v in (r.get("breakdown") or {}).items():
            for value in (v if isinstance(v, list) else [v]):
                groups[f][str(value)].append(r["correct"])
    return {f: dict(sorted(((v, {"n": len(c), "correct": sum(c), "accuracy": sum(c) / len(c)})
                            for v, c in vals.items()), key=lambda kv: (-kv[1]["accuracy"], kv[0])))
            for f, vals in groups.items()}


def evaluate(lm, samples: list[Sample], *, max_new_tokens: int, batch_size: int = 32, checker: str = "auto",
             system_prompt: str | None = None, out_dir: str | Path | None = None, show_progress: bool = True,
             on_error: str = "raise", temperature: float = 0.0, top_p: float = 1.0,
             retries_missing_answer: int = 0, seed: int = 0, skipped: int = 0,
             answer_fallback: str = "auto") -> dict:
    """Score one completion per sample; writes predictions.jsonl and metrics.json into out_dir when given.

    temperature 0 is greedy. temperature > 0 samples (top_p, a generator seeded with `seed`: reproducible
    for a fixed batch_size), and a completion without `</answer>` is resampled up to
    `retries_missing_answer` more times; each retry round samples all such rows together. Retries need
    sampling: a greedy retry would only repeat the same text, so with temperature 0 they are skipped.
    answer_fallback: "on" grades an output without an answer tag on the final answer read from its whole
    text (R1-V's GeoQA scorer), "off" never does, "auto" follows each sample's format (`uses_fallback`).
    """
    if answer_fallback not in FALLBACK:
        raise ConfigError(f"eval.answer_fallback must be one of {FALLBACK}, got {answer_fallback!r}")
    if temperature < 0:
        raise ConfigError(f"eval.temperature must be >= 0, got {temperature}")
    if temperature > 0 and not 0.0 < top_p <= 1.0:  # top_p 0 would leave no token to sample
        raise ConfigError(f"eval.top_p must be in (0, 1] when sampling, got {top_p}")
    if retries_missing_answer < 0:
        raise ConfigError(f"eval.retries_missing_answer must be >= 0, got {retries_missing_answer}")
    prompts, kept, bad = [], [], 0
    for s in samples:
        try:
            prompts.append((with_system(s.prompt_messages(), system_prompt), s.load_images()))
            kept.append(s)
        except DataError as e:
            if on_error == "raise":
                raise
            log.warning("eval: skipped %s", e)
            bad += 1
    sampling = temperature > 0
    if sampling:
        engine, gen = HFEngine(lm), torch.Generator().manual_seed(seed)

        def draw(ps, progress):
            groups = engine.sample(ps, n=1, max_new_tokens=max_new_tokens, temperature=temperature, top_p=top_p,
                                   do_sample=True, generator=gen, batch_size=batch_size, progress=progress)
            return [g[0] for g in groups]
    else:
        def draw(ps, progress):
            return generate(lm, ps, max_new_tokens=max_new_tokens, batch_size=batch_size, progress=progress)

    with progress_bar("eval", len(prompts), enabled=show_progress) as advance:
        completions = draw(prompts, advance)
    attempts = [1] * len(completions)
    retry_rounds: list[int] = []  # rows resampled in each retry round
    if retries_missing_answer and not sampling:
        log.warning("eval: retries_missing_answer=%d ignored: greedy decoding (temperature 0) would repeat the "
                    "same completion; set eval.temperature > 0", retries_missing_answer)
    elif retries_missing_answer:
        for r in range(retries_missing_answer):
            idx = rows_to_retry([c.text for c in completions], attempts, 1 + retries_missing_answer)
            if not idx:
                break
            retry_rounds.append(len(idx))
            with progress_bar(f"eval retry {r + 1}", len(idx), enabled=show_progress) as advance:
                redone = draw([prompts[i] for i in idx], advance)
            for i, c in zip(idx, redone, strict=True):
                completions[i] = c
                attempts[i] += 1
    rows, by_cat = [], defaultdict(list)
    for s, c, k in zip(kept, completions, attempts):
        sc = score_completion(c.text, s, kind=checker, fallback=uses_fallback(s, answer_fallback))
        row = {"id": s.id, "category": s.category, "answer": s.answers, "prediction": c.text,
               "extracted": sc["extracted"], "correct": bool(sc["correct"]), "formatted": bool(sc["formatted"]),
               "tokens": len(c.token_ids), "finish_reason": c.finish_reason, "attempts": k}
        if s.meta.get("breakdown"):
            row["breakdown"] = s.meta["breakdown"]
        rows.append(row)
        by_cat[s.category or "all"].append(row)
    n = max(1, len(rows))
    metrics = {
        "n": len(rows),
        "accuracy": sum(r["correct"] for r in rows) / n,
        "format_rate": sum(r["formatted"] for r in rows) / n,
        "mean_tokens": sum(r["tokens"] for r in rows) / n,
        "truncation_rate": sum(r["finish_reason"] == "length" for r in rows) / n,
        "skipped_records": bad + skipped,  # here, and by the loader before (skipped)
        "retried_rows": sum(k > 1 for k in attempts),  # resampled at least once
        "missing_answer_rows": sum(missing_answer(r["prediction"]) for r in rows),  # no </answer>, after retries
        "retry_rounds": retry_rounds,
        "sampling": {"temperature": temperature, "top_p": top_p, "seed": seed,
                     "retries_missing_answer": retries_missing_answer if sampling else 0},
        "per_category": {k: {"n": len(v), "accuracy": sum(r["correct"] for r in v) / len(v)}
                         for k, v in sorted(by_cat.items())},
        "breakdown": breakdown(rows),
    }
    if out_dir is not None:
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        with open(out / "predictions.jsonl", "w") as f:
            for r in rows:
                f.write(json.dumps(r) + "\n")
        (out / "metrics.json").write_text(json.dumps(metrics, indent=2) + "\n")
    return metrics
