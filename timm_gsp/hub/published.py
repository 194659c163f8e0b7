"""A published GSP retrieval model: a folder in timm's own Hugging Face Hub format.

A published model is a folder (or Hub repo) of three files, plus two optional pictures:

    model.safetensors   the model's ``state_dict()`` (no pickle; no loss or optimizer state)
    config.json         timm's config (``timm.models.save_for_hf``): ``architecture``, ``model_args``,
                        ``pretrained_cfg`` (the evaluation preprocessing) and, under ``"timm_gsp"``, the
                        model's ``RetrievalModelConfig`` (all of it derived in ``models.model_config``)
    README.md           the model card (``hub.model_card``)
    retrieval.png,      a retrieval sheet and the GSP weight maps of a few evaluation queries,
    gsp_weights.png     shown in the card (when the evaluation data was given)

so that, after ``import timm_gsp``, plain timm rebuilds the identical model::

    model = timm.create_model("hf-hub:user/repo", pretrained=True)      # or "local-dir:/path"

This module writes (``save_pretrained``), checks (``verify_folder``, ``published_files``) and loads
(``read_state_dict``, ``load_state_dict``, ``build_published``) such folders. Moving them to and from
the Hub is ``hub.transfer``; which model a source names (``hf-hub:``, a folder, a training checkpoint
or run) is ``hub.model_sources``.
"""
from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Tuple, Union

import torch
import torch.nn as nn

import timm

from ..errors import CheckpointMismatchError, ConfigError, OutputExistsError
from ..models.model_config import RetrievalModelConfig, describe_model, evaluation_data_config, timm_model_args
from ..timm_plugin import LOCAL_DIR_PREFIX, LOCAL_DIR_SINCE, save_for_hf, timm_version
from ..train.run_results import RunResults, read_results, write_json_atomic
from ..utils import PathLike, eval_mode, give_plain_file_mode, read_json_object
from .model_card import model_card

__all__ = [
    "CARD_NAME",
    "CONFIG_NAME",
    "PUBLISHED_FILES",
    "WEIGHTS_NAME",
    "build_published",
    "check_output_folder",
    "load_state_dict",
    "published_files",
    "read_published_config",
    "read_state_dict",
    "save_pretrained",
    "verify_folder",
]

WEIGHTS_NAME = "model.safetensors"
CONFIG_NAME = "config.json"
CARD_NAME = "README.md"
PUBLISHED_FILES = (WEIGHTS_NAME, CONFIG_NAME, CARD_NAME)
# timm reads "local-dir:<folder>" from LOCAL_DIR_SINCE on; older releases are given the config by hand.
_TIMM_HAS_LOCAL_DIR = timm_version() >= LOCAL_DIR_SINCE


def _example_files() -> Tuple[str, ...]:
    from ..retrieval.evaluate import SHEET_FILES  # on first use: evaluate loads torchmetrics

    return tuple(SHEET_FILES.values())


# --- saving -------------------------------------------------------------------------------------

def check_output_folder(folder: PathLike) -> None:
    """Refuse a path that is a file, or a folder holding anything but a published model."""
    folder = Path(folder)
    if folder.exists() and not folder.is_dir():
        raise OutputExistsError(f"{folder} exists and is not a folder: choose a folder to write the model into")
    allowed = set(PUBLISHED_FILES) | set(_example_files())
    extra = sorted(p.name for p in folder.iterdir() if p.name not in allowed) if folder.exists() else []
    if extra:
        # The folder is what an upload sends: stray files would make it differ from the upload.
        raise OutputExistsError(f"{folder} holds files that are not part of a published model: {extra}; use an empty folder")


def published_files(folder: PathLike) -> List[str]:
    """The files of a published model folder that an upload sends (``ConfigError`` if it is not one)."""
    folder = Path(folder)
    if not folder.is_dir():
        raise ConfigError(f"no such model folder: {folder}")
    missing = [name for name in PUBLISHED_FILES if not (folder / name).is_file()]
    if missing:
        raise ConfigError(f"{folder} is not a model folder to publish: missing {missing} (write it with "
                          "`timm-gsp export` / save_pretrained)")
    return [*PUBLISHED_FILES, *(name for name in _example_files() if (folder / name).is_file())]


def _as_results(results: Union[None, PathLike, Mapping[str, Any], RunResults]) -> Optional[RunResults]:
    if results is None or isinstance(results, RunResults):
        return results
    if isinstance(results, Mapping):
        return RunResults.from_dict(results)
    return read_results(results)


def _as_splits(eval_dataset: Any) -> Dict[str, Any]:
    return dict(eval_dataset) if isinstance(eval_dataset, Mapping) else {"test": eval_dataset}


def save_pretrained(
        model: nn.Module,
        folder: PathLike,
        results: Union[None, PathLike, Mapping[str, Any], RunResults] = None,
        *,
        model_config: Optional[RetrievalModelConfig] = None,
        data_config: Optional[Mapping[str, Any]] = None,
        repo_id: Optional[str] = None,
        dataset: Optional[str] = None,
        split: Optional[str] = None,
        license: str = "apache-2.0",
        verify: bool = True,
        eval_dataset: Any = None,
        batch_size: int = 32,
        num_workers: int = 0,
) -> Path:
    """Write ``model.safetensors``, ``config.json`` and ``README.md`` (and, with ``eval_dataset``,
    the two example pictures) for the Hub or ``local-dir:``.

    Built on ``timm.models.save_for_hf`` with safetensors only and ``model_args`` given explicitly
    (``models.model_config.timm_model_args``), so every supported timm writes the same config. Only
    ``model.state_dict()`` is saved: loss parameters and optimizer state never enter the weights.

    Args:
        model: a GSP retrieval model (``timm_gsp.create_model`` / ``RetrievalModelConfig.build``).
        folder: created if missing; may hold only a previously published model (replaced).
        results: the run's ``RunResults`` (or its ``results.json``, or its dict).
        model_config: the model's description; default ``results.model``, else ``describe_model``.
        data_config: evaluation preprocessing, merged into the description's (``DATA_CONFIG_KEYS``).
        repo_id, dataset, split, license: for the model card.
        verify: rebuild the model from the written folder, as a user's ``local-dir:`` load does,
            load the weights strictly and compare its embeddings with ``model``'s.
        eval_dataset: the evaluation data (``ds[i] -> (model input, label)``, or
            ``{"query": q, "gallery": g}``): the pictures are made from it.
        batch_size, num_workers: for embedding ``eval_dataset``.

    Returns:
        the folder.
    """
    folder = Path(folder)
    check_output_folder(folder)
    if any(isinstance(p, nn.UninitializedParameter) for p in model.parameters()):
        raise ConfigError("the model has unsized (lazy) GSP prototypes: run one forward before saving")
    results = _as_results(results)
    config = model_config or (results.model if results is not None else None) or describe_model(model)
    config = dataclasses.replace(config, data_config=evaluation_data_config(model, config, **dict(data_config or {})))
    model_args = timm_model_args(model, config)
    # timm refuses the '' pool it reads from a GSP token model's head; config.timm_config writes the pool string
    timm_checked = {k: v for k, v in model_args.items() if k != "global_pool"}
    save_for_hf(model, str(folder), model_args=timm_checked, safe_serialization=True)
    give_plain_file_mode(folder / WEIGHTS_NAME)  # safetensors writes it private
    write_json_atomic(folder / CONFIG_NAME, config.timm_config(read_json_object(folder / CONFIG_NAME), model_args))
    for name in _example_files():
        (folder / name).unlink(missing_ok=True)
    sheets = {}
    if eval_dataset is not None:
        sheets = {kind: path.name for kind, path in _write_eval_sheets(folder, model, _as_splits(eval_dataset), config,
                                                                      batch_size, num_workers).items()}
    card = model_card(model, config, results, repo_id=repo_id, dataset=dataset, split=split, license=license, sheets=sheets)
    card.save(folder / CARD_NAME)
    if verify:
        verify_folder(folder, model)
    return folder


def _write_eval_sheets(folder: Path, model: nn.Module, splits: Dict[str, Any], config: RetrievalModelConfig,
                       batch_size: int, num_workers: int) -> Dict[str, Path]:
    from ..retrieval.evaluate import embed_splits, write_sheets

    embedded = embed_splits(model, splits, batch_size=batch_size, num_workers=num_workers, progress=False)
    return write_sheets(folder, model, splits, embedded, mean=config.data_config["mean"], std=config.data_config["std"])


# --- loading ------------------------------------------------------------------------------------

def read_published_config(folder: PathLike) -> RetrievalModelConfig:
    """The description of a published folder (its ``config.json``), with its published preprocessing."""
    path = Path(folder) / CONFIG_NAME
    return RetrievalModelConfig.from_timm_config(read_json_object(path), str(path))


def read_state_dict(checkpoint: PathLike) -> Dict[str, torch.Tensor]:
    """The state dict of a safetensors file, or of ``model.safetensors`` in a folder (no pickle).

    Raises:
        ConfigError: the file is missing or not a ``.safetensors`` file.
        CheckpointMismatchError: it cannot be read (corrupt, truncated); the message names it.
    """
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    path = Path(checkpoint)
    if path.is_dir():
        path = path / WEIGHTS_NAME
    if path.suffix != ".safetensors":
        raise ConfigError(f"{path}: only safetensors checkpoints are loaded (pickle files can execute code)")
    if not path.is_file():
        raise ConfigError(f"weights not found: {path}")
    try:
        return load_file(str(path), device="cpu")
    except (SafetensorError, OSError, ValueError) as error:
        raise CheckpointMismatchError(f"{path}: unreadable weights (corrupt or truncated safetensors file: {error})") from error


def _describe_shape(key: str, shape: Tuple[int, ...]) -> str:
    if key.endswith("prototypes") and len(shape) == 2:
        return f"{tuple(shape)} ({shape[0]} prototypes of {shape[1]} channels)"
    return str(tuple(shape))


def _short(keys: List[str]) -> str:
    return str(keys if len(keys) <= 8 else keys[:8] + [f"... {len(keys) - 8} more"])


def load_state_dict(model: nn.Module, state_dict: Mapping[str, torch.Tensor], source: str = "checkpoint") -> None:
    """Strictly load ``state_dict`` into ``model``, or raise ``CheckpointMismatchError`` (one line)
    naming every tensor whose shape differs (checkpoint and model shapes), missing or unexpected."""
    expected = model.state_dict()
    mismatched = [f"{key}: {_describe_shape(key, tuple(state_dict[key].shape))} in {source}, "
                  f"{_describe_shape(key, tuple(value.shape))} in the model"
                  for key, value in expected.items()
                  if key in state_dict and tuple(state_dict[key].shape) != tuple(value.shape)]
    missing = [key for key in expected if key not in state_dict]
    unexpected = [key for key in state_dict if key not in expected]
    problems = mismatched + ([f"missing from {source}: {_short(missing)}"] if missing else []) + (
        [f"not in the model: {_short(unexpected)}"] if unexpected else [])
    if problems:
        raise CheckpointMismatchError(f"{source} does not fit {type(model).__name__} (check num_prototypes / embed_dim / "
                                      f"the architecture): " + "; ".join(problems))
    model.load_state_dict(state_dict, strict=True)


def build_published(folder: PathLike) -> nn.Module:
    """The architecture a published folder's config.json describes, as timm builds it for a
    user (``local-dir:``), without weights."""
    folder = Path(folder)
    config = read_json_object(folder / CONFIG_NAME)
    if not isinstance(config.get("architecture"), str):
        raise ConfigError(f"{folder / CONFIG_NAME} is not a timm model config: it names no 'architecture'")
    try:
        if _TIMM_HAS_LOCAL_DIR:
            return timm.create_model(f"{LOCAL_DIR_PREFIX}{folder}", pretrained=False)
        return timm.create_model(config["architecture"], pretrained=False, pretrained_cfg=config.get("pretrained_cfg"),
                                 **config.get("model_args", {}))
    except (TypeError, ValueError, KeyError, RuntimeError) as error:
        if isinstance(error, CheckpointMismatchError):
            raise
        raise ConfigError(f"{folder / CONFIG_NAME} does not build a model: {type(error).__name__}: {error}") from error


@torch.no_grad()
def verify_folder(folder: PathLike, model: Optional[nn.Module] = None) -> nn.Module:
    """Rebuild the model from a published folder as a user's ``local-dir:`` load does and load every
    tensor strictly (missing prototypes fail too); with ``model``, also check that the rebuilt model
    embeds a random batch as ``model`` does (a description that builds another pool or input size
    fails here). Returns the rebuilt model."""
    folder = Path(folder)
    rebuilt = build_published(folder)
    load_state_dict(rebuilt, read_state_dict(folder / WEIGHTS_NAME), source=str(folder / WEIGHTS_NAME))
    if model is not None:
        reference = next(model.parameters())
        rebuilt = rebuilt.to(reference.device, reference.dtype)
        size = tuple(rebuilt.pretrained_cfg["input_size"])
        images = torch.randn(2, *size, generator=torch.Generator().manual_seed(0)).to(reference.device, reference.dtype)
        with eval_mode(model), eval_mode(rebuilt):
            expected, got = model(images), rebuilt(images)
        if got.shape != expected.shape or not torch.allclose(got, expected, rtol=1e-4, atol=1e-5):
            difference = (got - expected).abs().max().item() if got.shape == expected.shape else f"shape {tuple(got.shape)}"
            raise CheckpointMismatchError(
                f"{folder}: the written config.json rebuilds a model whose embeddings differ from the saved model's "
                f"({difference} vs {tuple(expected.shape)}): pass model_config=RetrievalModelConfig(...) describing the "
                "model (its pool and construction arguments such as img_size)")
    return rebuilt.eval()
