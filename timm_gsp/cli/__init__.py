"""The ``timm-gsp`` command line (the console script ``timm_gsp.cli:main``; ``python -m timm_gsp.cli``
under ``torchrun``).

* ``parser``: the parser of every command, and ``main``, the one place a user error becomes one line;
* ``support``: what the command lines share (``examples/train.py`` too): the one-line errors and
  argument parser, printable paths;
* ``inputs``: images, labels and the ``--model`` source, loaded and embedded;
* the commands: ``index`` (embed, search), ``evaluation`` (eval), ``publish`` (export, push),
  ``show``, ``generate``.
"""
from .parser import build_parser, main

__all__ = ["build_parser", "main"]
