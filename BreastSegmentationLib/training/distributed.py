"""Data-parallel training across GPUs and nodes with ``torchrun`` (seed 002 scaled from one GPU to two).

``torchrun`` sets RANK / WORLD_SIZE / LOCAL_RANK; without them training runs in one process. On CPU the
gloo backend is used, which also lets the tests exercise the distributed path without a GPU.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class DistributedContext:
    """Where this process stands in a (possibly single-process) training job."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        """Only the main process writes logs, checkpoints and models."""
        return self.rank == 0

    def device(self, requested: torch.device) -> torch.device:
        """One GPU per process when training on CUDA."""
        if self.enabled and requested.type == "cuda":
            return torch.device("cuda", self.local_rank)
        return requested

    def barrier(self) -> None:
        if self.enabled:
            dist.barrier()

    def mean(self, value: float, count: int) -> tuple[float, int]:
        """Average ``value`` (itself a mean over ``count`` items) over all processes."""
        if not self.enabled:
            return value, count
        totals = torch.tensor([value * count, float(count)], dtype=torch.float64)
        dist.all_reduce(totals)
        total_count = int(totals[1].item())
        return float(totals[0].item() / max(total_count, 1)), total_count


def init_distributed(device: torch.device) -> DistributedContext:
    """Join the process group that ``torchrun`` prepared, or return a single-process context."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if world_size <= 1:
        return DistributedContext()
    context = DistributedContext(int(os.environ["RANK"]), world_size, int(os.environ.get("LOCAL_RANK", "0")))
    if not dist.is_initialized():
        backend = "nccl" if device.type == "cuda" else "gloo"
        dist.init_process_group(backend=backend)
    if device.type == "cuda":
        torch.cuda.set_device(context.local_rank)
    return context


def shutdown_distributed(context: DistributedContext) -> None:
    if context.enabled and dist.is_initialized():
        dist.destroy_process_group()
