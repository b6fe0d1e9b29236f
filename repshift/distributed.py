"""Thin helpers around ``torch.distributed`` for torchrun-sharded evaluation.

Everything here also works in a plain single process without a process group:
``init_from_env`` is then a no-op returning ``(0, 1, 0)``, ``all_gather_objects``
returns ``[obj]`` and ``barrier`` / ``cleanup`` do nothing.
"""

from __future__ import annotations

import os
from typing import Any

import torch
import torch.distributed as dist

__all__ = [
    "init_from_env",
    "is_initialized",
    "get_rank",
    "get_world_size",
    "is_main",
    "shard_indices",
    "all_gather_objects",
    "barrier",
    "cleanup",
]


def is_initialized() -> bool:
    """True when a ``torch.distributed`` process group is up."""
    return dist.is_available() and dist.is_initialized()


def get_rank() -> int:
    return dist.get_rank() if is_initialized() else 0


def get_world_size() -> int:
    return dist.get_world_size() if is_initialized() else 1


def is_main() -> bool:
    """True on rank 0, and always in a single process."""
    return get_rank() == 0


def init_from_env(backend: str | None = None) -> tuple[int, int, int]:
    """Initialise ``torch.distributed`` from torchrun's environment variables.

    When ``RANK`` and ``WORLD_SIZE`` are set (torchrun also sets ``LOCAL_RANK``,
    ``MASTER_ADDR`` and ``MASTER_PORT``) the default process group is created with
    ``init_method="env://"``. ``backend`` defaults to ``nccl`` when CUDA is available
    (the current CUDA device is then set to ``LOCAL_RANK``) and ``gloo`` otherwise.
    Without those variables this is a no-op. If a process group already exists it is
    reused. Returns ``(rank, world_size, local_rank)``.
    """
    if is_initialized():
        return dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", 0))
    env = os.environ
    if "RANK" not in env or "WORLD_SIZE" not in env:
        return 0, 1, 0
    missing = [k for k in ("MASTER_ADDR", "MASTER_PORT") if k not in env]
    if missing:
        raise RuntimeError(
            f"RANK/WORLD_SIZE are set but {', '.join(missing)} are not: launch with torchrun "
            "(python -m torch.distributed.run) or set them yourself"
        )
    if not dist.is_available():
        raise RuntimeError("torch.distributed is not available in this torch build")
    rank, world = int(env["RANK"]), int(env["WORLD_SIZE"])
    local_rank = int(env.get("LOCAL_RANK", 0))
    if backend is None:
        backend = "nccl" if torch.cuda.is_available() else "gloo"
    if backend == "nccl":
        torch.cuda.set_device(local_rank)
    dist.init_process_group(backend=backend, init_method="env://", rank=rank, world_size=world)
    return rank, world, local_rank


def shard_indices(n: int, rank: int, world: int) -> list[int]:
    """Indices of ``range(n)`` that ``rank`` of ``world`` processes handles.

    A strided split (``rank, rank + world, ...``): shards are disjoint, together cover
    ``range(n)`` exactly once, and there is no padding, so shard sizes differ by at
    most one when ``n`` is not divisible by ``world``.
    """
    if world < 1:
        raise ValueError(f"world must be >= 1, got {world}")
    if not 0 <= rank < world:
        raise ValueError(f"rank must be in [0, {world}), got {rank}")
    if n < 0:
        raise ValueError(f"n must be >= 0, got {n}")
    return list(range(rank, n, world))


def all_gather_objects(obj: Any) -> list[Any]:
    """Gather one picklable object from every rank; element ``r`` comes from rank ``r``.

    Returns ``[obj]`` when no process group is initialised.
    """
    if not is_initialized():
        return [obj]
    out: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(out, obj)
    return out


def barrier() -> None:
    """Synchronise all ranks (no-op without a process group)."""
    if is_initialized():
        dist.barrier()


def cleanup() -> None:
    """Destroy the default process group if there is one."""
    if is_initialized():
        dist.destroy_process_group()
