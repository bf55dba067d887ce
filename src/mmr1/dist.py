"""The one place that knows about ranks: process group, FSDP2 sharding, reductions, full state dicts.

A single process needs none of it (every function is then a no-op or the identity). Under
`torchrun` (WORLD_SIZE > 1) `init()` joins the process group (nccl on GPUs, gloo on the CPU),
`shard()` applies FSDP2 (`fully_shard`) per decoder layer and vision block under one root, and
checkpoints go through full (unsharded) state dicts so that they resume on any world size.
"""

from __future__ import annotations

import contextlib
import datetime
import os

import torch
from torch import nn


def rank() -> int:
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_rank()
    return int(os.environ.get("RANK", 0))


def world_size() -> int:
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_world_size()
    return int(os.environ.get("WORLD_SIZE", 1))


def is_main() -> bool:
    return rank() == 0


def distributed() -> bool:
    return torch.distributed.is_available() and torch.distributed.is_initialized() and world_size() > 1


def init(timeout_s: int = 1800) -> None:
    """Join the process group torchrun describes (no-op in a single process or when already joined)."""
    if int(os.environ.get("WORLD_SIZE", 1)) <= 1 or torch.distributed.is_initialized():
        return
    backend = "nccl" if torch.cuda.is_available() else "gloo"
    if backend == "nccl":
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", 0)))
    torch.distributed.init_process_group(backend, timeout=datetime.timedelta(seconds=timeout_s))


def close() -> None:
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        torch.distributed.destroy_process_group()


def barrier() -> None:
    if distributed():
        torch.distributed.barrier()


def mean_dict_across_ranks(values: dict[str, float]) -> dict[str, float]:
    """Every rank's metrics averaged in one all-reduce (ranks hold equal shares of the batch)."""
    if not distributed():
        return values
    keys = sorted(values)
    t = torch.tensor([float(values[k]) for k in keys], dtype=torch.float64)
    torch.distributed.all_reduce(t)
    return {k: float(v) / world_size() for k, v in zip(keys, t.tolist())}


def sum_across_ranks(value: float) -> float:
    if not distributed():
        return value
    t = torch.tensor([float(value)], dtype=torch.float64)
    torch.distributed.all_reduce(t)
    return float(t.item())


def pick_device(spec: str = "auto") -> torch.device:
    if spec == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)))
        return torch.device("cpu")
    return torch.device(spec)


class Sharded(nn.Module):
    """The FSDP2 root around a model: `root(fn, *args)` runs `fn(model, *args)` through the root's hooks.

    The engine and the training forward call the model's parts (`model.model`, `lm_head`) directly,
    which FSDP's root hooks would never see; routing each call through this module lets FSDP
    all-gather the root's parameters, run its lazy init and finish the gradient reduce-scatter."""

    def __init__(self, module: nn.Module):
        super().__init__()
        self.module = module

    def forward(self, fn, *args, **kwargs):
        return fn(self.module, *args, **kwargs)


def shard(model: nn.Module) -> Sharded | None:
    """FSDP2 over the ranks: one unit per decoder layer and per vision block, the rest in the root.

    Returns None in a single process (nothing to shard). Gradients are averaged across ranks by
    the reduce-scatter, so a rank's loss must be its share of the global loss times world_size()."""
    if not distributed():
        return None
    from torch.distributed.fsdp import fully_shard

    from .models.forward import unwrap

    hf = unwrap(model)
    inner = hf.model
    units = list(inner.language_model.layers) if hasattr(inner, "language_model") else list(inner.layers)
    visual = getattr(inner, "visual", None)
    if visual is not None:
        units += list(visual.blocks)
    for unit in units:
        fully_shard(unit)
    root = Sharded(model)
    fully_shard(root)
    return root


def run(root: Sharded | None, model: nn.Module, fn, *args, **kwargs):
    """`fn(model, *args)`, through the FSDP root when there is one."""
    return fn(model, *args, **kwargs) if root is None else root(fn, *args, **kwargs)


@contextlib.contextmanager
def gathered(root: Sharded | None):
    """Every FSDP unit all-gathered and kept whole until the block ends (rollouts, evaluation).

    Ranks decode different numbers of tokens, so generation cannot all-gather per forward (the
    ranks' collectives would not line up); one all-gather per unit before and a free after does."""
    if root is None:
        yield
        return
    from torch.distributed.fsdp import FSDPModule

    units = [m for m in root.modules() if isinstance(m, FSDPModule) and m is not root]

    def unshard_all(_model):
        for u in units:
            u.set_reshard_after_forward(False, recurse=False)
            u.unshard()

    root(unshard_all)  # through the root: its lazy init and its own all-gather come first
    try:
        yield
    finally:
        for u in units:
            u.reshard()
            u.set_reshard_after_forward(True, recurse=False)
        root.reshard()


def full_tensor(t: torch.Tensor) -> torch.Tensor:
    """A DTensor's whole value (an all-gather); a plain tensor as it is."""
    return t.full_tensor() if hasattr(t, "full_tensor") else t


def clip_grad_norm(params: list[torch.Tensor], max_norm: float) -> float:
    """Clip the global gradient norm (across ranks when the parameters are sharded); returns it."""
    if max_norm <= 0:
        return 0.0
    norm = torch.nn.utils.clip_grad_norm_(params, max_norm)
    return float(full_tensor(norm))


def model_state(model: nn.Module) -> dict[str, torch.Tensor]:
    """The whole model's weights on the CPU, on the main rank (other ranks get {} after helping gather)."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

    if not distributed():
        return {k: v.detach().cpu() for k, v in model.state_dict().items()}
    return get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))


def optimizer_state(model: nn.Module, optimizer) -> dict:
    """Optimizer state keyed by parameter name (not position), whole, so it loads on any world size."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_optimizer_state_dict

    return get_optimizer_state_dict(model, optimizer,
                                    options=StateDictOptions(full_state_dict=True, cpu_offload=distributed()))


def load_model_state(model: nn.Module, weights: dict[str, torch.Tensor]) -> tuple[list, list]:
    """Load whole weights into a plain or sharded model; returns (missing, unexpected) keys."""
    if not distributed():
        return model.load_state_dict(weights, strict=False)
    from torch.distributed.checkpoint.state_dict import StateDictOptions, set_model_state_dict

    res = set_model_state_dict(model, weights, options=StateDictOptions(full_state_dict=True, strict=False))
    return res.missing_keys, res.unexpected_keys


def load_optimizer_state(model: nn.Module, optimizer, state: dict) -> None:
    from torch.distributed.checkpoint.state_dict import StateDictOptions, set_optimizer_state_dict

    set_optimizer_state_dict(model, optimizer, state, options=StateDictOptions(full_state_dict=True))
