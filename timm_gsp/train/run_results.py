"""``results.json``: what a training (or evaluation) run measured, in one format owned by the library.

Written by ``examples/train.py`` and ``timm-gsp eval --output``; read by ``timm-gsp export`` and the
model card. It names the model by its ``RetrievalModelConfig`` (never by a script's argument names);
``recipe`` is the run's full set of settings, kept for people (the card prints it as a table).

    {"format": "timm-gsp/results/1", "model": {...}, "metrics": {"precision_at_1": 0.31, ...},
     "dataset": "folder", "dataset_root": "/abs/path", "eval_split": "test", "checkpoint": "checkpoint-best", "best_epoch": 12,
     "epochs": 20, "recipe": {...}, "world_size": 1, "wall_time_s": 93.1, "timm_gsp_version": "0.2.0",
     "learning_check": {"not_learning": false, "first_epoch_loss": 0.61, ...},
     "pretrained_weights": {"file": "resnet50_a1.safetensors", "sha256": "1a2b3c..."}}

``learning_check`` (training runs of two or more epochs): whether the run learnt, with the numbers
``examples/train.py`` judged it on; null when it was not judged.

``pretrained_weights``: the checkpoint file the backbone started from (``--pretrained-path``), by its
name and the sha256 of its content (``pretrained_weights_record``), never by the machine's path; null
for timm's own weights or none. Files written before the field existed load with null.

Metrics that could not be computed (no query with a same-class gallery item) are ``null``, never NaN:
JSON has no NaN.
"""
from __future__ import annotations

import json
import math
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Dict, Mapping, Optional

from ..errors import ConfigError
from ..models.model_config import RetrievalModelConfig
from ..utils import PathLike, file_sha256, read_json_object, write_file_atomic

__all__ = ["RESULTS_FORMAT", "RunResults", "pretrained_weights_record", "read_results", "write_json_atomic"]

RESULTS_FORMAT = "timm-gsp/results/1"


@dataclass
class RunResults:
    """The content of ``results.json`` (see the module docstring)."""

    model: Optional[RetrievalModelConfig] = None
    metrics: Dict[str, Optional[float]] = field(default_factory=dict)
    dataset: Optional[str] = None
    dataset_root: Optional[str] = None
    eval_split: Optional[str] = None
    checkpoint: Optional[str] = None
    best_epoch: Optional[int] = None
    epochs: Optional[int] = None
    recipe: Dict[str, Any] = field(default_factory=dict)
    world_size: int = 1
    wall_time_s: Optional[float] = None
    timm_gsp_version: Optional[str] = None
    learning_check: Optional[Dict[str, Any]] = None
    pretrained_weights: Optional[Dict[str, str]] = None

    def __post_init__(self) -> None:
        metrics = {}
        for key, value in dict(self.metrics or {}).items():
            if value is None:
                metrics[key] = None
                continue
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                raise ConfigError(f"metric {key!r} must be a number or null, got {value!r}")
            metrics[key] = float(value) if math.isfinite(value) else None
        self.metrics = metrics

    @property
    def finite_metrics(self) -> Dict[str, float]:
        return {k: v for k, v in self.metrics.items() if v is not None}

    def to_dict(self) -> Dict[str, Any]:
        out: Dict[str, Any] = {"format": RESULTS_FORMAT}
        for f in fields(self):
            value = getattr(self, f.name)
            out[f.name] = value.to_dict() if isinstance(value, RetrievalModelConfig) else value
        return out

    def write(self, path: PathLike) -> Path:
        """Write atomically (a reader never sees half a file)."""
        return write_json_atomic(path, self.to_dict())

    @classmethod
    def from_dict(cls, values: Mapping[str, Any], source: str = "results") -> "RunResults":
        if not isinstance(values, Mapping) or values.get("format") != RESULTS_FORMAT:
            found = values.get("format") if isinstance(values, Mapping) else type(values).__name__
            raise ConfigError(f"{source} is not a timm-gsp results file (format {found!r}, expected {RESULTS_FORMAT!r})")
        known = {f.name for f in fields(cls)}
        kwargs = {k: v for k, v in values.items() if k in known}
        if kwargs.get("model") is not None:
            kwargs["model"] = RetrievalModelConfig.from_dict(kwargs["model"], f"{source} (model)")
        return cls(**kwargs)


def pretrained_weights_record(path: PathLike) -> Dict[str, str]:
    """``{"file": name, "sha256": hex digest}`` of a pretrained-weights file: which weights a run
    started from, checkable with ``sha256sum`` on any machine, whatever the file is called there."""
    return {"file": Path(path).name, "sha256": file_sha256(path)}


def read_results(path: PathLike) -> RunResults:
    """Read a ``results.json``; a missing, unreadable or foreign file is a ``ConfigError`` naming it."""
    return RunResults.from_dict(read_json_object(path), str(path))


def write_json_atomic(path: PathLike, value: Any) -> Path:
    """JSON (NaN refused) written atomically (``utils.write_file_atomic``)."""
    text = json.dumps(value, indent=2, allow_nan=False) + "\n"
    return write_file_atomic(path, lambda tmp: tmp.write_text(text, encoding="utf-8"))
