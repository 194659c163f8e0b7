"""What the command-line tools (``timm-gsp``, ``examples/train.py``) share: user errors as one line.

A ``TimmGSPError`` (``timm_gsp.errors``) is printed as ``<prog>: error: <one line>``, exit status 1;
``--debug`` or ``TIMM_GSP_DEBUG=1`` shows its traceback instead. Other exceptions are bugs and keep
their traceback. A usage mistake (a typo in a flag) is the same kind of line, from argparse.
"""
from __future__ import annotations

import argparse
import os

__all__ = ["DEBUG_ENV", "OneLineArgumentParser", "one_line", "wants_traceback"]

DEBUG_ENV = "TIMM_GSP_DEBUG"  # set to 1: the command-line tools show tracebacks instead of one-line errors


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
