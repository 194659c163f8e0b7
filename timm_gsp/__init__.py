"""timm-gsp: Generalized Sum Pooling (Gurbuz et al., ICCV 2023) as a first-class timm global pool.

``import timm_gsp`` registers ``global_pool="gsp"`` (or ``"gsp:num_prototypes=..,transport_ratio=..,
gamma=.."``) with timm; the call is idempotent. It also registers ``plain_cnn6`` (:mod:`.plain_cnn`), the
small full-resolution CNN that the from-scratch training recipe uses, so a saved one reloads through
plain ``timm.create_model``.

The core (the layer, its solver, the timm seam, the factory and its baseline pools, the loss, the
model description) loads with the package; the metric and the tools (``model_sources``, ``hub``,
``model_card``, ``cli``, ``export``, ``viz``, ``search``, ``evaluate``, ``checkpoint``, ``data``) load
when first used.
"""
from __future__ import annotations

import importlib
from typing import Any

from .errors import (CheckpointMismatchError, ConfigError, CorruptImageError, DatasetLayoutError,
                     GSPUnsupportedModelError, HubUnavailableError, OutputExistsError, TimmGSPError)
from .pooling import GeneralizedSumPool, GSPTransport, capture_transport, gsp_modules
from .spec import GSP_DEFAULTS, format_gsp_spec, parse_gsp_spec
from .timm_plugin import register
from .transport import TransportPlan, gsp_transport, prototype_costs

register()

from .factory import GSPRetrievalNet, convert, create_model, init_prototypes_kcenter  # noqa: E402 (needs the hooks)
from .losses import GSPMetricLoss, ZeroShotLoss  # noqa: E402
from .model_config import RetrievalModelConfig  # noqa: E402
from . import plain_cnn  # noqa: E402,F401 (registers the plain_cnn* models with timm)

__version__ = "0.2.0"

# name -> module: loaded on first access (torchmetrics and the Hub client cost a second to import).
_LAZY = {
    "RetrievalMetrics": "metrics",
    "retrieval_metrics": "metrics",
    "save_pretrained": "hub",
    "push_to_hub": "hub",
    "find_model": "model_sources",
    "load_model": "model_sources",
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        value = getattr(importlib.import_module(f".{_LAZY[name]}", __name__), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__():
    return sorted(set(globals()) | set(_LAZY))


__all__ = [
    "CheckpointMismatchError",
    "ConfigError",
    "CorruptImageError",
    "DatasetLayoutError",
    "GSP_DEFAULTS",
    "GSPMetricLoss",
    "GSPRetrievalNet",
    "GSPTransport",
    "GSPUnsupportedModelError",
    "GeneralizedSumPool",
    "HubUnavailableError",
    "OutputExistsError",
    "RetrievalMetrics",
    "RetrievalModelConfig",
    "TimmGSPError",
    "TransportPlan",
    "ZeroShotLoss",
    "capture_transport",
    "convert",
    "create_model",
    "find_model",
    "format_gsp_spec",
    "gsp_modules",
    "gsp_transport",
    "init_prototypes_kcenter",
    "load_model",
    "parse_gsp_spec",
    "prototype_costs",
    "push_to_hub",
    "register",
    "retrieval_metrics",
    "save_pretrained",
]
