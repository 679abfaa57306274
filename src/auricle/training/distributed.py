"""The torchrun setup that distillation and fine-tuning share: process group, device per rank, collectives.

Started by ``torchrun`` (``WORLD_SIZE`` > 1) a process joins the process group
(gloo on CPU, nccl on GPU, one GPU per process: ``cuda:LOCAL_RANK``); started
alone it is rank 0 of a world of one and every collective is a no-op.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch

from auricle.devices import torch_device


class Distributed:
    """Rank, world size and device; sets up the process group under torchrun."""

    def __init__(self, device: str) -> None:
        import torch.distributed as dist

        self.world = int(os.environ.get("WORLD_SIZE", "1"))
        self.rank = int(os.environ.get("RANK", "0"))
        local_rank = int(os.environ.get("LOCAL_RANK", "0"))
        if device == "auto":
            device = f"cuda:{local_rank}" if torch.cuda.is_available() else "cpu"
        elif device == "cuda" and self.world > 1:
            device = f"cuda:{local_rank}"
        self.device = torch_device(device)  # one line for a device this machine lacks
        if self.device.type == "cuda":
            torch.cuda.set_device(self.device)
        self.started_group = False
        if self.world > 1 and not dist.is_initialized():
            dist.init_process_group("nccl" if self.device.type == "cuda" else "gloo")
            self.started_group = True

    @property
    def main(self) -> bool:
        return self.rank == 0

    def barrier(self) -> None:
        if self.world > 1:
            import torch.distributed as dist

            dist.barrier()

    def mean(self, value: float) -> float:
        if self.world == 1:
            return value
        import torch.distributed as dist

        tensor = torch.tensor([value], dtype=torch.float64, device=self.device)
        dist.all_reduce(tensor)
        return float(tensor.item()) / self.world

    def all_true(self, flag: bool) -> bool:
        """Whether ``flag`` holds on every process (a decision all of them must share)."""
        if self.world == 1:
            return flag
        import torch.distributed as dist

        tensor = torch.tensor([int(flag)], dtype=torch.int64, device=self.device)
        dist.all_reduce(tensor, op=dist.ReduceOp.MIN)
        return bool(tensor.item())

    def close(self) -> None:
        if self.started_group:
            import torch.distributed as dist

            dist.destroy_process_group()


# --------------------------------------------------------------------------- fine-tuning's copy (merged next)


@dataclass(frozen=True)
class FinetuneDistributed:
    rank: int = 0
    world_size: int = 1
    #: This process's device: under torchrun ``cuda`` means ``cuda:LOCAL_RANK``, one GPU per process.
    device: str = "cpu"

    @property
    def main(self) -> bool:
        return self.rank == 0


def distributed_from_env(device: str) -> FinetuneDistributed:
    """Join the process group when started by ``torchrun`` (WORLD_SIZE > 1)."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if world_size <= 1:
        return FinetuneDistributed(device=device)
    import torch.distributed as dist

    if device == "cuda":
        device = f"cuda:{os.environ.get('LOCAL_RANK', '0')}"
    if torch_device(device).type == "cuda":
        torch.cuda.set_device(device)  # nccl collectives run on the current device
    if not dist.is_initialized():
        dist.init_process_group(backend="nccl" if device.startswith("cuda") else "gloo")
    return FinetuneDistributed(dist.get_rank(), dist.get_world_size(), device)


def broadcast_flag(value: bool, where: FinetuneDistributed) -> bool:
    """Rank 0's ``value`` on every rank (collective)."""
    if where.world_size == 1:
        return value
    import torch.distributed as dist

    flag = torch.tensor([1 if value else 0], device=where.device)  # nccl takes only tensors on the GPU
    dist.broadcast(flag, src=0)
    return bool(flag.item())


def gather_generators(generator: torch.Generator, where: FinetuneDistributed) -> list[torch.Tensor]:
    """Every rank's augmentation RNG state (collective: all ranks must call it)."""
    state = generator.get_state()
    if where.world_size == 1:
        return [state]
    import torch.distributed as dist

    state = state.to(where.device)  # nccl takes only tensors on the GPU
    gathered = [torch.empty_like(state) for _ in range(where.world_size)]
    dist.all_gather(gathered, state)
    return [tensor.cpu() for tensor in gathered]
