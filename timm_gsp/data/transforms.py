"""Train / eval transforms from a timm model's data config (public timm API only).

Mean/std/interpolation come from the model's ``pretrained_cfg`` via
``timm.data.resolve_data_config``; ``timm.data.create_transform`` builds the pipeline. For the
64-px collage, pass ``input_size`` and the :data:`COLLAGE_TRANSFORM_OVERRIDES` (see there why).
"""
from __future__ import annotations

from typing import Any, Callable, Dict, Mapping, Optional, Tuple, Union

import torch.nn as nn
from timm.data import create_transform, resolve_data_config

__all__ = ["COLLAGE_TRANSFORM_OVERRIDES", "build_transforms", "resolve_input_config"]

# The collage's object tile must survive augmentation, and its box must stay valid at eval:
# * train: mild scale jitter only (timm's default RandomResizedCrop scale=(0.08, 1) would often
#   crop the object tile away, creating label noise) and no colour jitter (class colour is part
#   of the class identity and already jittered per image by the generator);
# * eval: crop_pct=1.0, a pure resize, so object_boxes scale by input_size / image_size.
COLLAGE_TRANSFORM_OVERRIDES: Dict[str, Dict[str, Any]] = {
    "train": {"scale": (0.8, 1.0), "ratio": (0.9, 1.1), "hflip": 0.5, "color_jitter": None},
    "eval": {"crop_pct": 1.0},
}

_CONFIG_KEYS = ("input_size", "interpolation", "mean", "std", "crop_pct", "crop_mode")


def _as_input_size(size: Union[int, Tuple[int, ...]]) -> Tuple[int, int, int]:
    if isinstance(size, int):
        return (3, size, size)
    size = tuple(int(s) for s in size)
    if len(size) == 2:
        return (3,) + size  # type: ignore[return-value]
    if len(size) == 3:
        return size  # type: ignore[return-value]
    raise ValueError(f"input_size must be an int, (H, W) or (C, H, W), got {size}")


def resolve_input_config(model_or_data_config: Union[nn.Module, Mapping[str, Any]],
                         input_size: Optional[Union[int, Tuple[int, ...]]] = None) -> Dict[str, Any]:
    """The data config (``input_size (C, H, W)``, ``interpolation``, ``mean``, ``std``, ``crop_pct``,
    ``crop_mode``) of a timm model, or completed from a partial dict, with ``input_size`` overridden."""
    if isinstance(model_or_data_config, nn.Module):
        cfg = resolve_data_config(model=model_or_data_config)
    else:
        # resolve_data_config fills whatever the dict leaves out with timm's defaults.
        given = {k: v for k, v in dict(model_or_data_config).items() if v is not None}
        cfg = resolve_data_config(args={}, pretrained_cfg=given)
    if input_size is not None:
        cfg["input_size"] = _as_input_size(input_size)
    return {k: cfg[k] for k in _CONFIG_KEYS if k in cfg}


def build_transforms(model_or_data_config: Union[nn.Module, Mapping[str, Any]], is_training: bool, *,
                     input_size: Optional[Union[int, Tuple[int, ...]]] = None,
                     **overrides: Any) -> Callable:
    """A ``PIL.Image -> FloatTensor (3, H, W)`` (normalised) transform.

    Args:
        model_or_data_config: a timm model (its ``pretrained_cfg`` gives mean/std/interpolation/
            crop_pct) or a data-config dict.
        is_training: timm's train pipeline (RandomResizedCrop, flip, colour jitter) or eval
            (resize to ``size / crop_pct`` then centre crop).
        input_size: override, e.g. ``64`` for the collage.
        overrides: passed to ``timm.data.create_transform`` and win over the config, e.g.
            ``scale=(0.8, 1.0)``, ``color_jitter=None``, ``auto_augment=...``, ``crop_pct=1.0``;
            ``**COLLAGE_TRANSFORM_OVERRIDES["train" or "eval"]`` for the collage.
    """
    cfg = resolve_input_config(model_or_data_config, input_size)
    kwargs: Dict[str, Any] = dict(cfg)
    if is_training:
        kwargs.pop("crop_pct", None)  # train crops are random; crop_pct/crop_mode are eval settings
        kwargs.pop("crop_mode", None)
    kwargs.update(overrides)
    return create_transform(is_training=is_training, **kwargs)
