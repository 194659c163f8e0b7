"""Which model a source names, and the model itself: the one loader of the tools.

A source is one of

* ``hf-hub:<repo>[@revision]``: a published model on the Hub (or in the local cache);
* ``local-dir:<folder>`` or a folder with timm's ``config.json``: a published model (``hub.published``);
* a training checkpoint folder (``model_config.json`` + ``model.safetensors``, ``train.checkpoint``);
* a training run folder, or its ``results.json``: the checkpoint the results name.

``find_model`` reads JSON only; ``ModelFolder.build`` / ``load_model`` read tensors (safetensors): no
code from a checkpoint is executed. Importing this module loads neither the evaluation code nor
torchmetrics, so every command that only needs a model starts quickly.
"""
from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Optional, Union

import torch.nn as nn

from ..errors import ConfigError
from ..models.model_config import RetrievalModelConfig
from ..timm_plugin import HUB_PREFIXES, LOCAL_DIR_PREFIX
from ..train.checkpoint import MODEL_CONFIG_FILE, read_model_config
from ..train.run_results import read_results
from ..utils import PathLike
from .published import CONFIG_NAME, WEIGHTS_NAME, build_published, load_state_dict, read_published_config, read_state_dict
from .transfer import download_snapshot

__all__ = ["ModelFolder", "find_model", "load_model"]

RESULTS_FILE = "results.json"


@dataclasses.dataclass(frozen=True)
class ModelFolder:
    """A trained model found on disk (or in the Hub cache), before it is built.

    Attributes:
        config: its description (for a published folder, ``data_config`` is its ``pretrained_cfg``'s).
        folder: the folder holding ``model.safetensors``.
        source: how to name it again from anywhere: ``hf-hub:<repo>`` or the absolute folder path.
        published: a folder in timm's format (rebuilt through timm), else a training checkpoint.
        results: the run's ``results.json`` whose metrics belong to these weights, if known.
    """

    config: RetrievalModelConfig
    folder: Path
    source: str
    published: bool
    results: Optional[Path] = None

    def build(self) -> nn.Module:
        """The model in eval mode, every tensor of the weights file loaded strictly."""
        weights = self.folder / WEIGHTS_NAME
        state = read_state_dict(weights)
        if self.published:
            model = build_published(self.folder)
        else:
            try:
                model = self.config.build()
            except (TypeError, ValueError, RuntimeError) as error:
                if isinstance(error, ConfigError):
                    raise
                raise ConfigError(f"{self.folder}: its model description does not build: {type(error).__name__}: {error}") from error
        load_state_dict(model, state, source=str(weights))
        return model.eval()


def find_model(source: Union[str, PathLike]) -> ModelFolder:
    """Where a model is and what it is (see the module docstring), reading JSON only.

    Raises:
        ConfigError: nothing there, or not one of these; the message names the path.
        HubUnavailableError: a Hub model that is not cached, offline.
    """
    text = str(source)
    if text.startswith(HUB_PREFIXES):
        repo = text.split(":", 1)[1]
        folder = download_snapshot(repo)
        return ModelFolder(read_published_config(folder), folder, f"hf-hub:{repo}", True)
    path = Path(text[len(LOCAL_DIR_PREFIX):] if text.startswith(LOCAL_DIR_PREFIX) else text).expanduser().resolve()
    if path.is_file() and path.name.endswith(".json"):
        path = path.parent
    if not path.exists():
        raise ConfigError(f"no such model: {path}")
    if (path / CONFIG_NAME).is_file():
        return ModelFolder(read_published_config(path), path, str(path), True)
    if (path / MODEL_CONFIG_FILE).is_file():
        return ModelFolder(read_model_config(path), path, str(path), False, _run_results_of(path))
    if (path / RESULTS_FILE).is_file():
        results = read_results(path / RESULTS_FILE)
        if not results.checkpoint:
            raise ConfigError(f"{path / RESULTS_FILE} names no checkpoint folder")
        found = find_model(path / results.checkpoint)
        return dataclasses.replace(found, results=path / RESULTS_FILE)
    raise ConfigError(f"{path} is not a model: expected a published folder ({CONFIG_NAME} + {WEIGHTS_NAME}), a training "
                      f"checkpoint ({MODEL_CONFIG_FILE} + {WEIGHTS_NAME}) or a training run folder ({RESULTS_FILE})")


def _run_results_of(checkpoint: Path) -> Optional[Path]:
    """The run's results.json one folder up, when its metrics belong to this checkpoint."""
    path = checkpoint.parent / RESULTS_FILE
    if not path.is_file():
        return None
    try:
        named = read_results(path).checkpoint
    except ConfigError:
        return None
    return path if named and (checkpoint.parent / named).resolve() == checkpoint else None


def load_model(source: Union[str, PathLike]) -> nn.Module:
    """The model of ``source`` (see ``find_model``) in eval mode, every tensor of its weights loaded
    strictly into the architecture its description builds (a config that disagrees with the
    weights, e.g. another embedding size or number of prototypes, is refused naming both shapes)."""
    return find_model(source).build()
