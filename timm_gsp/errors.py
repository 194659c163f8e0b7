"""The package's errors: one base class, each also a standard exception type.

Catch ``TimmGSPError`` for anything timm-gsp reports about the user's input; each subclass is also
the built-in type a caller would expect (``ValueError``, ``FileNotFoundError``, ...), so code that
catches those keeps working. Errors that are not about GSP (a typo in a timm argument, a torch
error) are never relabelled: they reach the caller with their own type and message.

The command-line tools print these as one line (``timm-gsp <command>: error: ...``,
``timm_gsp.cli.support``); other exceptions are bugs and keep their traceback.
"""
from __future__ import annotations

__all__ = [
    "CheckpointMismatchError",
    "ConfigError",
    "CorruptImageError",
    "DatasetLayoutError",
    "GSPUnsupportedModelError",
    "HubUnavailableError",
    "OutputExistsError",
    "OutputWriteError",
    "TimmGSPError",
]


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


class OutputWriteError(TimmGSPError, OSError):
    """A file could not be written (no space left on the device, no permission, a read-only disk); the
    message names the path and the cause. What was written before it stays valid."""


class DatasetLayoutError(TimmGSPError, FileNotFoundError):
    """The dataset root, an index file or an image is missing, or the folder is not in the expected
    layout. The message names the exact path and the layout that was expected.

    Constructible from a single message string, so ``DataLoader`` workers can re-raise it in the
    main process.
    """


class CorruptImageError(TimmGSPError, OSError):
    """An image file exists but cannot be decoded correctly (corrupt, truncated, not an image, or a
    pixel format that would lose its content). Single-string constructor, as above."""
