"""Joining the torchrun job a process belongs to: the one home of the distributed start.

torchrun sets ``WORLD_SIZE``, ``RANK`` and ``LOCAL_RANK`` in each process's environment. A tool that
may run under torchrun (``timm-gsp embed``, ``examples/train.py``) calls ``start_distributed()`` once
at start and ``stop_distributed()`` at the end; outside torchrun both do nothing. After the start,
``utils.world_size_and_rank()`` gives the job's size and this process's rank.
"""
from __future__ import annotations

import os

import torch
import torch.distributed as dist

__all__ = ["local_device", "start_distributed", "stop_distributed"]


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
