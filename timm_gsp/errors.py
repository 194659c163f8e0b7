"""The package's errors: one base class, each also a standard exception type.

Catch ``TimmGSPError`` for anything timm-gsp reports about the user's input; each subclass is also
the built-in type a caller would expect (``ValueError``, ``FileNotFoundError``, ...), so code that
catches those keeps working. Errors that are not about GSP (a typo in a timm argument, a torch
error) are never relabelled: they reach the caller with their own type and message.

The command-line tools print these as one line (``timm-gsp <command>: error: ...``); other
exceptions are bugs and keep their traceback.
"""
from __future__ import annotations

import argparse
import os

__all__ = [
    "DEBUG_ENV",
    "CheckpointMismatchError",
    "ConfigError",
    "CorruptImageError",
    "DatasetLayoutError",
    "GSPUnsupportedModelError",
    "HubUnavailableError",
    "OneLineArgumentParser",
    "OutputExistsError",
    "TimmGSPError",
    "one_line",
    "wants_traceback",
]

DEBUG_ENV = "TIMM_GSP_DEBUG"  # set to 1: the command-line tools show tracebacks instead of one-line errors


class TimmGSPError(Exception):
    """Base class of every error timm-gsp raises about its input."""


class ConfigError(TimmGSPError, ValueError):
    """A setting, flag or file content is invalid; the message names it and what fixes it."""


class GSPUnsupportedModelError(TimmGSPError, ValueError):
    """The model family does not build its pooling in a way GSP can reach through ``global_pool``."""


class CheckpointMismatchError(TimmGSPError, ValueError):
    """A checkpoint or model folder does not fit the model it is loaded into, or is unreadable."""


class HubUnavailableError(TimmGSPError, RuntimeError):
    """The Hugging Face Hub cannot be reached: offline mode, no token, or no network."""


class OutputExistsError(TimmGSPError, FileExistsError):
    """Writing would replace something the user has (a finished run, a checkpoint, a file)."""


class DatasetLayoutError(TimmGSPError, FileNotFoundError):
    """The dataset root, an index file or an image is missing, or the folder is not in the expected
    layout. The message names the exact path and the layout that was expected.

    Constructible from a single message string, so ``DataLoader`` workers can re-raise it in the
    main process.
    """


class CorruptImageError(TimmGSPError, OSError):
    """An image file exists but cannot be decoded correctly (corrupt, truncated, not an image, or a
    pixel format that would lose its content). Single-string constructor, as above."""


def one_line(error: BaseException) -> str:
    """The one-line message of a user error. A DataLoader worker's error arrives with the worker's
    traceback inside its message: only the original message is kept."""
    text = str(error)
    if text.startswith("Caught ") and "Original Traceback" in text:
        name = type(error).__name__
        for line in reversed(text.splitlines()):
            head, sep, rest = line.partition(": ")
            if sep and head.rsplit(".", 1)[-1] == name:
                text = rest
                break
    return " ".join(text.split()) or type(error).__name__


def wants_traceback(debug_flag: bool = False) -> bool:
    """``--debug`` was given, or ``TIMM_GSP_DEBUG`` is set to something other than 0 / false."""
    return debug_flag or os.environ.get(DEBUG_ENV, "").lower() not in ("", "0", "false")


class OneLineArgumentParser(argparse.ArgumentParser):
    """argparse, with a usage mistake (a typo in a flag, a missing value) reported as the one line
    ``<prog>: error: ...`` that every other user error gets, not after a screen of usage text; exit
    status 2 as argparse's. Sub-commands made by ``add_subparsers`` inherit it."""

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {message} (--help lists the options)\n")
