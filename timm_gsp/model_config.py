"""``RetrievalModelConfig``: the one description of a trained retrieval model.

Everything needed to rebuild a model and to feed it images, owned by the library and written in one
format wherever a model travels: training checkpoints, ``results.json``, the exported
``config.json`` (under ``"timm_gsp"``) and embedding indexes. Tools read it, never a training
script's argument names.

    config = RetrievalModelConfig("resnet50", embed_dim=512, pool="gsp", data_config={...})
    model = config.build()                       # timm_gsp.create_model(...) with these arguments
    RetrievalModelConfig.from_dict(config.to_dict()) == config
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field, fields
from typing import Any, Dict, Mapping, Optional, Tuple

import torch.nn as nn

from .errors import ConfigError
from .spec import parse_gsp_spec

__all__ = ["RetrievalModelConfig", "MODEL_CONFIG_FORMAT"]

MODEL_CONFIG_FORMAT = "timm-gsp/retrieval-model/1"


@dataclass(frozen=True)
class RetrievalModelConfig:
    """A retrieval model: timm backbone + pool + embedding layer, and its evaluation preprocessing.

    Attributes:
        model_name: the timm architecture (``resnet50``, ``vit_small_patch16_224``, ...).
        embed_dim: size of the embedding layer (0: the pooled features themselves).
        pool: the canonical pool string: ``gsp:num_prototypes=..,transport_ratio=..,gamma=..`` or a
            baseline pool (``avg``, ``max``); ``"gsp"`` alone means GSP with the default settings.
        model_kwargs: other ``timm.create_model`` arguments that shape the model (``img_size``,
            ``output_stride``, ``drop_path_rate``, ...); JSON values.
        data_config: evaluation preprocessing in timm's vocabulary (``input_size``, ``interpolation``,
            ``mean``, ``std``, ``crop_pct``, ``crop_mode``).
    """

    model_name: str
    embed_dim: int = 512
    pool: str = "gsp"
    model_kwargs: Mapping[str, Any] = field(default_factory=dict)
    data_config: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        from .factory import pool_spec  # factory builds models; this module only describes them

        if not isinstance(self.model_name, str) or not self.model_name:
            raise ConfigError(f"model_name must be a timm model name, got {self.model_name!r}")
        if isinstance(self.embed_dim, bool) or not isinstance(self.embed_dim, int) or self.embed_dim < 0:
            raise ConfigError(f"embed_dim must be an integer >= 0, got {self.embed_dim!r}")
        try:
            object.__setattr__(self, "pool", pool_spec(self.pool))
        except ValueError as error:
            raise ConfigError(f"pool: {error}") from None
        for name in ("model_kwargs", "data_config"):
            value = getattr(self, name)
            if not isinstance(value, Mapping):
                raise ConfigError(f"{name} must be a mapping, got {type(value).__name__}")
            try:  # JSON round trip: the form it is stored in, with tuples as lists
                object.__setattr__(self, name, json.loads(json.dumps(dict(value))))
            except (TypeError, ValueError) as error:
                raise ConfigError(f"{name} must hold JSON values: {error}") from None
        for key in ("pretrained", "num_classes", "global_pool"):
            if key in self.model_kwargs:
                raise ConfigError(f"model_kwargs must not set {key!r}: it is a field of the description or chosen at build time")

    @property
    def gsp(self) -> Optional[Dict[str, Any]]:
        """``{"num_prototypes", "transport_ratio", "gamma"}`` of a GSP model, else None."""
        return parse_gsp_spec(self.pool)

    @property
    def input_size(self) -> Optional[Tuple[int, int, int]]:
        """(C, H, W) of the evaluation preprocessing, if recorded."""
        size = self.data_config.get("input_size")
        return tuple(int(s) for s in size) if size else None

    def build(self, pretrained: bool = False) -> nn.Module:
        """The model (``timm_gsp.create_model``), freshly initialised or with the backbone's pretrained weights."""
        from .factory import create_model

        return create_model(self.model_name, pretrained=pretrained, embed_dim=self.embed_dim, pool=self.pool,
                            **dict(self.model_kwargs))

    def to_dict(self) -> Dict[str, Any]:
        return {"format": MODEL_CONFIG_FORMAT, **{f.name: getattr(self, f.name) for f in fields(self)}}

    @classmethod
    def from_dict(cls, values: Mapping[str, Any], source: str = "model config") -> "RetrievalModelConfig":
        """Read what ``to_dict`` wrote; ``source`` names the file in error messages."""
        if not isinstance(values, Mapping):
            raise ConfigError(f"{source}: expected a JSON object describing a timm-gsp model, got {type(values).__name__}")
        if values.get("format", MODEL_CONFIG_FORMAT) != MODEL_CONFIG_FORMAT:
            raise ConfigError(f"{source}: unknown format {values.get('format')!r} (this timm-gsp reads {MODEL_CONFIG_FORMAT})")
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(values) - known - {"format"})
        if unknown or "model_name" not in values:
            raise ConfigError(f"{source}: not a timm-gsp model description "
                              f"({'unknown keys ' + str(unknown) if unknown else 'no model_name'})")
        try:
            return cls(**{k: v for k, v in values.items() if k in known})
        except ConfigError as error:
            raise ConfigError(f"{source}: {error}") from None
