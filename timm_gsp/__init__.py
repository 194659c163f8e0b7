"""timm-gsp: Generalized Sum Pooling (Gurbuz et al., ICCV 2023) as a first-class timm global pool.

``import timm_gsp`` registers ``global_pool="gsp"`` with timm (idempotent).
"""
from .pooling import GeneralizedSumPool, GSPTransport, allow_missing_prototypes, capture_transport, gsp_modules
from .spec import format_gsp_spec, parse_gsp_spec
from .timm_plugin import GSPUnsupportedModelError, register
from .transport import TransportPlan, gsp_transport, prototype_costs

register()

__version__ = "0.1.0"
