"""``results.json``: what a training (or evaluation) run measured, in one format owned by the library.

Written by ``examples/train.py`` and ``timm-gsp eval --output``; read by ``timm-gsp export`` and the
model card. It names the model by its ``RetrievalModelConfig`` and the training by its
``TrainingSetup`` (``setup``), both the library's own types, never by a script's argument names.

    {"format": "timm-gsp/results/1", "model": {...}, "metrics": {"precision_at_1": 0.31, ...},
     "dataset": "folder", "dataset_root": "/abs/path", "eval_split": "test", "checkpoint": "checkpoint-best", "best_epoch": 12,
     "epochs": 20, "recipe": {...}, "world_size": 1, "wall_time_s": 93.1, "timm_gsp_version": "0.2.0",
     "learning_check": {"not_learning": false, "first_epoch_loss": 0.61, ...},
     "pretrained_weights": {"file": "resnet50_a1.safetensors", "sha256": "1a2b3c..."},
     "setup": {"recipe": "folder", "dataset": "folder", "model": "resnet50", "pool": "gsp:...", "loss": "multisimilarity",
               "zsr_weight": 0.0, "optimizer": "adamw", "learning_rates": {"backbone": 1e-05, "head": 0.0001, ...}, ...}}

``setup`` (``TrainingSetup``): how the model was trained (data, model and pool, loss, optimiser and learning
rate per parameter group, schedule, batches, augmentation and evaluation transform, seed, epochs,
processes); null for an evaluation. ``recipe``: the flags of the script that trained (``examples/train.py``'s
argument names and values), kept for people and for re-running it; the library reads none of them, except
in a record written before ``setup`` existed, which it reads into a ``TrainingSetup`` (``RunResults``
does, from the flags that ``examples/train.py`` of timm-gsp 0.2.0 recorded).

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

__all__ = ["RESULTS_FORMAT", "RunResults", "TrainingSetup", "pretrained_weights_record", "read_results",
           "write_json_atomic"]

RESULTS_FORMAT = "timm-gsp/results/1"


@dataclass
class TrainingSetup:
    """How a model was trained, in the library's terms: ``results.json``'s ``setup``, what the model card
    shows as the training recipe. Every field may be None: not recorded (a record read from the flags
    of an older run, or made by hand, holds what they said).

    Attributes:
        recipe: the recipe the settings started from (a name, or a YAML file).
        dataset: the dataset's name (``data.build_dataset``'s).
        train_fraction: the share of an image folder's classes trained on (None: the dataset's rule).
        val_fraction: the share of the training classes held out to select the best epoch (0: none).
        model: the backbone's timm name.
        pretrained: whether the backbone started from pretrained weights (``RunResults.pretrained_weights``
            names the file when they came from one).
        pool: the global pool, as timm's ``global_pool`` string (``gsp:num_prototypes=64,...``, ``avg``, ...).
        embed_dim: the embedding layer's size; 0: none (the pooled features are the embedding).
        prototype_init: how GSP's prototypes started (random, kcenter, kcenter-pooled); None without GSP.
        prototype_warmup_epochs: epochs trained with random prototypes before a kcenter-pooled init.
        freeze_bn: the BatchNorm layers kept as the pretrained backbone left them.
        loss: the metric loss (a pytorch-metric-learning loss).
        zsr_weight: the weight of GSP's zero-shot regulariser in the loss (0: none).
        optimizer: the optimiser (adamw, adam).
        learning_rates: the peak learning rate of each parameter group (backbone, head, prototypes, loss).
        weight_decay: the optimiser's weight decay.
        clip_grad: the gradient-norm clip (None: none).
        schedule: the learning rate after the warm-up, stepped per update: cosine (to 0), or none (constant).
        warmup_epochs: epochs of linear warm-up from 0.
        batch_size: images per batch, per process.
        m_per_class: the batches' composition: m images of each of batch_size / m classes; 0: random images.
        augmentation: the training augmentation (``data.Augmentation``'s fields).
        eval_transform: the evaluation preprocessing, a data config (input_size, interpolation, crop_pct,
            crop_mode, mean, std): what the metrics were measured with.
        amp: the autocast dtype of the forward passes (bfloat16, float16), or none (float32).
        seed: the random seed.
        epochs: the training length in epochs.
        world_size: the processes that trained together (DDP).
    """

    recipe: Optional[str] = None
    dataset: Optional[str] = None
    train_fraction: Optional[float] = None
    val_fraction: Optional[float] = None
    model: Optional[str] = None
    pretrained: Optional[bool] = None
    pool: Optional[str] = None
    embed_dim: Optional[int] = None
    prototype_init: Optional[str] = None
    prototype_warmup_epochs: Optional[int] = None
    freeze_bn: Optional[bool] = None
    loss: Optional[str] = None
    zsr_weight: Optional[float] = None
    optimizer: Optional[str] = None
    learning_rates: Dict[str, float] = field(default_factory=dict)
    weight_decay: Optional[float] = None
    clip_grad: Optional[float] = None
    schedule: Optional[str] = None
    warmup_epochs: Optional[float] = None
    batch_size: Optional[int] = None
    m_per_class: Optional[int] = None
    augmentation: Optional[Dict[str, Any]] = None
    eval_transform: Optional[Dict[str, Any]] = None
    amp: Optional[str] = None
    seed: Optional[int] = None
    epochs: Optional[int] = None
    world_size: Optional[int] = None

    def __post_init__(self) -> None:
        for name in ("learning_rates", "augmentation", "eval_transform"):  # as JSON holds them: lists, not tuples
            value = getattr(self, name)
            if value is not None:
                setattr(self, name, json.loads(json.dumps(dict(value))))

    def to_dict(self) -> Dict[str, Any]:
        return {f.name: getattr(self, f.name) for f in fields(self)}

    @classmethod
    def from_dict(cls, values: Mapping[str, Any], source: str = "setup") -> "TrainingSetup":
        if not isinstance(values, Mapping):
            raise ConfigError(f"{source} must be a JSON object, got {type(values).__name__}")
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in values.items() if k in known})  # keys of a newer release are skipped


# How examples/train.py of timm-gsp 0.2.0 named the settings it recorded as ``recipe`` (its flags): read
# into a TrainingSetup for records written before ``setup`` existed. Frozen: later flags never land here.
_V1_FLAGS = {name: name for name in ("recipe", "dataset", "train_fraction", "val_fraction", "model", "embed_dim",
                                     "prototype_init", "prototype_warmup_epochs", "loss", "zsr_weight", "weight_decay",
                                     "clip_grad", "warmup_epochs", "batch_size", "m_per_class", "seed", "epochs")}
_V1_FLAGS.update(opt="optimizer", sched="schedule")
_V1_LEARNING_RATES = {"backbone": "backbone_lr", "head": "lr", "prototypes": "prototype_lr", "loss": "loss_lr"}
_V1_AUGMENTATION = {"scale": "scale", "ratio": "ratio", "hflip": "hflip", "vflip": "vflip",
                    "color_jitter": "color_jitter", "auto_augment": "aa", "re_prob": "reprob"}
_V1_AMP = {"bf16": "bfloat16", "fp16": "float16", "none": "none"}  # "auto" depended on the machine: not recorded


def _setup_from_v1_flags(flags: Mapping[str, Any], results: "RunResults") -> TrainingSetup:
    """The ``TrainingSetup`` of a record written before ``setup`` existed, from its ``recipe`` flags and
    what the record itself says (the model's pool and evaluation transform, the processes)."""
    values: Dict[str, Any] = {name: flags[flag] for flag, name in _V1_FLAGS.items() if flag in flags}
    values["learning_rates"] = {group: flags[flag] for group, flag in _V1_LEARNING_RATES.items()
                                if flags.get(flag) is not None}
    if any(flag in flags for flag in _V1_AUGMENTATION.values()):
        values["augmentation"] = {name: flags.get(flag) for name, flag in _V1_AUGMENTATION.items()}
    if "amp" in flags:
        values["amp"] = _V1_AMP.get(flags["amp"])
    if any(key in flags for key in ("pretrained", "pretrained_path")) or results.pretrained_weights:
        values["pretrained"] = bool(flags.get("pretrained") or flags.get("pretrained_path") or results.pretrained_weights)
    if "freeze_bn" in flags:  # (moot, and so off, on a backbone from scratch)
        values["freeze_bn"] = bool(flags["freeze_bn"] and values.get("pretrained"))
    values.setdefault("epochs", results.epochs)
    values["world_size"] = results.world_size
    model = results.model
    values["pool"] = model.pool if model is not None else flags.get("pool")
    if model is not None:
        values["eval_transform"] = dict(model.data_config)
        if model.gsp is None:  # the GSP-only settings did nothing
            values.update(zsr_weight=0.0, prototype_init=None, prototype_warmup_epochs=None)
    return TrainingSetup(**values)


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
    setup: Optional[TrainingSetup] = None

    def __post_init__(self) -> None:
        if isinstance(self.setup, Mapping):
            self.setup = TrainingSetup.from_dict(self.setup)
        elif self.setup is None and self.recipe:  # a record written before ``setup`` existed: its flags
            self.setup = _setup_from_v1_flags(self.recipe, self)
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
            out[f.name] = value.to_dict() if isinstance(value, (RetrievalModelConfig, TrainingSetup)) else value
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
        if kwargs.get("setup") is not None:
            kwargs["setup"] = TrainingSetup.from_dict(kwargs["setup"], f"{source} (setup)")
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
