"""Train / eval transforms, in timm's own vocabulary (public timm API only).

* The *data config* (``input_size``, ``interpolation``, ``mean``, ``std``, ``crop_pct``,
  ``crop_mode``) describes evaluation preprocessing: what a published model tells its users.
  It starts from the model's ``pretrained_cfg``; its keys and ``resolve_input_config`` live with the
  model description (``timm_gsp.model_config``).
* :class:`Augmentation` holds the training augmentation with the names and meanings of timm's
  ``train.py`` flags (``--scale``, ``--ratio``, ``--hflip``, ``--vflip``, ``--color-jitter``,
  ``--aa``, ``--reprob``); timm's ``create_transform`` builds both pipelines.

Retrieval benchmarks differ from ImageNet: timm's default ``RandomResizedCrop(scale=(0.08, 1))``
can crop a small object out of the picture, so every recipe states its augmentation.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from typing import Any, Callable, Dict, Mapping, Optional, Tuple, Union

import torch.nn as nn
from timm.data import create_transform

from ..models.model_config import resolve_input_config

__all__ = ["Augmentation", "build_eval_transform", "build_train_transform", "build_transforms", "resolve_input_config"]


@dataclass(frozen=True)
class Augmentation:
    """Training augmentation; field names follow ``timm.data.create_transform``, defaults timm's ``train.py``.

    Attributes:
        scale: RandomResizedCrop area range (``--scale``).
        ratio: RandomResizedCrop aspect-ratio range (``--ratio``).
        hflip, vflip: flip probabilities (``--hflip``, ``--vflip``).
        color_jitter: jitter strength (``--color-jitter``); 0 or None: none.
        auto_augment: a timm policy string such as ``rand-m9-mstd0.5`` (``--aa``); None: none.
        re_prob: random-erasing probability (``--reprob``).
    """

    scale: Tuple[float, float] = (0.08, 1.0)
    ratio: Tuple[float, float] = (3 / 4, 4 / 3)
    hflip: float = 0.5
    vflip: float = 0.0
    color_jitter: Optional[float] = 0.4
    auto_augment: Optional[str] = None
    re_prob: float = 0.0

    def __post_init__(self) -> None:
        for name in ("scale", "ratio"):
            value = tuple(float(v) for v in getattr(self, name))
            if len(value) != 2 or not 0 < value[0] <= value[1]:
                raise ValueError(f"augmentation {name} must be two numbers 0 < low <= high, got {getattr(self, name)}")
            object.__setattr__(self, name, value)
        if self.scale[1] > 1:
            raise ValueError(f"augmentation scale is a share of the image area, at most 1; got {self.scale}")
        for name in ("hflip", "vflip", "re_prob"):
            if not 0.0 <= float(getattr(self, name)) <= 1.0:
                raise ValueError(f"augmentation {name} is a probability in [0, 1], got {getattr(self, name)}")
        if self.color_jitter is not None and float(self.color_jitter) < 0:
            raise ValueError(f"augmentation color_jitter must be >= 0, got {self.color_jitter}")

    @classmethod
    def from_dict(cls, values: Mapping[str, Any]) -> "Augmentation":
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in values.items() if k in known})

    def to_dict(self) -> Dict[str, Any]:
        return asdict(self)


def build_eval_transform(data_config: Mapping[str, Any]) -> Callable:
    """``PIL.Image -> FloatTensor (3, H, W)``: resize to ``size / crop_pct``, centre crop, normalise."""
    return create_transform(is_training=False, **resolve_input_config(data_config))


def build_train_transform(data_config: Mapping[str, Any], augmentation: Augmentation = Augmentation()) -> Callable:
    """``PIL.Image -> FloatTensor (3, H, W)``: timm's train pipeline (RandomResizedCrop, flips, colour
    jitter or an AutoAugment policy, random erasing) at the data config's size, mean, std and interpolation."""
    config = resolve_input_config(data_config)
    config.pop("crop_pct", None)  # train crops are random; crop_pct / crop_mode are evaluation settings
    config.pop("crop_mode", None)
    aug = augmentation
    return create_transform(
        is_training=True, **config, scale=aug.scale, ratio=aug.ratio, hflip=aug.hflip, vflip=aug.vflip,
        color_jitter=aug.color_jitter or None, auto_augment=aug.auto_augment or None, re_prob=aug.re_prob,
    )


def build_transforms(model_or_data_config: Union[nn.Module, Mapping[str, Any]], is_training: bool, *,
                     input_size: Optional[Union[int, Tuple[int, ...]]] = None,
                     augmentation: Optional[Augmentation] = None, **overrides: Any) -> Callable:
    """The train or eval transform of a model (or data config), with ``input_size`` and data-config
    ``overrides`` (``crop_pct``, ``interpolation``, ...) applied; ``augmentation`` for training."""
    config = resolve_input_config(model_or_data_config, input_size, **overrides)
    if is_training:
        return build_train_transform(config, augmentation or Augmentation())
    return build_eval_transform(config)
