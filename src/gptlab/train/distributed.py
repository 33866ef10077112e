"""One process or many: `torchrun --nproc_per_node=N` sets RANK/WORLD_SIZE/LOCAL_RANK and we
join the process group (gloo on CPU, nccl on CUDA). Only rank 0 logs and writes files."""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from typing import TypeVar

import torch
import torch.distributed as dist

from gptlab.errors import GptlabError

T = TypeVar("T")


@dataclass
class Dist:
    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @property
    def enabled(self) -> bool:
        return self.world > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def barrier(self) -> None:
        if self.enabled:
            dist.barrier()


def setup(device_type: str, cpu_tensors_too: bool = False) -> Dist:
    """Join the process group when started by torchrun with more than one process.
    cpu_tensors_too (CUDA): also a gloo backend, for collectives on CPU tensors (fsdp's
    cpu_offload keeps gradients there, and clipping all-reduces their norm)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return Dist()
    rank = int(os.environ["RANK"])
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if not dist.is_initialized():
        backend = "gloo"
        if device_type == "cuda":
            backend = "cpu:gloo,cuda:nccl" if cpu_tensors_too else "nccl"
        dist.init_process_group(backend=backend)
    if device_type == "cuda":
        torch.cuda.set_device(local_rank)
    return Dist(rank=rank, world=world, local_rank=local_rank)


def cleanup(d: Dist) -> None:
    if d.enabled and dist.is_initialized():
        dist.destroy_process_group()


def any_rank(d: Dist, flag: bool, device: torch.device) -> bool:
    """True on every rank if it is True on any (a stop request seen by one rank stops all)."""
    if not d.enabled:
        return flag
    t = torch.tensor([1 if flag else 0], dtype=torch.int32, device=device)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return bool(t.item())


def broadcast_int(d: Dist, value: int, device: torch.device) -> int:
    """Rank 0's value, on every rank (a decision that all processes must share)."""
    if not d.enabled:
        return value
    t = torch.tensor([value], dtype=torch.int64, device=device)
    dist.broadcast(t, src=0)
    return int(t.item())


def on_main(d: Dist, work: Callable[[], T]) -> T | None:
    """Run `work` on rank 0 while the others wait; a failure there stops every rank at once
    with the same one-line message (instead of leaving them at a barrier until torchrun's
    timeout). Returns work's result on rank 0, None elsewhere."""
    result, error = None, None
    if d.is_main:
        try:
            result = work()
        except GptlabError as e:
            error = str(e)
        except BaseException as e:
            if d.enabled:  # tell the others, then fail here as usual
                dist.broadcast_object_list([f"rank 0 failed: {type(e).__name__}: {e}"], src=0)
            raise
    if d.enabled:
        box = [error]
        dist.broadcast_object_list(box, src=0)
        error = box[0]
    if error is not None:
        raise GptlabError(error)
    return result


def all_mean(d: Dist, value: torch.Tensor) -> torch.Tensor:
    """The mean of a scalar tensor over ranks (itself with one process). A NaN on any rank
    makes it NaN on all, so every rank sees a failure together."""
    if not d.enabled:
        return value
    value = value.detach().clone()
    dist.all_reduce(value, op=dist.ReduceOp.SUM)
    return value / d.world


def all_sum(d: Dist, value: float, device: torch.device) -> float:
    """The sum of a number over ranks, in float64 (itself with one process)."""
    if not d.enabled:
        return value
    t = torch.tensor([value], dtype=torch.float64, device=device)
    dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return float(t.item())


def gather_objects(d: Dist, obj):
    """[obj of rank 0, obj of rank 1, ...] on every rank."""
    if not d.enabled:
        return [obj]
    out = [None] * d.world
    dist.all_gather_object(out, obj)
    return out
