"""timm-gsp: Generalized Sum Pooling (Gurbuz et al., ICCV 2023) as a first-class timm global pool.

``import timm_gsp`` registers ``global_pool="gsp"`` (or ``"gsp:num_prototypes=..,transport_ratio=..,
gamma=.."``) with timm; the call is idempotent.
"""
from .pooling import GeneralizedSumPool, GSPTransport, allow_missing_prototypes, capture_transport, gsp_modules
from .spec import format_gsp_spec, parse_gsp_spec
from .timm_plugin import GSPUnsupportedModelError, register
from .transport import TransportPlan, gsp_transport, prototype_costs

register()

from .factory import GSPRetrievalNet, convert, create_model, init_prototypes_kcenter  # noqa: E402 (needs the hooks)
from .hub import push_to_hub, save_pretrained  # noqa: E402
from .losses import GSPMetricLoss, ZeroShotLoss  # noqa: E402
from .metrics import RetrievalMetrics  # noqa: E402

__version__ = "0.1.0"

__all__ = [
    "GeneralizedSumPool",
    "GSPTransport",
    "GSPMetricLoss",
    "GSPRetrievalNet",
    "GSPUnsupportedModelError",
    "RetrievalMetrics",
    "TransportPlan",
    "ZeroShotLoss",
    "allow_missing_prototypes",
    "capture_transport",
    "convert",
    "create_model",
    "format_gsp_spec",
    "gsp_modules",
    "gsp_transport",
    "init_prototypes_kcenter",
    "parse_gsp_spec",
    "prototype_costs",
    "push_to_hub",
    "register",
    "save_pretrained",
]
