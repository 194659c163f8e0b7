"""Small helpers shared by the core and the tools, one home each: a model in eval mode
(``eval_mode``, ``dry_forward``), the process group's size (``world_size_and_rank``), files written
atomically with one-line errors (``write_file_atomic``, ``output_write_error``), a JSON object read
with one-line errors (``read_json_object``), a file named by its content (``file_sha256``) and a sample
spread over a dataset (``evenly_spaced``)."""
from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import uuid
from pathlib import Path
from typing import Any, Callable, Dict, Iterator, List, Tuple, Union

import torch
import torch.nn as nn
from safetensors import SafetensorError

from .errors import ConfigError, OutputWriteError

__all__ = ["PathLike", "dry_forward", "eval_mode", "evenly_spaced", "file_sha256", "fsync_path", "give_plain_file_mode", "output_write_error",
           "read_json_object", "world_size_and_rank", "write_file_atomic"]

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


def evenly_spaced(length: int, count: int) -> List[int]:
    """Up to ``count`` indices of ``range(length)``, one every ``length // count`` from 0 (all of them when
    ``length <= count``): a fixed sample spread over a dataset, the same in every run."""
    return list(range(0, length, max(length // count, 1)))[:count]


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


def fsync_path(path: PathLike) -> None:
    """Flush a file's content, or a folder's entries (a rename into it), to disk. Folders are best
    effort: Windows cannot open them and some network filesystems refuse to sync them."""
    is_folder = os.path.isdir(path)
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        if is_folder:
            return
        raise
    try:
        os.fsync(fd)
    except OSError:
        if not is_folder:
            raise
    finally:
        os.close(fd)


def write_file_atomic(path: PathLike, write: Callable[[Path], None]) -> Path:
    """``write(tmp)`` into a fresh temporary sibling of ``path``, then rename it over ``path``: a reader
    (or a kill at any moment) sees the old file or the new one, never half of one. The file gets the
    mode any new file gets (the umask's) and is flushed to disk with its rename; a failed write leaves
    no temporary file, and the file that was there before stays. A write that fails for lack of space,
    permission, ... (``OSError``, or safetensors' ``SafetensorError`` of an I/O failure) is raised as an
    ``OutputWriteError``: ``cannot write <path>: No space left on device``."""
    path = Path(path)
    # a fresh name rather than mkstemp, whose 0600 mode would outlive the rename
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex[:12]}.tmp")
    try:
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            write(tmp)
            give_plain_file_mode(tmp)
            fsync_path(tmp)
            os.replace(tmp, path)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
        fsync_path(path.parent)
    except (OSError, SafetensorError) as error:
        converted = output_write_error(path, error)
        if converted is error:
            raise
        raise converted from error
    return path


def output_write_error(path: PathLike, error: BaseException) -> BaseException:
    """``error``, met while writing ``path``, as the ``OutputWriteError`` (an ``OSError``, same errno) whose
    one-line message names the path and the cause: ``cannot write <path>: No space left on device``.
    safetensors reports its own I/O failures as ``SafetensorError`` (not an ``OSError``): those are
    converted too; its other errors, and an ``OutputWriteError`` already, are returned as they are."""
    if isinstance(error, OutputWriteError):
        return error
    if isinstance(error, OSError):
        code, cause = error.errno, error.strerror or str(error)
    elif isinstance(error, SafetensorError) and "I/O error" in str(error):
        found = re.search(r"os error (\d+)", str(error))  # "...: I/O error: No space left on device (os error 28)"
        code = int(found.group(1)) if found else None
        cause = os.strerror(code) if code else str(error).split("I/O error:", 1)[1].strip()
    else:
        return error
    converted = OutputWriteError(f"cannot write {path}: {cause}")
    converted.errno = code  # (no filename: str() stays the one-line message)
    return converted


def read_json_object(path: PathLike) -> Dict[str, Any]:
    """The JSON object in ``path``; a missing or unreadable file, or one that holds no object, is a
    ``ConfigError`` naming it."""
    path = Path(path)
    try:
        value = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError(f"{path} not found") from None
    except (OSError, UnicodeDecodeError, ValueError) as error:
        raise ConfigError(f"{path} is not readable JSON: {error}") from None
    if not isinstance(value, dict):
        raise ConfigError(f"{path}: expected a JSON object, got {type(value).__name__}")
    return value


def file_sha256(path: PathLike, chunk_size: int = 1 << 20) -> str:
    """The sha256 hex digest of a file's content. It names a file by what it holds, the same on every
    machine and under any name (provenance without the machine's path); read in chunks, so a large
    checkpoint is never held in memory for it."""
    digest = hashlib.sha256()
    with open(path, "rb") as file:
        for chunk in iter(lambda: file.read(chunk_size), b""):
            digest.update(chunk)
    return digest.hexdigest()
