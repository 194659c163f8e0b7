"""Fixtures shared by the test modules (pytest loads this file first; tests/ is on sys.path, so the
helper modules ``fixtures_data`` (dataset trees) and ``model_zoo`` (architectures) import directly)."""
from __future__ import annotations

import os
import socket
import sys
from pathlib import Path
from typing import Dict

import pytest

import timm_gsp

REPO = Path(__file__).resolve().parents[1]


def subprocess_env(**extra: str) -> Dict[str, str]:
    """Environment for a child Python process: this checkout importable, the Hub offline, one thread
    per process (two processes on two cores), plus ``extra``."""
    env = dict(os.environ, HF_HUB_OFFLINE="1", OMP_NUM_THREADS="1")
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))
    env.update(extra)
    return env


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def torchrun(nproc: int, *args: str) -> list:
    """The command line of a local ``torchrun`` job (gloo on CPU)."""
    return [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(nproc), "--master_addr",
            "127.0.0.1", "--master_port", str(free_port()), *map(str, args)]


@pytest.fixture
def tiny_gsp_model():
    """A factory of small GSP retrieval models (CPU, eval-ready): ``tiny_gsp_model(name="test_resnet", ...)``."""
    def make(name: str = "test_resnet", embed_dim: int = 8, num_prototypes: int = 4, **kwargs):
        return timm_gsp.create_model(name, embed_dim=embed_dim, num_prototypes=num_prototypes, **kwargs)
    return make


@pytest.fixture
def folder_tree(tmp_path):
    """A factory of ``root/<class>/<image>.png`` trees (colour per class): ``folder_tree(num_classes=4, per_class=3)``."""
    from fixtures_data import make_folder_tree

    def make(num_classes: int = 4, per_class: int = 3, **kwargs) -> Path:
        return make_folder_tree(tmp_path / "folder", num_classes=num_classes, per_class=per_class, **kwargs)
    return make
