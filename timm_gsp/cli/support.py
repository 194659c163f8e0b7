"""What the command-line tools (``timm-gsp``, ``examples/train.py``) share: user errors as one line,
file names as one line, and ``KEY=VALUE`` arguments (``ParseKwargs``).

A user error (``USER_ERRORS``: a ``TimmGSPError`` of ``timm_gsp.errors``, or the operating system's
refusal of a path the user named) is printed as ``<prog>: error: <one line>``, exit status 1;
``--debug`` or ``TIMM_GSP_DEBUG=1`` shows its traceback instead. Other exceptions are bugs and keep
their traceback. A usage mistake (a typo in a flag) is the same kind of line, from argparse.

A path in plain-text output goes through ``printable_path``: a name holding a newline or another
control character is printed quoted and escaped, as the shell's ``$'...'``, so one item stays one line.
"""
from __future__ import annotations

import argparse
import ast
import os

from ..errors import TimmGSPError

__all__ = ["DEBUG_ENV", "USER_ERRORS", "OneLineArgumentParser", "ParseKwargs", "one_line", "printable_path",
           "wants_traceback"]

DEBUG_ENV = "TIMM_GSP_DEBUG"  # set to 1: the command-line tools show tracebacks instead of one-line errors
# What a command line reports as one line: timm-gsp's errors about its input, and the operating system's
# refusal of a path the user named (missing, not a folder, not permitted). Any other exception is a bug.
USER_ERRORS = (TimmGSPError, FileNotFoundError, NotADirectoryError, PermissionError)


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


_ESCAPES = {"\a": "\\a", "\b": "\\b", "\t": "\\t", "\n": "\\n", "\v": "\\v", "\f": "\\f", "\r": "\\r",
            "\\": "\\\\", "'": "\\'"}


def printable_path(path: "str | os.PathLike") -> str:
    """``path`` for one line of plain-text output: unchanged when every character is printable (spaces
    and non-ASCII letters are); else quoted as bash's ANSI-C string ``$'...'`` (what ``ls`` prints for
    such names), e.g. ``$'two\\nlines.png'``: ``\\a \\b \\t \\n \\v \\f \\r`` for those control
    characters, ``\\xHH`` for each byte (UTF-8) of any other non-printable character and for a byte that
    is not UTF-8 (Python's surrogate escape), ``\\\\`` and ``\\'`` for ``\\`` and ``'``. Pasted into a
    shell that reads ``$'...'`` (bash, zsh, ksh), it is the same file name again, byte for byte."""
    text = os.fspath(path)
    if text.isprintable():
        return text
    out = []
    for char in text:
        if char in _ESCAPES:
            out.append(_ESCAPES[char])
        elif char.isprintable():
            out.append(char)
        else:
            out.extend(f"\\x{byte:02x}" for byte in char.encode("utf-8", "surrogateescape"))
    return "$'" + "".join(out) + "'"


def wants_traceback(debug_flag: bool = False) -> bool:
    """``--debug`` was given, or ``TIMM_GSP_DEBUG`` is set to something other than 0 / false."""
    return debug_flag or os.environ.get(DEBUG_ENV, "").lower() not in ("", "0", "false")


class OneLineArgumentParser(argparse.ArgumentParser):
    """argparse, with a usage mistake (a typo in a flag, a missing value) reported as the one line
    ``<prog>: error: ...`` that every other user error gets, not after a screen of usage text; exit
    status 2 as argparse's. Sub-commands made by ``add_subparsers`` inherit it."""

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {message} (--help lists the options)\n")


class ParseKwargs(argparse.Action):
    """``KEY=VALUE ...`` -> dict, each value read as a Python literal when it is one, else kept as a string:
    timm ``train.py``'s ``--model-kwargs``. Not ``timm.utils.ParseKwargs`` itself, whose parsing differs
    across the timm versions timm-gsp supports: in timm 1.0.15 a value holding ``=`` or one that is not
    Python (a path: ``file=/data/w.pth``) raises a traceback; in every version so far an item without
    ``=`` does. Here a value is split at its first ``=``, anything that is not a literal is a string,
    and an item without ``=`` is the usual one-line usage error."""

    def __call__(self, parser, namespace, values, option_string=None):
        kwargs = {}
        for item in values:
            key, sep, value = item.partition("=")
            if not sep:
                parser.error(f"{option_string} expects KEY=VALUE items, got {item!r}")
            try:
                kwargs[key] = ast.literal_eval(value)
            except (ValueError, SyntaxError):
                kwargs[key] = value
        setattr(namespace, self.dest, kwargs)
