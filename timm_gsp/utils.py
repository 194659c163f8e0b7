"""Small helpers shared by the core and the tools (one home each)."""
from __future__ import annotations

import contextlib
import os
from typing import Iterator, Tuple, Union

import torch
import torch.nn as nn

__all__ = ["PathLike", "dry_forward", "eval_mode", "give_plain_file_mode", "world_size_and_rank"]

PathLike = Union[str, os.PathLike]


@contextlib.contextmanager
def eval_mode(model: nn.Module) -> Iterator[nn.Module]:
    """``model`` in eval mode and without autograd inside the block; its train/eval state is restored."""
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            yield model
    finally:
        model.train(was_training)


def dry_forward(model: nn.Module, input_size: Tuple[int, int, int], fn=None) -> object:
    """One eval-mode, no-grad forward of a zero batch ``(1, *input_size)`` on the model's device and
    dtype; ``fn`` (default ``model``) is what is called, e.g. ``model.forward_features``."""
    reference = next(p for p in model.parameters() if not isinstance(p, nn.UninitializedParameter))
    with eval_mode(model):
        return (fn or model)(torch.zeros(1, *input_size, device=reference.device, dtype=reference.dtype))


def world_size_and_rank() -> Tuple[int, int]:
    """``torch.distributed``'s world size and rank when a process group is initialised, else (1, 0)."""
    dist = torch.distributed
    if dist.is_available() and dist.is_initialized():
        return dist.get_world_size(), dist.get_rank()
    return 1, 0


def give_plain_file_mode(path: PathLike) -> None:
    """Give ``path`` the mode ``open()`` gives a new file (0666 minus the umask). safetensors writes its
    files private (0600), which would hide checkpoints, indexes and published models from other users."""
    umask = os.umask(0o022)  # reading the umask means setting it: put it straight back
    os.umask(umask)
    os.chmod(path, 0o666 & ~umask)
