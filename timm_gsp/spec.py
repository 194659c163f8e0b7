"""The ``global_pool`` string that selects GSP in timm, e.g. ``"gsp"`` or
``"gsp:num_prototypes=128,transport_ratio=0.3,gamma=5"``.

Putting the hyper-parameters in the pool string lets them travel wherever timm passes
``global_pool`` (constructors, ``reset_classifier``, the ``model_args`` of a saved
``config.json``), so a saved model reloads with the identical layer.
"""
from __future__ import annotations

from typing import Any, Dict, Optional

from .transport import check_transport_args

__all__ = ["GSP_DEFAULTS", "is_gsp_spec", "parse_gsp_spec", "format_gsp_spec"]

GSP_DEFAULTS: Dict[str, Any] = {"num_prototypes": 64, "transport_ratio": 0.3, "gamma": 5.0}
_TYPES = {"num_prototypes": int, "transport_ratio": float, "gamma": float}


def is_gsp_spec(pool_type: Any) -> bool:
    """True for ``"gsp"`` and ``"gsp:..."`` (any case)."""
    if not isinstance(pool_type, str):
        return False
    head = pool_type.strip().lower()
    return head == "gsp" or head.startswith("gsp:")


def parse_gsp_spec(pool_type: str) -> Optional[Dict[str, Any]]:
    """GSP hyper-parameters of a pool string (defaults filled in), or ``None`` if it is not GSP.

    Raises:
        ValueError: unknown key, malformed item, or a value out of range.
    """
    if not is_gsp_spec(pool_type):
        return None
    params = dict(GSP_DEFAULTS)
    _, _, body = pool_type.strip().partition(":")
    for item in filter(None, (part.strip() for part in body.split(","))):
        key, sep, value = item.partition("=")
        key = key.strip().lower()
        if not sep or key not in _TYPES:
            raise ValueError(
                f"bad GSP pool option {item!r} in {pool_type!r}: expected key=value with key in {sorted(_TYPES)}"
            )
        try:
            params[key] = _TYPES[key](value.strip())
        except ValueError:
            raise ValueError(f"GSP option {key} in {pool_type!r} must be a {_TYPES[key].__name__}, got {value!r}") from None
    if params["num_prototypes"] < 1:
        raise ValueError(f"num_prototypes must be >= 1, got {params['num_prototypes']} in {pool_type!r}")
    check_transport_args(params["transport_ratio"], params["gamma"])
    return params


def format_gsp_spec(
        num_prototypes: int = GSP_DEFAULTS["num_prototypes"],
        transport_ratio: float = GSP_DEFAULTS["transport_ratio"],
        gamma: float = GSP_DEFAULTS["gamma"],
) -> str:
    """The canonical pool string for these hyper-parameters (round-trips through ``parse_gsp_spec``)."""
    spec = f"gsp:num_prototypes={int(num_prototypes)},transport_ratio={float(transport_ratio)!r},gamma={float(gamma)!r}"
    parse_gsp_spec(spec)  # validate
    return spec
