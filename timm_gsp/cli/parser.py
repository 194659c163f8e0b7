"""The ``timm-gsp`` command: embed, search, eval, export, push, show, generate.

Every command that runs a model takes it as ``--model SOURCE`` (``hub.model_sources.find_model``)::

    hf-hub:<repo>[@revision]     a published model on the Hub (or in the local cache)
    local-dir:<folder> | <folder> a published folder (``timm-gsp export`` writes one)
    <checkpoint folder>          a training checkpoint (model_config.json + model.safetensors)
    <run folder>                 a training run: the checkpoint its results.json names

Each command lives in its own module, with its flags (``add_parsers``); this one assembles the parser
and runs the command. Errors about the input (``support.USER_ERRORS``) are printed as one line,
``timm-gsp <command>: error: ...``, exit status 1; ``--debug`` (or ``TIMM_GSP_DEBUG=1``) shows their
traceback. Other errors are bugs: traceback. A file that cannot be written (a full disk) is such a
line too, naming it and the cause; no part of it is left.

Paths in plain-text output are one line each (``support.printable_path``: a name holding a newline
or another control character is printed as the shell's ``$'...'``); ``--json`` prints them as they are.
"""
from __future__ import annotations

import argparse
import sys
from typing import Optional, Sequence

from .evaluation import add_parsers as add_eval
from .generate import add_parsers as add_generate
from .index import add_parsers as add_embed_and_search
from .publish import add_parsers as add_export_and_push
from .show import add_parsers as add_show
from .support import DEBUG_ENV, USER_ERRORS, OneLineArgumentParser, one_line, wants_traceback

__all__ = ["build_parser", "main"]

# Each command module adds its sub-commands and their flags; in the order --help lists them.
COMMANDS = (add_embed_and_search, add_eval, add_export_and_push, add_show, add_generate)


def build_parser() -> argparse.ArgumentParser:
    from .. import __version__

    parser = OneLineArgumentParser(prog="timm-gsp", description="Image retrieval with GSP (Generalized Sum Pooling) timm models.")
    parser.add_argument("--version", action="version", version=f"timm-gsp {__version__}")
    parser.add_argument("--debug", action="store_true", help=f"show the traceback of errors (also: {DEBUG_ENV}=1)")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for add_parsers in COMMANDS:
        add_parsers(sub)
    return parser


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Entry point of the ``timm-gsp`` console script; returns the exit status."""
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except USER_ERRORS as error:
        if wants_traceback(args.debug):
            raise
        print(f"timm-gsp {args.command}: error: {one_line(error)}", file=sys.stderr)
        return 1
