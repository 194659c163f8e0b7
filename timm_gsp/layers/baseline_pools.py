"""The pools a retrieval model may use instead of GSP, on the local features of any layout.

* ``ReducePool``: timm's ``SelectAdaptivePool2d`` types for the families whose head cannot take them
  (token models, ``GSPRetrievalNet``): ``avg``, ``max``, ``avgmax`` (the mean of the two) and
  ``catavgmax`` (the two concatenated: twice the width, ``pooled_width``).
* ``GeneralizedMeanPool``: ``gem``, Generalized-mean pooling (Radenović, Tolias and Chum, "Fine-tuning
  CNN Image Retrieval with No Human Annotation", TPAMI 2018): ``(mean_n x_n^p)^(1/p)`` with a learnable
  exponent ``p``: ``p = 1`` is average pooling and ``p -> inf`` max pooling.

Every pool maps ``(B, C, H, W)`` (NCHW), ``(B, H, W, C)`` (NHWC) or ``(B, N, C)`` tokens (NLC, prefix
tokens left out) to ``(B, pooled_width(pool, C))``.
"""
from __future__ import annotations

from typing import List, Tuple

import torch
import torch.nn as nn

from ..errors import ConfigError
from .pool_spec import BASELINE_POOLS

__all__ = ["GeneralizedMeanPool", "ReducePool", "create_baseline_pool", "pooled_width"]

_LAYOUTS = ("NCHW", "NHWC", "NLC")


def pooled_width(pool: str, num_features: int) -> int:
    """Width of the pooled vector of ``num_features`` channels: ``catavgmax`` doubles it."""
    return 2 * num_features if pool == "catavgmax" else num_features


def _positions(x: torch.Tensor, input_fmt: str, num_prefix_tokens: int) -> Tuple[torch.Tensor, List[int]]:
    """The local features and the dimensions that index their positions."""
    if input_fmt == "NCHW":
        return x, [2, 3]
    if input_fmt == "NHWC":
        return x, [1, 2]
    return x[:, num_prefix_tokens:], [1]


def _check_layout(input_fmt: str) -> None:
    if input_fmt not in _LAYOUTS:
        raise ConfigError(f"input_fmt must be one of {_LAYOUTS}, got {input_fmt!r}")


class ReducePool(nn.Module):
    """Mean, max, their mean (``avgmax``) or both concatenated (``catavgmax``) over the positions: -> (B, C) or (B, 2C)."""

    def __init__(self, mode: str, input_fmt: str, num_prefix_tokens: int = 0):
        super().__init__()
        if mode not in ("avg", "max", "avgmax", "catavgmax"):
            raise ConfigError(f"ReducePool mode must be avg, max, avgmax or catavgmax, got {mode!r}")
        _check_layout(input_fmt)
        self.mode, self.input_fmt, self.num_prefix_tokens = mode, input_fmt, num_prefix_tokens

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x, dims = _positions(x, self.input_fmt, self.num_prefix_tokens)
        if self.mode == "avg":
            return x.mean(dims)
        if self.mode == "max":
            return x.amax(dims)
        mean, peak = x.mean(dims), x.amax(dims)
        return 0.5 * (mean + peak) if self.mode == "avgmax" else torch.cat([mean, peak], dim=1)


class GeneralizedMeanPool(nn.Module):
    """GeM: ``(mean over positions of clamp(x, eps)^p)^(1/p)`` -> (B, C), one learnable ``p`` (init 3).

    The clamp keeps the power of a negative or zero activation defined (and its gradient finite).
    """

    def __init__(self, input_fmt: str = "NCHW", num_prefix_tokens: int = 0, p: float = 3.0, eps: float = 1e-6):
        super().__init__()
        _check_layout(input_fmt)
        self.input_fmt, self.num_prefix_tokens, self.eps = input_fmt, num_prefix_tokens, eps
        self.p = nn.Parameter(torch.full((1,), float(p)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x, dims = _positions(x, self.input_fmt, self.num_prefix_tokens)
        p = self.p.to(x.dtype)
        return x.clamp(min=self.eps).pow(p).mean(dims).pow(1.0 / p)

    def extra_repr(self) -> str:
        return f"input_fmt={self.input_fmt}, p={self.p.item():.4g}, eps={self.eps:g}"


def create_baseline_pool(pool: str, input_fmt: str, num_prefix_tokens: int = 0) -> nn.Module:
    """The module of a baseline pool string (one of ``pool_spec.BASELINE_POOLS``)."""
    if pool == "gem":
        return GeneralizedMeanPool(input_fmt, num_prefix_tokens)
    if pool not in BASELINE_POOLS:
        raise ConfigError(f"not a baseline pool: {pool!r}; expected one of {BASELINE_POOLS}")
    return ReducePool(pool, input_fmt, num_prefix_tokens)
