"""The ``global_pool`` string that selects GSP in timm, e.g. ``"gsp"`` or
``"gsp:num_prototypes=128,transport_ratio=0.3,gamma=5"``, and the one home of GSP's defaults.

Putting the hyper-parameters in the pool string lets them travel wherever timm passes
``global_pool`` (constructors, ``reset_classifier``, the ``model_args`` of a saved
``config.json``), so a saved model reloads with the identical layer.
"""
from __future__ import annotations

import math
import numbers
from typing import Any, Dict, Optional

__all__ = ["GSP_DEFAULTS", "check_gsp_args", "format_gsp_spec", "is_gsp_spec", "parse_gsp_spec"]

# The defaults of the reference release for small datasets (CUB, Cars): K = 64 prototypes, transport
# ratio mu = 0.3, entropy weight gamma = 5 on the [0, 2] cost scale. Every other module reads them here.
GSP_DEFAULTS: Dict[str, Any] = {"num_prototypes": 64, "transport_ratio": 0.3, "gamma": 5.0}
_TYPES = {"num_prototypes": int, "transport_ratio": float, "gamma": float}


def check_gsp_args(num_prototypes: Any = GSP_DEFAULTS["num_prototypes"],
                   transport_ratio: Any = GSP_DEFAULTS["transport_ratio"],
                   gamma: Any = GSP_DEFAULTS["gamma"]) -> None:
    """Raise ``ValueError`` naming the first GSP hyper-parameter that is out of range or of the wrong type."""
    if isinstance(num_prototypes, bool) or not isinstance(num_prototypes, numbers.Integral) or num_prototypes < 1:
        raise ValueError(f"num_prototypes must be an integer >= 1, got {num_prototypes!r}")
    if isinstance(transport_ratio, bool) or not isinstance(transport_ratio, numbers.Real) \
            or not 0.0 < float(transport_ratio) <= 1.0:
        raise ValueError(f"transport_ratio must be a number in (0, 1], got {transport_ratio!r}")
    if isinstance(gamma, bool) or not isinstance(gamma, numbers.Real) or not (float(gamma) > 0 and math.isfinite(gamma)):
        raise ValueError(f"gamma must be a finite number > 0, got {gamma!r}")


def is_gsp_spec(pool_type: Any) -> bool:
    """True for ``"gsp"`` and ``"gsp:..."`` (any case)."""
    if not isinstance(pool_type, str):
        return False
    head = pool_type.strip().lower()
    return head == "gsp" or head.startswith("gsp:")


def _parse_value(key: str, text: str, spec: str) -> Any:
    try:
        return _TYPES[key](text)  # int("2.7") fails: a prototype count is never rounded silently
    except ValueError:
        kind = "an integer" if _TYPES[key] is int else "a number"
        raise ValueError(f"GSP option {key} in {spec!r} must be {kind}, got {text!r}") from None


def parse_gsp_spec(pool_type: str) -> Optional[Dict[str, Any]]:
    """GSP hyper-parameters of a pool string (defaults filled in), or ``None`` if it is not GSP.

    Raises:
        ValueError: unknown or repeated key, malformed item, or a value out of range.
    """
    if not is_gsp_spec(pool_type):
        return None
    params = dict(GSP_DEFAULTS)
    seen = set()
    _, _, body = pool_type.strip().partition(":")
    for item in filter(None, (part.strip() for part in body.split(","))):
        key, sep, value = item.partition("=")
        key = key.strip().lower()
        if not sep or key not in _TYPES:
            raise ValueError(
                f"bad GSP pool option {item!r} in {pool_type!r}: expected key=value with key in {sorted(_TYPES)}"
            )
        if key in seen:
            raise ValueError(f"GSP option {key} is given twice in {pool_type!r}")
        seen.add(key)
        params[key] = _parse_value(key, value.strip(), pool_type)
    check_gsp_args(**params)
    return params


def format_gsp_spec(
        num_prototypes: int = GSP_DEFAULTS["num_prototypes"],
        transport_ratio: float = GSP_DEFAULTS["transport_ratio"],
        gamma: float = GSP_DEFAULTS["gamma"],
) -> str:
    """The canonical pool string for these hyper-parameters (round-trips through ``parse_gsp_spec``)."""
    check_gsp_args(num_prototypes, transport_ratio, gamma)
    return f"gsp:num_prototypes={int(num_prototypes)},transport_ratio={float(transport_ratio)!r},gamma={float(gamma)!r}"
