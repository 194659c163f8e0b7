"""Small helpers shared by the core and the tools (one home each)."""
from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import socket
import uuid
import warnings
from pathlib import Path
from typing import Any, Callable, Dict, Iterator, List, Optional, Set, Tuple, Union

import torch
import torch.nn as nn
from safetensors import SafetensorError

from .errors import ConfigError, OutputExistsError, OutputWriteError

__all__ = ["CLAIM_FILE", "FolderClaim", "PathLike", "dry_forward", "eval_mode", "file_sha256", "fsync_path",
           "give_plain_file_mode", "output_write_error", "read_json_object", "world_size_and_rank", "write_file_atomic"]

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


# --- one process per folder -------------------------------------------------------------------------

CLAIM_FILE = ".timm-gsp.lock"  # in a claimed folder: the lock, holding "<pid> <host>" of its holder
_HELD: Set[str] = set()  # folders this process holds (a POSIX lock does not keep a process from itself)


class FolderClaim:
    """One process's claim on a folder (a training run's output), from before its first look at the
    folder's content until it ends: an exclusive lock on ``<folder>/.timm-gsp.lock``, which holds the
    holder's pid and host. The lock is the kernel's (a POSIX ``fcntl`` lock; on Windows ``msvcrt``), so
    it ends with its process however that ends, SIGKILL included: the file a killed holder leaves is no
    claim, and the next ``acquire`` takes it over. (POSIX locks are not inherited by forked children,
    so a data-loader worker that outlives its run holds nothing.)

    ``acquire()`` makes the folder (and missing parents) and returns True, or False while another
    process holds it (``holder`` then says who). ``release()`` drops the claim and its file and removes
    the folders ``acquire`` made if they are still empty: a run that wrote nothing leaves nothing, and
    a folder that was there before stays, as it was. ``with FolderClaim(folder):`` acquires (an
    ``OutputExistsError`` naming the holder when another process has it) and releases; or::

        claim = FolderClaim(output)
        if not claim.acquire():
            raise OutputExistsError(f"{output} is in use by {claim.holder}")
        try:
            ...
        finally:
            claim.release()
    """

    def __init__(self, folder: PathLike) -> None:
        self.folder = Path(folder)
        self.path = self.folder / CLAIM_FILE
        self.holder: Optional[str] = None
        self.created: List[Path] = []  # the folders acquire() made, outermost first
        self._fd: Optional[int] = None
        self._key: Optional[str] = None

    @property
    def held(self) -> bool:
        return self._fd is not None

    def acquire(self) -> bool:
        if self._fd is not None:
            return True
        key = os.path.realpath(self.folder)
        if key in _HELD:
            self.holder = f"this process (pid {os.getpid()})"
            return False
        for _ in range(100):  # retried only while other processes remove or replace the file under us
            self._make_folders()
            try:
                fd = os.open(self.path, os.O_RDWR | os.O_CREAT | getattr(os, "O_CLOEXEC", 0), 0o666)
            except FileNotFoundError:
                continue  # a failed start of another run removed the empty folder in between: make it again
            except OSError as error:
                self._remove_created()
                raise output_write_error(self.path, error) from error
            try:
                locked = _try_lock(fd)
            except OSError as error:  # a filesystem without locks (some network or FUSE mounts)
                warnings.warn(f"cannot lock {self.path} ({error.strerror or error}): nothing keeps another "
                              f"process from writing into {self.folder} at the same time", RuntimeWarning, stacklevel=2)
                locked = True
            if not locked:
                self.holder = _read_holder(fd)
                os.close(fd)
                self._remove_created()
                return False
            # the previous holder removes the file when it ends: a lock on a file no longer at the path
            # (or since replaced) claims nothing, so look again
            try:
                current = os.path.samestat(os.fstat(fd), os.stat(self.path))
            except OSError:
                current = False
            if not current:
                os.close(fd)
                continue
            with contextlib.suppress(OSError):  # who holds it, for the message of a refused process
                os.ftruncate(fd, 0)
                os.write(fd, f"{os.getpid()} {socket.gethostname()}\n".encode())
            self._fd, self._key = fd, key
            _HELD.add(key)
            return True
        raise OutputWriteError(f"cannot claim {self.folder}: its {CLAIM_FILE} keeps being replaced by other processes")

    def release(self) -> None:
        if self._fd is None:
            return
        with contextlib.suppress(OSError):
            os.unlink(self.path)  # while still locked: a process waiting on this file will find it gone
        os.close(self._fd)  # ends the lock
        _HELD.discard(self._key)
        self._fd = self._key = None
        self._remove_created()

    def __enter__(self) -> "FolderClaim":
        if not self.acquire():
            raise OutputExistsError(f"{self.folder} is in use by {self.holder}")
        return self

    def __exit__(self, *exc_info) -> None:
        self.release()

    def _make_folders(self) -> None:
        missing = []
        folder = self.folder
        while not folder.exists() and folder.parent != folder:
            missing.append(folder)
            folder = folder.parent
        for folder in reversed(missing):
            try:
                folder.mkdir()
            except FileExistsError:
                continue  # another process made it: not ours to remove
            except OSError as error:
                self._remove_created()
                raise output_write_error(folder, error) from error
            self.created.append(folder)

    def _remove_created(self) -> None:
        """rmdir, innermost first, the folders this claim made, while they are empty (never anything in them)."""
        while self.created:
            try:
                os.rmdir(self.created[-1])
            except FileNotFoundError:
                pass
            except OSError:
                break  # not empty: something was written, it stays (and so do the folders above it)
            self.created.pop()
        self.created.clear()


def _try_lock(fd: int) -> bool:
    """An exclusive, non-blocking lock on the open file ``fd``: True when taken, False when another process
    holds it; OSError when the filesystem cannot lock."""
    try:
        import fcntl
    except ImportError:  # Windows
        import msvcrt
        try:
            msvcrt.locking(fd, msvcrt.LK_NBLCK, 1)
        except OSError:
            return False
        return True
    try:
        fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except (BlockingIOError, PermissionError):  # EAGAIN or EACCES: held by another process
        return False
    return True


def _read_holder(fd: int) -> str:
    """'another run (pid 123 on host)' from a claim file's content; what is there may be half written."""
    try:
        pid, host = os.read(fd, 256).decode("utf-8", "replace").split()[:2]
        return f"another run (pid {int(pid)} on {host})"
    except (OSError, ValueError):
        return "another run"
