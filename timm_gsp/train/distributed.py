"""Joining the torchrun job a process belongs to: the one home of the distributed start.

torchrun sets ``WORLD_SIZE``, ``RANK`` and ``LOCAL_RANK`` in each process's environment. A tool that
may run under torchrun (``timm-gsp embed``, ``examples/train.py``) calls ``start_distributed()`` once
at start and ``stop_distributed()`` at the end; outside torchrun both do nothing. After the start,
``utils.world_size_and_rank()`` gives the job's size and this process's rank.

A training loop takes the job as one object, ``DistributedJob``: started on creation, stopped by
``close()`` (or at the end of a ``with`` block), it knows its size, rank and device and does what a
loop needs of the other processes (a barrier, the main process first, a gather of Python objects, the
averaging of gradients DDP does not see). In a job of one process every step is a no-op.
"""
from __future__ import annotations

import contextlib
import os
from typing import Any, Iterable, Iterator, List

import torch
import torch.distributed as dist

from ..utils import world_size_and_rank

__all__ = ["DistributedJob", "local_device", "start_distributed", "stop_distributed"]


def _local_rank() -> int:
    return int(os.environ.get("LOCAL_RANK", "0"))


def local_device() -> torch.device:
    """This process's device: GPU ``LOCAL_RANK`` when CUDA is there (GPU 0 outside torchrun), else the CPU."""
    return torch.device("cuda", _local_rank()) if torch.cuda.is_available() else torch.device("cpu")


def start_distributed() -> bool:
    """Join the torchrun job this process belongs to (gloo on CPU, nccl on GPUs); False outside one.

    Each process is pinned to its own GPU (``LOCAL_RANK``) first: nccl needs it before the group forms.
    """
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return False
    if torch.cuda.is_available():
        torch.cuda.set_device(_local_rank())
    dist.init_process_group("nccl" if torch.cuda.is_available() else "gloo")
    return True


def stop_distributed() -> None:
    """Leave the job joined by ``start_distributed`` (nothing to do outside one)."""
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


class DistributedJob:
    """This process's part in its torchrun job, or a job of one process outside torchrun.

    Creating it joins the job (``start_distributed``); ``close()`` leaves it (``stop_distributed``), as
    does the end of ``with DistributedJob() as job:``.

    Attributes:
        world_size, rank: the job's size and this process's rank (1 and 0 outside torchrun).
        device: this process's device (``local_device``).
    """

    def __init__(self) -> None:
        start_distributed()
        self.world_size, self.rank = world_size_and_rank()
        self.device = local_device()

    @property
    def enabled(self) -> bool:
        """More than one process."""
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        """Rank 0: the process that writes the run's files and prints."""
        return self.rank == 0

    def barrier(self) -> None:
        if self.enabled:
            dist.barrier()

    @contextlib.contextmanager
    def main_first(self) -> Iterator[None]:
        """The block runs on the main process first, then on the others: what the main process makes
        there (a generated dataset's cache) is complete before another process reads it."""
        if not self.is_main:
            self.barrier()
        yield
        if self.is_main:
            self.barrier()

    def all_gather_object(self, value: Any) -> List[Any]:
        """Every rank's ``value`` (any picklable object), in rank order, on every rank."""
        if not self.enabled:
            return [value]
        gathered: List[Any] = [None] * self.world_size
        dist.all_gather_object(gathered, value)
        return gathered

    def average_gradients(self, parameters: Iterable[torch.nn.Parameter]) -> None:
        """Average the gradients of parameters DDP does not wrap (a loss's proxies, ZSR's class
        embeddings) over the ranks, as DDP averages the model's."""
        if self.enabled:
            for p in parameters:
                if p.grad is not None:
                    dist.all_reduce(p.grad)
                    p.grad /= self.world_size

    def close(self) -> None:
        stop_distributed()

    def __enter__(self) -> "DistributedJob":
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()
