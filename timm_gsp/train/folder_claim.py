"""One training run per output folder: ``FolderClaim``, a lock on the folder that dies with its process."""
from __future__ import annotations

import contextlib
import os
import socket
import time
import warnings
from pathlib import Path
from typing import List, Optional, Set

from ..errors import OutputExistsError, OutputWriteError
from ..utils import PathLike, output_write_error

__all__ = ["CLAIM_FILE", "FolderClaim"]

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


def _read_holder(fd: int, wait_s: float = 2.0) -> str:
    """'another run (pid 123 on host)' from a claim file's content. A holder that has just taken the lock
    writes its pid a moment later, so an empty or half-written file is read again for up to ``wait_s``."""
    deadline = time.monotonic() + wait_s
    while True:
        try:
            os.lseek(fd, 0, os.SEEK_SET)
            pid, host = os.read(fd, 256).decode("utf-8", "replace").split()[:2]
            return f"another run (pid {int(pid)} on {host})"
        except (OSError, ValueError):
            if time.monotonic() >= deadline:
                return "another run"
            time.sleep(0.01)
