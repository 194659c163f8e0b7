"""Training checkpoints in safetensors, written atomically, resumable exactly.

A checkpoint is a folder::

    model.safetensors            the model's state dict (what ``timm-gsp export`` publishes)
    training_state.safetensors   every other tensor: loss parameters (proxies, ZSR class
                                 embeddings), optimizer state, RNG states
    training_state.json          the rest: epoch, step, optimizer param groups, scheduler and
                                 sampler state, Python / NumPy RNG state, the run's config

It is written into a temporary sibling folder and renamed into place, so a crash leaves either
the previous checkpoint or the new one, never half of one. No pickle is read back.
"""
from __future__ import annotations

import json
import os
import random
import shutil
import tempfile
from pathlib import Path
from typing import Any, Dict, Optional, Tuple, Union

import numpy as np
import torch
from safetensors.torch import load_file, save_file

__all__ = ["save_checkpoint", "load_checkpoint", "rng_state", "restore_rng_state", "MODEL_FILE"]

MODEL_FILE = "model.safetensors"
STATE_FILE = "training_state.safetensors"
META_FILE = "training_state.json"
PathLike = Union[str, os.PathLike]


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


def save_checkpoint(folder: PathLike, model_state: Dict[str, torch.Tensor], training_state: Dict[str, Any]) -> Path:
    """Write a checkpoint folder atomically (replacing an existing one) and return its path."""
    folder = Path(folder)
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{folder.name}.", dir=folder.parent))
    try:
        save_file({k: v.detach().cpu().contiguous() for k, v in model_state.items()}, str(tmp / MODEL_FILE))
        tensors: Dict[str, torch.Tensor] = {}
        meta = _flatten("state", training_state, tensors)
        save_file(tensors, str(tmp / STATE_FILE))
        with open(tmp / META_FILE, "w") as f:
            json.dump(meta, f)
        for path in tmp.iterdir():
            with open(path, "rb") as f:
                os.fsync(f.fileno())
        if folder.exists():
            old = folder.with_name(f".{folder.name}.old")
            shutil.rmtree(old, ignore_errors=True)
            os.replace(folder, old)
            os.replace(tmp, folder)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, folder)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return folder


def load_checkpoint(folder: PathLike, map_location: Optional[str] = "cpu") -> Tuple[Dict[str, torch.Tensor], Dict[str, Any]]:
    """Read a checkpoint folder: (model state dict, training state)."""
    folder = Path(folder)
    missing = [name for name in (MODEL_FILE, STATE_FILE, META_FILE) if not (folder / name).is_file()]
    if missing:
        raise FileNotFoundError(f"{folder} is not a timm-gsp training checkpoint: missing {', '.join(missing)}")
    device = map_location or "cpu"
    model_state = load_file(str(folder / MODEL_FILE), device=device)
    tensors = load_file(str(folder / STATE_FILE), device=device)
    with open(folder / META_FILE) as f:
        meta = json.load(f)
    return model_state, _unflatten(meta, tensors)
