"""timm-gsp: Generalized Sum Pooling (Gurbuz et al., ICCV 2023) as a first-class timm global pool.

``import timm_gsp`` registers ``global_pool="gsp"`` (or ``"gsp:num_prototypes=..,transport_ratio=..,
gamma=.."``) with timm; the call is idempotent. It also registers ``plain_cnn6`` (:mod:`.models.plain_cnn`),
the small full-resolution CNN that the from-scratch training recipe uses, and ``gsp_retrieval``
(:mod:`.models.factory`), so saved ones reload through plain ``timm.create_model``.

The package is laid out as timm is. The core loads with the package: ``errors``, ``utils``,
``timm_plugin`` (the one module that touches timm's private internals), ``layers/`` (the pool string,
the transport solver, the GSP layer, the baseline pools), ``models/`` (the factory, ``plain_cnn6``,
the model description) and ``loss/`` (ZSR); ``metrics/`` loads on first use (torchmetrics is slow to
import). Above the core sit ``data/`` and the tools, loaded when used and never imported by the core:
``train/``, ``retrieval/`` (evaluation, search, pictures), ``hub/``, ``cli/`` and ``deploy``
(``torch.export`` / ONNX). ``tests/test_imports.py`` keeps these floors.
"""
from __future__ import annotations

import importlib
from typing import Any

from .errors import (CheckpointMismatchError, ConfigError, CorruptImageError, DatasetLayoutError,
                     GSPUnsupportedModelError, HubUnavailableError, OutputExistsError, TimmGSPError)
from .layers.gsp_pool import GeneralizedSumPool, GSPTransport, capture_transport, gsp_modules
from .layers.pool_spec import GSP_DEFAULTS, format_gsp_spec, parse_gsp_spec
from .layers.transport import TransportPlan, gsp_transport, prototype_costs
from .timm_plugin import register

register()

from .loss.zsr import GSPMetricLoss, ZeroShotLoss  # noqa: E402
from .models import plain_cnn  # noqa: E402,F401 (registers the plain_cnn* models with timm)
from .models.factory import GSPRetrievalNet, convert, create_model, init_prototypes_kcenter  # noqa: E402 (needs the hooks)
from .models.model_config import RetrievalModelConfig  # noqa: E402

__version__ = "0.2.0"

# name -> module: loaded on first access (torchmetrics and the Hub client cost a second to import).
_LAZY = {
    "RetrievalMetrics": "metrics.retrieval",
    "retrieval_metrics": "metrics.retrieval",
    "save_pretrained": "hub.published",
    "push_to_hub": "hub.transfer",
    "find_model": "hub.model_sources",
    "load_model": "hub.model_sources",
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
