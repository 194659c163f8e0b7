"""``RetrievalModelConfig``: the one description of a trained retrieval model, and its one home.

Everything needed to rebuild a model and to feed it images, owned by the library and written in one
format wherever a model travels: training checkpoints (``model_config.json``), ``results.json``, the
published ``config.json`` (under ``"timm_gsp"``, with timm's own ``model_args`` and ``pretrained_cfg``
derived from it here) and embedding indexes. Tools read and write it through this module, never
through a training script's argument names. A new field is added here: the dataclass, its check
in ``__post_init__`` and, if timm must see it, ``timm_model_args`` / ``timm_config``.

    config = RetrievalModelConfig("resnet50", embed_dim=512, pool="gsp", data_config={...})
    model = config.build()                       # timm_gsp.create_model(...) with these arguments
    RetrievalModelConfig.from_dict(config.to_dict()) == config

The evaluation preprocessing is timm's *data config* (``DATA_CONFIG_KEYS``); ``resolve_input_config``
completes one from a model or a partial dict, ``parse_input_size`` reads every spelling of a size.
"""
from __future__ import annotations

import dataclasses
import json
import numbers
from dataclasses import dataclass, field, fields
from typing import Any, Dict, Mapping, Optional, Tuple, Union

import torch.nn as nn

from ..errors import ConfigError
from ..layers.pool_spec import parse_gsp_spec, pool_spec
from ..utils import PathLike

__all__ = [
    "DATA_CONFIG_KEYS",
    "MODEL_CONFIG_FORMAT",
    "TIMM_CONFIG_KEY",
    "RetrievalModelConfig",
    "describe_model",
    "evaluation_data_config",
    "parse_input_size",
    "resolve_input_config",
    "timm_model_args",
]

MODEL_CONFIG_FORMAT = "timm-gsp/retrieval-model/1"
# The key of a published config.json under which the description is written (timm ignores it).
TIMM_CONFIG_KEY = "timm_gsp"
# The evaluation preprocessing, in timm's data-config vocabulary (``timm.data.resolve_data_config``).
DATA_CONFIG_KEYS = ("input_size", "interpolation", "mean", "std", "crop_pct", "crop_mode")
# Test-time settings of a source checkpoint's pretrained_cfg that no longer apply to a retrained model.
_STALE_PRETRAINED_KEYS = ("test_input_size", "test_crop_pct", "test_pool_size")

InputSize = Union[int, Tuple[int, ...], list]


def parse_input_size(size: Any, channels: int = 3) -> Tuple[int, int, int]:
    """``(C, H, W)`` of an image size written as an int (square), ``(H, W)`` (``channels`` added) or ``(C, H, W)``.

    Raises:
        ConfigError: anything else, or a size below 1.
    """
    error = ConfigError(f"input_size must be an int, (H, W) or (C, H, W), got {size!r}")
    if isinstance(size, bool):
        raise error
    if isinstance(size, numbers.Integral):
        dims: Tuple[int, ...] = (channels, int(size), int(size))
    else:
        try:
            dims = tuple(int(s) for s in size)
        except (TypeError, ValueError):
            raise error from None
        if len(dims) == 2:
            dims = (channels, *dims)
    if len(dims) != 3 or min(dims) < 1:
        raise error
    return dims  # type: ignore[return-value]


def resolve_input_config(model_or_data_config: Union[nn.Module, Mapping[str, Any]],
                         input_size: Optional[InputSize] = None,
                         **overrides: Any) -> Dict[str, Any]:
    """The evaluation data config (``DATA_CONFIG_KEYS``: ``input_size (C, H, W)``, ``interpolation``,
    ``mean``, ``std``, ``crop_pct``, ``crop_mode``) of a timm model, or completed from a partial dict.

    ``input_size`` and the other ``overrides`` (``crop_pct``, ``interpolation``, ...) win when not None.
    """
    from timm.data import resolve_data_config

    if isinstance(model_or_data_config, nn.Module):
        cfg = resolve_data_config(model=model_or_data_config)
    else:
        # resolve_data_config fills whatever the dict leaves out with timm's defaults.
        given = {k: v for k, v in dict(model_or_data_config).items() if v is not None}
        cfg = resolve_data_config(args={}, pretrained_cfg=given)
    if input_size is not None:
        cfg["input_size"] = parse_input_size(input_size)
    cfg.update({k: v for k, v in overrides.items() if k in DATA_CONFIG_KEYS and v not in (None, "")})
    return {k: cfg[k] for k in DATA_CONFIG_KEYS if k in cfg}


@dataclass(frozen=True)
class RetrievalModelConfig:
    """A retrieval model: timm backbone + pool + embedding layer, and its evaluation preprocessing.

    Attributes:
        model_name: the timm architecture (``resnet50``, ``vit_small_patch16_224``, ...).
        embed_dim: size of the embedding layer (0: none, the pooled features are the embedding).
        pool: the canonical pool string (``layers.pool_spec.pool_spec``): ``gsp:num_prototypes=..,transport_ratio=..,
            gamma=..`` or a baseline pool (``layers.pool_spec.BASELINE_POOLS``); ``"gsp"`` alone means GSP with the
            default settings.
        model_kwargs: other ``timm.create_model`` arguments that shape the model (``img_size``,
            ``output_stride``, ``drop_path_rate``, ...); JSON values.
        data_config: evaluation preprocessing in timm's vocabulary (``DATA_CONFIG_KEYS``).
    """

    model_name: str
    embed_dim: int = 512
    pool: str = "gsp"
    model_kwargs: Mapping[str, Any] = field(default_factory=dict)
    data_config: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
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
        """The GSP hyper-parameters (``layers.pool_spec.GSP_DEFAULTS`` keys) of a GSP model, else None."""
        return parse_gsp_spec(self.pool)

    @property
    def input_size(self) -> Optional[Tuple[int, int, int]]:
        """(C, H, W) of the evaluation preprocessing, if recorded."""
        size = self.data_config.get("input_size")
        return parse_input_size(size) if size else None

    def build(self, pretrained: bool = False, pretrained_path: Optional[PathLike] = None) -> nn.Module:
        """The model (``timm_gsp.create_model``), freshly initialised or with the backbone's pretrained
        weights: timm's, or those of the checkpoint file ``pretrained_path`` (which implies ``pretrained``).
        The file is an input of this build, never a field: a description travels to other machines
        (``config.json`` on the Hub), where the path means nothing."""
        from .factory import create_model

        return create_model(self.model_name, pretrained=pretrained, embed_dim=self.embed_dim, pool=self.pool,
                            pretrained_path=pretrained_path, **dict(self.model_kwargs))

    # --- the stored forms: model_config.json / results.json / config.json["timm_gsp"] ---------------

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

    # --- timm's config.json (a published folder) --------------------------------------------------

    def timm_config(self, saved: Mapping[str, Any], model_args: Mapping[str, Any]) -> Dict[str, Any]:
        """timm's ``config.json`` as ``save_for_hf`` wrote it (``saved``), completed from this
        description, the same for every timm >= 1.0.15:

        * ``model_args`` / ``global_pool``: ``model_args`` (``timm_model_args``) with the pool string.
          timm reads a model's current pool from its head, which a GSP token model leaves empty (GSP
          sits after the final norm), so timm would record ``''`` there;
        * ``pretrained_cfg``: the evaluation preprocessing (``save_for_hf`` takes a data config only
          from timm 1.0.20 on); test-time sizes of the source checkpoint no longer apply;
        * ``"timm_gsp"``: the description itself, read back by ``from_timm_config``.
        """
        written = json.loads(json.dumps(dict(saved)))
        written["model_args"] = {**written.get("model_args", {}), **model_args}
        written["global_pool"] = model_args["global_pool"]
        pretrained_cfg = written.setdefault("pretrained_cfg", {})
        for key in _STALE_PRETRAINED_KEYS:
            pretrained_cfg.pop(key, None)
        pretrained_cfg.update(self.data_config)
        written[TIMM_CONFIG_KEY] = self.to_dict()
        return written

    @classmethod
    def from_timm_config(cls, config: Mapping[str, Any], source: str = "config.json") -> "RetrievalModelConfig":
        """The description in a published ``config.json`` (under ``"timm_gsp"``; derived from timm's keys
        for a folder published without it), ``data_config`` from its ``pretrained_cfg`` (what timm serves)."""
        pretrained_cfg = config.get("pretrained_cfg") or {}
        data_config = {k: pretrained_cfg[k] for k in DATA_CONFIG_KEYS if pretrained_cfg.get(k) is not None}
        stored = config.get(TIMM_CONFIG_KEY)
        if isinstance(stored, Mapping) and "model_name" in stored:
            return dataclasses.replace(cls.from_dict(stored, f"{source} ({TIMM_CONFIG_KEY})"), data_config=data_config)
        args = dict(config.get("model_args") or {})
        if not isinstance(config.get("architecture"), str):
            raise ConfigError(f"{source} is not a timm model config: it names no 'architecture'")
        try:
            if config["architecture"] == "gsp_retrieval":
                return cls(args["backbone"], args.get("num_classes", 512), args.get("global_pool", "gsp"),
                           args.get("backbone_args", {}), data_config)
            embed_dim = args.pop("num_classes", config.get("num_classes"))
            pool = args.pop("global_pool", config.get("global_pool", "avg"))
            if args.get("in_chans") == 3:  # timm records the default too
                del args["in_chans"]
            return cls(config["architecture"], embed_dim, pool, args, data_config)
        except (KeyError, ConfigError) as error:
            raise ConfigError(f"{source} does not describe a timm-gsp retrieval model: {error}") from None


# --- a description and the model it describes -------------------------------------------------------

def describe_model(model: nn.Module) -> RetrievalModelConfig:
    """The description of a retrieval model made without one at hand: architecture, embedding
    size and pool as the model holds them. Construction arguments it cannot show (a ViT's
    ``img_size``, ``output_stride``, ...) are not in it: pass the description to ``hub.published.save_pretrained``
    for such models (its ``verify`` step catches a description that does not rebuild the model)."""
    from ..layers.gsp_pool import gsp_modules
    from .factory import GSPRetrievalNet

    if isinstance(model, GSPRetrievalNet):
        return RetrievalModelConfig(model.backbone_name, model.num_classes, model.global_pool, model.backbone_args)
    pools = gsp_modules(model)
    if pools:
        spec = pools[-1][1].spec
    else:
        spec = getattr(getattr(model, "global_pool", None), "pool_type", getattr(model, "global_pool", "avg"))
    return RetrievalModelConfig(model.pretrained_cfg["architecture"], int(model.num_classes), spec)


def timm_model_args(model: nn.Module, config: RetrievalModelConfig) -> Dict[str, Any]:
    """``model_args`` that make ``timm.create_model(architecture, **model_args)`` rebuild ``model``:
    the wrapper's own ``reconstruction_args()``, else the description's embedding size (as
    ``num_classes``), pool string (as ``global_pool``) and ``model_kwargs``."""
    from .factory import GSPRetrievalNet

    if isinstance(model, GSPRetrievalNet):
        return model.reconstruction_args()
    return {**config.model_kwargs, "num_classes": config.embed_dim, "global_pool": config.pool}


def evaluation_data_config(model: nn.Module, config: Optional[RetrievalModelConfig] = None,
                           **overrides: Any) -> Dict[str, Any]:
    """The complete evaluation preprocessing (``DATA_CONFIG_KEYS``) of a model: ``overrides`` (not
    None; ``input_size`` in any ``parse_input_size`` form) merged into the description's
    ``data_config``, merged into the model's ``pretrained_cfg`` at the input size the description
    builds it for.

    Raises:
        ConfigError: a key that is not an evaluation setting, or an unreadable input size.
    """
    from ..timm_plugin import model_input_size

    base = resolve_input_config(model)
    kwargs = config.model_kwargs if config is not None else {}
    if kwargs.get("img_size") is not None or kwargs.get("in_chans") is not None:
        base["input_size"] = model_input_size(model, kwargs.get("img_size"), kwargs.get("in_chans"))
    given = {**(config.data_config if config is not None else {}), **{k: v for k, v in overrides.items() if v is not None}}
    unknown = sorted(set(given) - set(DATA_CONFIG_KEYS))
    if unknown:
        raise ConfigError(f"data config keys {unknown} are not evaluation settings; expected {list(DATA_CONFIG_KEYS)}")
    if "input_size" in given:
        given["input_size"] = parse_input_size(given["input_size"], channels=base["input_size"][0])
    merged = resolve_input_config({**base, **given})
    return json.loads(json.dumps({k: merged[k] for k in DATA_CONFIG_KEYS if k in merged}))
