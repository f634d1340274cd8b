"""Data-parallel plumbing: process group from torchrun's environment, DDP, reductions.

Everything reads the launcher's environment (RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR/PORT),
so the same code runs single-process, under ``torchrun --standalone`` and across nodes.
"""

from __future__ import annotations

import datetime
import os
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel


@dataclass(frozen=True, kw_only=True)
class DistContext:
    """Where this process sits in the job."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    local_world_size: int = 1
    backend: str | None = None
    """"gloo" or "nccl" when a process group is up, else None."""
    device: torch.device = torch.device("cpu")

    @property
    def enabled(self) -> bool:
        """A process group is up (world size > 1, or a one-rank group asked for with ``ddp``)."""
        return self.backend is not None

    @property
    def is_main(self) -> bool:
        """Only the main rank writes results and files."""
        return self.rank == 0


def launcher_world_size() -> int:
    return int(os.environ.get("WORLD_SIZE", "1"))


def init_from_env(device_type: str, *, timeout_s: float = 120.0, process_group: bool = False) -> DistContext:
    """Join the process group torchrun described, or return a single-process context.

    gloo on CPU; NCCL on CUDA when every rank has its own GPU, otherwise gloo with CUDA
    tensors (NCCL refuses two ranks on one GPU). ``process_group``: join one even at world
    size 1 (launched by torchrun with one rank), so DDP and NCCL run on a single device.
    """
    world_size = launcher_world_size()
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    local_world_size = int(os.environ.get("LOCAL_WORLD_SIZE", str(world_size)))
    if device_type == "cuda":
        gpu_count = torch.cuda.device_count()
        device = torch.device("cuda", local_rank % max(gpu_count, 1))
        torch.cuda.set_device(device)
        backend = "nccl" if local_world_size <= gpu_count else "gloo"
    else:
        device = torch.device("cpu")
        backend = "gloo"
    if world_size == 1 and not process_group:
        return DistContext(device=device)
    if not dist.is_initialized():
        dist.init_process_group(backend=backend, timeout=datetime.timedelta(seconds=timeout_s))
    return DistContext(
        rank=rank,
        world_size=world_size,
        local_rank=local_rank,
        local_world_size=local_world_size,
        backend=backend,
        device=device,
    )


def wrap_ddp(model: torch.nn.Module, context: DistContext) -> torch.nn.Module:
    """DDP around ``model`` when the job is distributed; the model itself otherwise."""
    if not context.enabled:
        return model
    device_ids = [context.device.index] if context.device.type == "cuda" else None
    return DistributedDataParallel(model, device_ids=device_ids)


def all_reduce_mean(tensor: torch.Tensor, context: DistContext) -> torch.Tensor:
    """Mean of ``tensor`` over ranks (a copy; the input is untouched)."""
    if not context.enabled:
        return tensor.clone()
    reduced = tensor.detach().clone()
    dist.all_reduce(reduced, op=dist.ReduceOp.SUM)
    return reduced / context.world_size


def gather_objects(value, context: DistContext) -> list:
    """Every rank's ``value`` (picklable), in rank order, on every rank; ``[value]`` single-process.

    For facts gathered once after training (sample ids, thread counts), never inside the loop.
    """
    if not context.enabled:
        return [value]
    gathered: list = [None] * context.world_size
    dist.all_gather_object(gathered, value)
    return gathered


def barrier(context: DistContext) -> None:
    if context.enabled:
        dist.barrier()


def shutdown(context: DistContext) -> None:
    if context.enabled and dist.is_initialized():
        dist.destroy_process_group()
