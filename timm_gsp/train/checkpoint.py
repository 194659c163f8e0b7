"""Training checkpoints in safetensors, written atomically, resumable exactly.

A checkpoint is a folder::

    model.safetensors            the model's state dict (what ``timm-gsp export`` publishes)
    model_config.json            the model's RetrievalModelConfig (optional): what rebuilds it
    training_state.safetensors   every other tensor: loss parameters (proxies, ZSR class
                                 embeddings), optimizer state, RNG states
    training_state.json          the rest: epoch, step, optimizer param groups, scheduler and
                                 sampler state, Python / NumPy RNG state, the run's config

No pickle is read back. Saving writes a temporary sibling ``.<name>.tmp-<random>`` and swaps it in
with two renames: ``<name>`` -> ``.<name>.old``, then the temporary folder -> ``<name>``. Whenever
``<name>`` is missing, ``.<name>.old`` is the previous complete checkpoint (a save was killed
between the two renames), so after a kill at any point ``load_checkpoint`` finds the previous or the
new checkpoint. Leftovers of an interrupted save are removed by the next save, never by a load (a
load may run while a save is writing). One process saves into a folder at a time.
"""
from __future__ import annotations

import json
import os
import random
import shutil
import uuid
import warnings
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Tuple

import numpy as np
import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from ..errors import CheckpointMismatchError, ConfigError
from ..models.model_config import RetrievalModelConfig
from ..utils import PathLike, fsync_path, give_plain_file_mode, output_write_error, read_json_object

__all__ = [
    "MODEL_CONFIG_FILE", "MODEL_FILE", "load_checkpoint", "read_model_config", "restore_rng_state", "rng_state",
    "save_checkpoint",
]

MODEL_FILE = "model.safetensors"
MODEL_CONFIG_FILE = "model_config.json"
STATE_FILE = "training_state.safetensors"
META_FILE = "training_state.json"
REQUIRED_FILES = (MODEL_FILE, STATE_FILE, META_FILE)


def _flatten(prefix: str, value: Any, tensors: Dict[str, torch.Tensor]) -> Any:
    """Move the tensors of a nested dict/list into ``tensors``; return the JSON-able rest."""
    if isinstance(value, torch.Tensor):
        key = prefix
        tensors[key] = value.detach().cpu().contiguous()
        return {"__tensor__": key}
    if isinstance(value, dict):
        return {"__dict__": [[_flatten(f"{prefix}.k{i}", k, tensors), _flatten(f"{prefix}.{i}", v, tensors)]
                             for i, (k, v) in enumerate(value.items())]}
    if isinstance(value, (list, tuple)):
        items = [_flatten(f"{prefix}.{i}", v, tensors) for i, v in enumerate(value)]
        return {"__tuple__": items} if isinstance(value, tuple) else items
    if isinstance(value, np.ndarray):
        return {"__ndarray__": value.tolist(), "dtype": str(value.dtype)}
    if isinstance(value, (np.integer, np.floating)):
        return value.item()
    return value


def _unflatten(value: Any, tensors: Dict[str, torch.Tensor]) -> Any:
    if isinstance(value, dict):
        if "__tensor__" in value:
            return tensors[value["__tensor__"]]
        if "__dict__" in value:
            return {_unflatten(k, tensors): _unflatten(v, tensors) for k, v in value["__dict__"]}
        if "__tuple__" in value:
            return tuple(_unflatten(v, tensors) for v in value["__tuple__"])
        if "__ndarray__" in value:
            return np.asarray(value["__ndarray__"], dtype=value["dtype"])
        return {k: _unflatten(v, tensors) for k, v in value.items()}
    if isinstance(value, list):
        return [_unflatten(v, tensors) for v in value]
    return value


def rng_state() -> Dict[str, Any]:
    """Python, NumPy, torch CPU (and CUDA) generator states."""
    state = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng_state(state: Dict[str, Any]) -> None:
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    np.random.set_state(tuple(state["numpy"]))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def save_checkpoint(folder: PathLike, model_state: Dict[str, torch.Tensor], training_state: Dict[str, Any],
                    model_config: Optional[RetrievalModelConfig] = None) -> Path:
    """Write a checkpoint folder, replacing an existing one, so that a kill at any point leaves the
    previous or the new checkpoint readable by :func:`load_checkpoint`; return its path.

    Args:
        folder: the checkpoint folder (e.g. ``<run>/checkpoint``); parent folders are created.
        model_state: the model's ``state_dict()``.
        training_state: nested dicts / lists / tuples of tensors, NumPy arrays and JSON values.
        model_config: the model's description, written as ``model_config.json`` (see
            :func:`read_model_config`).

    Raises:
        OutputWriteError: a file could not be written (no space left on the device, no permission, ...);
            the message names the folder and the cause. The previous checkpoint stays, and what the
            failed save wrote is removed.
    """
    if model_config is not None and not isinstance(model_config, RetrievalModelConfig):
        raise TypeError(f"model_config must be a RetrievalModelConfig, got {type(model_config).__name__}")
    folder = Path(folder)
    try:
        return _save(folder, model_state, training_state, model_config)
    except (OSError, SafetensorError) as error:  # a full disk: the one-line error, the previous checkpoint kept
        converted = output_write_error(folder, error)
        if converted is error:
            raise
        raise converted from error


def _save(folder: Path, model_state: Dict[str, torch.Tensor], training_state: Dict[str, Any],
          model_config: Optional[RetrievalModelConfig]) -> Path:
    folder.parent.mkdir(parents=True, exist_ok=True)
    _remove_leftovers(folder)
    old = _old_sibling(folder)
    tmp = folder.with_name(f"{_temp_prefix(folder)}{uuid.uuid4().hex[:8]}")
    tmp.mkdir()  # permissions from the umask, like any folder (tempfile.mkdtemp would make it private)
    try:
        _write_files(tmp, model_state, training_state, model_config)
        if folder.exists():
            os.replace(folder, old)  # from here until the next rename, .old is the checkpoint
        os.replace(tmp, folder)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    fsync_path(folder.parent)  # the renames themselves survive a power cut
    shutil.rmtree(old, ignore_errors=True)
    return folder


def load_checkpoint(folder: PathLike, map_location: Optional[str] = "cpu") -> Tuple[Dict[str, torch.Tensor], Dict[str, Any]]:
    """Read a checkpoint folder: (model state dict, training state), tensors on ``map_location``.

    If ``folder`` is missing because a save was killed between its two renames, the previous
    checkpoint (``.<name>.old``) is read, with a ``RuntimeWarning``.

    Raises:
        CheckpointMismatchError: ``folder`` does not exist or is not a complete checkpoint (the
            message names it and the missing files), or one of its files cannot be read.
    """
    source = _locate(Path(folder))
    if not source.is_dir():
        raise CheckpointMismatchError(f"no training checkpoint at {source}: no such folder")
    missing = _missing_files(source)
    if missing:
        raise CheckpointMismatchError(f"{source} is not a timm-gsp training checkpoint: missing {', '.join(missing)}")
    device = str(map_location or "cpu")
    model_state = _read(source / MODEL_FILE, lambda path: load_file(path, device=device))
    tensors = _read(source / STATE_FILE, lambda path: load_file(path, device=device))
    meta = _read(source / META_FILE, lambda path: json.loads(Path(path).read_text(encoding="utf-8")))
    try:
        return model_state, _unflatten(meta, tensors)
    except KeyError as error:
        raise CheckpointMismatchError(f"{source / META_FILE} names tensor {error} that {STATE_FILE} lacks") from None


def read_model_config(folder: PathLike) -> RetrievalModelConfig:
    """The :class:`RetrievalModelConfig` a checkpoint was saved with (``model_config.json``).

    Raises:
        ConfigError: no such folder, no ``model_config.json`` in it (not a checkpoint, or saved
            without ``model_config``), or the file does not describe a model; the message names it.
    """
    source = _locate(Path(folder))
    path = source / MODEL_CONFIG_FILE
    if not source.is_dir():
        raise ConfigError(f"no training checkpoint at {source}: no such folder")
    if not path.is_file():
        raise ConfigError(f"{source} has no {MODEL_CONFIG_FILE}: not a timm-gsp training checkpoint, "
                          f"or one saved without model_config")
    return RetrievalModelConfig.from_dict(read_json_object(path), source=str(path))


def _old_sibling(folder: Path) -> Path:
    return folder.with_name(f".{folder.name}.old")


def _temp_prefix(folder: Path) -> str:
    return f".{folder.name}.tmp-"


def _missing_files(folder: Path) -> List[str]:
    return [name for name in REQUIRED_FILES if not (folder / name).is_file()]


def _locate(folder: Path) -> Path:
    """``folder``, or its ``.old`` sibling when a save was killed between its two renames."""
    old = _old_sibling(folder)
    if folder.exists() or _missing_files(old):
        return folder
    warnings.warn(f"{folder} is missing (a save was interrupted while replacing it); reading the previous "
                  f"checkpoint {old}, which the next save replaces", RuntimeWarning, stacklevel=3)
    return old


def _remove_leftovers(folder: Path) -> None:
    """Delete what interrupted saves left beside ``folder``: temporary folders (never complete
    checkpoints: a save puts its folder in place before it returns), and ``.old`` once ``folder``
    exists (while ``folder`` is missing, ``.old`` is the last complete checkpoint and stays)."""
    prefix = _temp_prefix(folder)
    for path in folder.parent.iterdir():
        if path.name.startswith(prefix):
            shutil.rmtree(path, ignore_errors=True)
    if folder.exists():
        shutil.rmtree(_old_sibling(folder), ignore_errors=True)


def _write_files(tmp: Path, model_state: Dict[str, torch.Tensor], training_state: Dict[str, Any],
                 model_config: Optional[RetrievalModelConfig]) -> None:
    save_file({k: v.detach().cpu().contiguous() for k, v in model_state.items()}, str(tmp / MODEL_FILE))
    tensors: Dict[str, torch.Tensor] = {}
    meta = _flatten("state", training_state, tensors)
    save_file(tensors, str(tmp / STATE_FILE))
    if model_config is not None:
        (tmp / MODEL_CONFIG_FILE).write_text(json.dumps(model_config.to_dict(), indent=2) + "\n", encoding="utf-8")
    # json.dump, not write_json_atomic: a history may hold NaN losses, which that refuses
    (tmp / META_FILE).write_text(json.dumps(meta), encoding="utf-8")
    for path in tmp.iterdir():
        give_plain_file_mode(path)
        fsync_path(path)
    fsync_path(tmp)


def _read(path: Path, read: Callable[[str], Any]) -> Any:
    try:
        return read(str(path))
    except (OSError, SafetensorError, ValueError) as error:
        raise CheckpointMismatchError(f"cannot read {path}: {error}") from None
