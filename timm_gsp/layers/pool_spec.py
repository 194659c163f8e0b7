"""The ``global_pool`` string that selects GSP in timm, e.g. ``"gsp"`` or
``"gsp:num_prototypes=128,transport_ratio=0.3,gamma=5,mix=max"`` (options left out take their
defaults), and the one home of GSP's defaults.

Putting the hyper-parameters in the pool string lets them travel wherever timm passes
``global_pool`` (constructors, ``reset_classifier``, the ``model_args`` of a saved
``config.json``), so a saved model reloads with the identical layer.
"""
from __future__ import annotations

import math
import numbers
from typing import Any, Dict, Optional

from ..errors import ConfigError

__all__ = ["BASELINE_POOLS", "GSP_DEFAULTS", "MIXES", "NORMS", "check_gsp_args", "format_gsp_spec", "is_gsp_spec", "parse_gsp_spec",
           "pool_spec"]

# The defaults of the reference release for small datasets (CUB, Cars): K = 64 prototypes, transport
# ratio mu = 0.3, entropy weight gamma = 5 on the [0, 2] cost scale. The other options choose among the
# reference release's heads and timm-gsp's additions (docs/method.md); their defaults are the plain GSP of
# the paper, so a pool string that leaves them out means what it always meant:
#   border       outer rings of the feature grid left out of the transport (0: none)
#   mix          how the transport plan becomes a vector: "sum" (sum_j w_j f_j, the paper), "max"
#                (max_j m_j f_j per channel, m_j = N w_j: the PyTorch port's head), "gem" (GeM over
#                m_j f_j, learned exponent from 3: the TensorFlow use_gemp head), "addmax" (sum_j w_j f_j
#                + max_j f_j: the TensorFlow augment_max_pool head)
#   learn_ratio  the transport ratio is a learned parameter, starting at transport_ratio
#   project      the costs and the pooled vector are computed on a learned linear map of every cell
#                (C -> C, from the identity), as the reference transports embedded cells
#   norm         how a cell is normalised for its costs: "unit" (f / |f|), "clip" (f / max(|f|, 1), the
#                reference release's: weak cells sit far from every prototype) or "relative" (f / max(|f|, m),
#                m the image's mean cell norm: the same at the network's own scale)
# Every other module reads them here.
GSP_DEFAULTS: Dict[str, Any] = {"num_prototypes": 64, "transport_ratio": 0.3, "gamma": 5.0, "border": 0,
                                "mix": "sum", "learn_ratio": False, "project": False, "norm": "unit"}
MIXES = ("sum", "max", "gem", "addmax")
NORMS = ("unit", "clip", "relative")
_TYPES = {"num_prototypes": int, "transport_ratio": float, "gamma": float, "border": int, "mix": str,
          "learn_ratio": bool, "project": bool, "norm": str}
_CHOICES = {"mix": MIXES, "norm": NORMS}
_BOOLS = {"0": False, "1": True, "false": False, "true": True}


def check_gsp_args(num_prototypes: Any = GSP_DEFAULTS["num_prototypes"],
                   transport_ratio: Any = GSP_DEFAULTS["transport_ratio"],
                   gamma: Any = GSP_DEFAULTS["gamma"],
                   border: Any = GSP_DEFAULTS["border"],
                   mix: Any = GSP_DEFAULTS["mix"],
                   learn_ratio: Any = GSP_DEFAULTS["learn_ratio"],
                   project: Any = GSP_DEFAULTS["project"],
                   norm: Any = GSP_DEFAULTS["norm"]) -> None:
    """Raise ``ValueError`` naming the first GSP hyper-parameter that is out of range or of the wrong type.

    (Whether a ``border`` leaves any cell of a feature map is known only with the map: the pool checks it.)
    """
    if isinstance(num_prototypes, bool) or not isinstance(num_prototypes, numbers.Integral) or num_prototypes < 1:
        raise ValueError(f"num_prototypes must be an integer >= 1, got {num_prototypes!r}")
    if isinstance(transport_ratio, bool) or not isinstance(transport_ratio, numbers.Real) \
            or not 0.0 < float(transport_ratio) <= 1.0:
        raise ValueError(f"transport_ratio must be a number in (0, 1], got {transport_ratio!r}")
    if isinstance(gamma, bool) or not isinstance(gamma, numbers.Real) or not (float(gamma) > 0 and math.isfinite(gamma)):
        raise ValueError(f"gamma must be a finite number > 0, got {gamma!r}")
    if isinstance(border, bool) or not isinstance(border, numbers.Integral) or border < 0:
        raise ValueError(f"border must be an integer >= 0, got {border!r}")
    for key, value in (("mix", mix), ("norm", norm)):
        if value not in _CHOICES[key]:
            raise ValueError(f"{key} must be one of {', '.join(_CHOICES[key])}, got {value!r}")
    for key, value in (("learn_ratio", learn_ratio), ("project", project)):
        if not isinstance(value, bool):
            raise ValueError(f"{key} must be True or False (0 or 1 in a pool string), got {value!r}")
    if learn_ratio and float(transport_ratio) >= 1.0:
        raise ValueError("learn_ratio needs a starting transport_ratio below 1 (a learned ratio of 1 has no gradient)")


def is_gsp_spec(pool_type: Any) -> bool:
    """True for ``"gsp"`` and ``"gsp:..."`` (any case)."""
    if not isinstance(pool_type, str):
        return False
    head = pool_type.strip().lower()
    return head == "gsp" or head.startswith("gsp:")


def _parse_value(key: str, text: str, spec: str) -> Any:
    kind = _TYPES[key]
    if kind is bool:
        if text.lower() not in _BOOLS:
            raise ValueError(f"GSP option {key} in {spec!r} must be 0 or 1, got {text!r}")
        return _BOOLS[text.lower()]
    if kind is str:
        return text.lower()  # checked against its choices with the other values
    try:
        return kind(text)  # int("2.7") fails: a prototype count is never rounded silently
    except ValueError:
        raise ValueError(f"GSP option {key} in {spec!r} must be {'an integer' if kind is int else 'a number'}, "
                         f"got {text!r}") from None


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
        border: int = GSP_DEFAULTS["border"],
        mix: str = GSP_DEFAULTS["mix"],
        learn_ratio: bool = GSP_DEFAULTS["learn_ratio"],
        project: bool = GSP_DEFAULTS["project"],
        norm: str = GSP_DEFAULTS["norm"],
) -> str:
    """The canonical pool string for these hyper-parameters (round-trips through ``parse_gsp_spec``).

    The options after ``gamma`` appear only where they differ from ``GSP_DEFAULTS``, so the strings of
    pools that do not use them (saved configs, published models) are the same as before they existed.
    """
    check_gsp_args(num_prototypes, transport_ratio, gamma, border, mix, learn_ratio, project, norm)
    spec = f"gsp:num_prototypes={int(num_prototypes)},transport_ratio={float(transport_ratio)!r},gamma={float(gamma)!r}"
    options = {"border": int(border), "mix": mix, "learn_ratio": learn_ratio, "project": project, "norm": norm}
    for key, value in options.items():
        if value != GSP_DEFAULTS[key]:
            spec += f",{key}={int(value) if isinstance(value, bool) else value}"
    return spec


# --- the pool of a retrieval model: GSP or a baseline ---------------------------------------------

# The pools a retrieval model may use instead of GSP: timm's own SelectAdaptivePool2d types (``catavgmax``
# concatenates the mean and the max, so it pools to twice the width) and GeM (``baseline_pools``).
BASELINE_POOLS = ("avg", "max", "avgmax", "catavgmax", "gem")


def pool_spec(
        pool: str = "gsp",
        num_prototypes: int = GSP_DEFAULTS["num_prototypes"],
        transport_ratio: float = GSP_DEFAULTS["transport_ratio"],
        gamma: float = GSP_DEFAULTS["gamma"],
        **gsp_options: Any,
) -> str:
    """The canonical pool string of a retrieval model: ``"gsp"`` with these hyper-parameters (the
    ``gsp:...`` string), a full ``gsp:...`` spec (validated, kept), or one of ``BASELINE_POOLS``.

    Raises:
        ConfigError: not a pool string, a bad GSP option, or an unknown pool.
    """
    if not isinstance(pool, str):
        raise ConfigError(f"pool must be a string ('gsp', 'gsp:...' or one of {BASELINE_POOLS}), got {pool!r}")
    try:
        if pool.strip().lower() in ("gsp", "gsp:"):
            return format_gsp_spec(num_prototypes, transport_ratio, gamma, **gsp_options)
        if is_gsp_spec(pool):
            parse_gsp_spec(pool)
            return pool
    except ValueError as error:
        raise ConfigError(str(error)) from None
    if pool not in BASELINE_POOLS:
        raise ConfigError(f"pool must be 'gsp', 'gsp:...' or one of {BASELINE_POOLS}, got {pool!r}")
    return pool
