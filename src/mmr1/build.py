"""Turn config sections into the objects a job needs: the model and the samples."""

from __future__ import annotations

import logging
import random
from pathlib import Path

from .config import Config, DataConfig
from .data.schema import Sample
from .errors import DataError
from .models import LoadedModel, build_tiny_model, load_model

log = logging.getLogger("mmr1")


def build_model(cfg: Config, run_path: Path | None = None, path: str | None = None) -> LoadedModel:
    """Load `path` (or model.path); with neither, build the configured tiny model into RUN/model."""
    from . import dist

    m = cfg.model
    target = path or m.path
    if not target:
        if run_path is None:
            raise DataError("model.path is empty and there is no run directory to build a tiny model in")
        target = run_path / "model"
        if not (target / "config.json").exists() and dist.is_main():
            log.info("building tiny %s model (size %s) in %s", m.tiny_family, m.tiny_size, target)
            build_tiny_model(target, family=m.tiny_family, size=m.tiny_size, seed=cfg.trainer.seed)
        dist.barrier()  # the other ranks load what the main rank built
    lora = None
    if m.lora.enabled:
        lora = dict(r=m.lora.r, alpha=m.lora.alpha, dropout=m.lora.dropout,
                    target_modules=m.lora.target_modules or None)
    return load_model(target, dtype=m.dtype, device=str(dist.pick_device(m.device)),
                      freeze_vision=m.freeze_vision, lora=lora, attn_implementation=m.attn_implementation,
                      min_pixels=m.min_pixels, max_pixels=m.max_pixels)


def build_samples(data: DataConfig, split: str, with_solution: bool = False) -> tuple[list[Sample], list]:
    """Samples of the train or eval split; a world spec is generated, a path is loaded.

    Returns (samples, errors): errors is non-empty only with data.on_error=skip.
    """
    from .data.schema import answer_error, set_max_image_pixels

    set_max_image_pixels(data.max_image_pixels)
    spec = data.train if split == "train" else data.eval
    if spec.startswith("world:"):
        from .data.worlds import make_world

        name = spec.split(":", 1)[1]
        n = data.train_size if split == "train" else data.eval_size
        params = dict(data.world_params)
        if data.instruction is not None:
            params["instruction"] = data.instruction
        samples = make_world(name, split="train" if split == "train" else "test", n=n, seed=data.world_seed,
                             with_solution=with_solution, teacher_miss=data.teacher_miss if with_solution else 0.0,
                             **params)
        return few_shot(samples, data) if split == "train" else samples, []
    from .data.loaders import load_samples

    res = load_samples(spec, format=data.format, on_error=data.on_error, image_root=data.image_root,
                       limit=None if split == "train" else data.eval_size, mathvista_prompt=data.mathvista_prompt)
    if not with_solution:  # RL and evaluation score against the reference: a record without one is bad
        kept = []
        for s in res.samples:
            err = answer_error(s)
            if err is not None and data.on_error == "raise":
                raise err
            (res.errors.append(err) if err is not None else kept.append(s))
        res.samples = kept
    for err in res.errors:
        log.warning("skipped bad record: %s", err)
    return few_shot(res.samples, data) if split == "train" else res.samples, res.errors


def few_shot(samples: list[Sample], data: DataConfig) -> list[Sample]:
    """data.train_limit records drawn without replacement with data.world_seed, kept in file order
    (OThink-MR1 trains counting on 100-120 of CLEVR's 37K)."""
    if not data.train_limit or data.train_limit >= len(samples):
        return samples
    keep = sorted(random.Random(data.world_seed).sample(range(len(samples)), data.train_limit))
    return [samples[i] for i in keep]
