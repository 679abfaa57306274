"""The torchrun setup that distillation and fine-tuning share: process group, device per rank, collectives.

Started by ``torchrun`` (``WORLD_SIZE`` > 1) a process joins the process group
(gloo on CPU, nccl on GPU, one GPU per process: ``cuda`` means
``cuda:LOCAL_RANK``); started alone it is rank 0 of a world of one and every
collective is a no-op, so a trainer runs the same code either way.
"""

from __future__ import annotations

import os

import torch

from auricle.devices import torch_device


class Distributed:
    """Rank, world size and device; sets up the process group under torchrun.

    ``device`` is ``auto`` (this rank's GPU when there is one, else the CPU), or
    a device name; a device this machine lacks is a one-line ``DeviceError``.
    Every collective must be called by all ranks, as often and in the same order.
    """

    def __init__(self, device: str | torch.device = "cpu") -> None:
        import torch.distributed as dist

        self.world = int(os.environ.get("WORLD_SIZE", "1"))
        self.rank = int(os.environ.get("RANK", "0"))
        local_rank = int(os.environ.get("LOCAL_RANK", "0"))
        name = str(device)
        if name == "auto":
            name = f"cuda:{local_rank}" if torch.cuda.is_available() else "cpu"
        elif name == "cuda" and self.world > 1:
            name = f"cuda:{local_rank}"
        self.device = torch_device(name)  # one line for a device this machine lacks
        if self.device.type == "cuda" and self.device.index is not None:
            # nccl collectives run on the current device; a plain "cuda" (one process) is the current one already,
            # and torch refuses to make a device without an index current.
            torch.cuda.set_device(self.device)
        self.started_group = False
        if self.world > 1 and not dist.is_initialized():
            dist.init_process_group("nccl" if self.device.type == "cuda" else "gloo")
            self.started_group = True

    @property
    def main(self) -> bool:
        """Whether this is rank 0, the process that reports and writes."""
        return self.rank == 0

    @property
    def _wire(self) -> torch.device:
        # nccl takes only tensors on the GPU; gloo only tensors on the CPU.
        return self.device if self.device.type == "cuda" else torch.device("cpu")

    def barrier(self) -> None:
        if self.world > 1:
            import torch.distributed as dist

            dist.barrier()

    def share(self, value):
        """Rank 0's ``value`` (anything picklable) on every rank."""
        if self.world == 1:
            return value
        import torch.distributed as dist

        box = [value]
        dist.broadcast_object_list(box, src=0)
        return box[0]

    def mean(self, value: float) -> float:
        """``value`` averaged over the ranks."""
        if self.world == 1:
            return value
        import torch.distributed as dist

        tensor = torch.tensor([value], dtype=torch.float64, device=self._wire)
        dist.all_reduce(tensor)
        return float(tensor.item()) / self.world

    def total(self, *counts: int) -> list[int]:
        """Each count summed over the ranks."""
        if self.world == 1:
            return list(counts)
        import torch.distributed as dist

        tensor = torch.tensor(counts, dtype=torch.int64, device=self._wire)
        dist.all_reduce(tensor)
        return [int(count) for count in tensor.tolist()]

    def all_true(self, flag: bool) -> bool:
        """Whether ``flag`` holds on every process (a decision all of them must share)."""
        if self.world == 1:
            return flag
        import torch.distributed as dist

        tensor = torch.tensor([int(flag)], dtype=torch.int64, device=self._wire)
        dist.all_reduce(tensor, op=dist.ReduceOp.MIN)
        return bool(tensor.item())

    def gather(self, tensor: torch.Tensor) -> list[torch.Tensor]:
        """Every rank's ``tensor`` (all of one shape), in rank order, on the CPU."""
        if self.world == 1:
            return [tensor]
        import torch.distributed as dist

        tensor = tensor.to(self._wire)
        gathered = [torch.empty_like(tensor) for _ in range(self.world)]
        dist.all_gather(gathered, tensor)
        return [part.cpu() for part in gathered]

    def close(self) -> None:
        """Leave the process group if this object joined it (a caller's own group stays)."""
        if self.started_group:
            import torch.distributed as dist

            dist.destroy_process_group()
            self.started_group = False
