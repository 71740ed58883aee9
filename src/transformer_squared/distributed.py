"""Data parallelism with torch.distributed, for runs launched by `torchrun` or `accelerate launch`
(they set RANK, WORLD_SIZE, LOCAL_RANK and the rendezvous address). Without them everything here is
a no-op, so single-process code paths are unchanged.

Training shards each global batch across ranks and all-reduces the gradients of the expert
parameters only (a few hundred thousand numbers; the base weights and factors never move);
evaluation shards the questions and gathers the records. Only rank 0 writes files.
"""

from __future__ import annotations

import os
from datetime import timedelta
from typing import Any, Iterable, TypeVar

import torch

T = TypeVar("T")


def world() -> int:
    """Number of processes (1 when not launched by torchrun / accelerate)."""
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_world_size()
    return int(os.environ.get("WORLD_SIZE", "1"))


def rank() -> int:
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_rank()
    return int(os.environ.get("RANK", "0"))


def is_main() -> bool:
    return rank() == 0


def local_device() -> torch.device | None:
    """cuda:LOCAL_RANK in a multi-process run on a GPU machine, else None (no preference)."""
    if world() > 1 and torch.cuda.is_available():
        return torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
    return None


def init(device: torch.device | str) -> None:
    """Join the process group once (NCCL on GPUs, gloo on CPUs) when launched with several processes."""
    if world() <= 1 or torch.distributed.is_initialized():
        return
    backend = "nccl" if torch.device(device).type == "cuda" else "gloo"
    if backend == "nccl":
        torch.cuda.set_device(local_device())  # NCCL collectives run on the current device
    torch.distributed.init_process_group(backend, timeout=timedelta(minutes=60))


def shard(items: list[T]) -> list[T]:
    """This rank's share of `items` (strided, so sorted inputs give balanced shards)."""
    return items[rank() :: world()] if world() > 1 else list(items)


def all_sum(values: Iterable[float]) -> list[float]:
    """Element-wise sum of a few numbers over all ranks (float64)."""
    values = list(values)
    if world() <= 1:
        return values
    t = torch.tensor(values, dtype=torch.float64, device=_comm_device())
    torch.distributed.all_reduce(t)
    return t.tolist()


def all_reduce_grads(params: list[torch.Tensor]) -> None:
    """Sum the .grad of `params` over ranks in one flat buffer (missing grads count as zero)."""
    if world() <= 1:
        return
    for p in params:
        if p.grad is None:
            p.grad = torch.zeros_like(p)
    flat = torch.cat([p.grad.reshape(-1) for p in params]).to(_comm_device())  # (Σ r,)
    torch.distributed.all_reduce(flat)
    offset = 0
    for p in params:
        p.grad.copy_(flat[offset : offset + p.numel()].view_as(p.grad))
        offset += p.numel()


def gather_records(records: dict[str, Any]) -> dict[str, Any]:
    """The union of every rank's records (keyed by question id), on every rank."""
    if world() <= 1:
        return records
    parts: list[dict[str, Any] | None] = [None] * world()
    torch.distributed.all_gather_object(parts, records)
    return {k: v for part in parts for k, v in (part or {}).items()}


def barrier() -> None:
    if world() > 1 and torch.distributed.is_initialized():
        torch.distributed.barrier()


def shutdown() -> None:
    """Leave the process group (end of a command)."""
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        torch.distributed.destroy_process_group()


def _comm_device() -> torch.device:
    """Where collectives run: the local GPU for NCCL, the CPU for gloo."""
    if torch.distributed.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")
