"""Entropy-smoothed partial optimal transport of Generalized Sum Pooling, in closed form.

Gurbuz, Sener, Alatan, "Generalized Sum Pooling for Metric Learning", ICCV 2023 (arXiv 2308.09228).
``docs/method.md`` derives everything below; in short:

A backbone gives ``n`` local features ``f_j`` (C channels). GSP has ``K`` prototypes ``p_i``. Costs are
``c_ij = || p_i/|p_i| - f_j/|f_j| ||`` (in [0, 2]). Each feature carries mass ``1/n``; a share ``mu``
(the transport ratio) of the total mass is moved to the prototypes, the rest stays as residual, under
an entropy penalty of weight ``1/gamma``. With ``l_j = logsumexp_i(-gamma * c_ij)`` (how close feature
``j`` is to the prototypes), the optimum is

    w_j = sigmoid(t + l_j) / (n * mu)               pooling weights   (sum_j w_j = 1)
    a_i = sum_j w_j * softmax_i(-gamma * c_ij)      attributes        (sum_i a_i = 1)

where the per-image threshold ``t`` is the root of ``g(t) = mean_j sigmoid(t + l_j) - mu``, strictly
increasing and bracketed by ``[logit(mu) - max_j l_j, logit(mu) - min_j l_j]``. GSP pools
``z = sum_j w_j f_j``: a soft selection of the ``mu * n`` features closest to the prototypes.

* The root is found without gradient by a safeguarded Newton iteration in the log domain (no
  underflow for any gamma), then one Newton step is replayed with gradient, divided by a detached
  ``g'(t*)``: its value is ``t*`` and its derivative is the implicit-function gradient
  ``dt/dl_j = -s_j (1 - s_j) / sum_k s_k (1 - s_k)``, so autograd never sees the iterations.
* Oracles (tested): ``mu = 1`` is global average pooling exactly; equal ``l_j`` give ``w_j = 1/n``;
  ``gamma -> inf`` keeps the ``mu * n`` closest features with weight ``1/(mu n)``; permuting the
  features permutes ``w`` and leaves ``z`` and ``a`` unchanged; float64 ``gradcheck``.

Pure functions, no module state; TorchScript-compatible (custom autograd kernels are used in eager
mode only, plain ops under ``torch.jit.script``).
"""
from __future__ import annotations

import math
from typing import NamedTuple, Optional, Tuple

import torch
import torch.nn.functional as F

from .pool_spec import check_gsp_args

__all__ = [
    "TransportPlan",
    "gsp_transport",
    "prototype_costs",
    "weighted_sum",
    "dense_layout",
    "token_view",
    "solve_threshold",
    "MAX_SOLVER_ITERS",
]

MAX_SOLVER_ITERS = 30


class TransportPlan(NamedTuple):
    """Output of the transport: ``weights`` (B, N) and ``attributes`` (B, K), each summing to 1."""

    weights: torch.Tensor
    attributes: torch.Tensor


def _mass_tolerance(dtype: torch.dtype) -> float:
    """|mean_j sigmoid(t + l_j) - mu| at which the solver stops."""
    return 1e-12 if dtype == torch.float64 else 1e-6


def _machine_eps(dtype: torch.dtype) -> float:
    return 2.220446049250313e-16 if dtype == torch.float64 else 1.1920928955078125e-07


def token_view(features: torch.Tensor, channel_dim: int) -> torch.Tensor:
    """(B, N, C) view of features laid out (B, N, C) (channel_dim 2) or (B, C, N) (channel_dim 1)."""
    return features if channel_dim == 2 else features.transpose(1, 2)


def _batch_summed_product(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """sum_b a_b @ b_b of (B, P, Q) and (B, Q, R) -> (P, R).

    Accumulated in place image by image in eager mode: 30-40 % faster on CPU than a bmm that
    writes B products and sums them. Compiled graphs get the bmm (no loop over a symbolic batch).
    """
    if torch.compiler.is_compiling():
        return torch.bmm(a, b).sum(0)
    out = a.new_zeros(a.shape[1], b.shape[2])
    for a_b, b_b in zip(a, b):
        out.addmm_(a_b, b_b)
    return out


class _CosineToPrototypes(torch.autograd.Function):
    """cos(p_i, f_j) of unit prototypes (K, C) and contiguous features -> (B, K, N).

    The features are (B, N, C) tokens (``channel_dim=2``: NLC, NHWC, channels_last NCHW) or
    (B, C, N) maps (``channel_dim=1``: plain NCHW). Both are read in place: turning NCHW into
    tokens would be a transpose copy that costs more on CPU than the matmuls it feeds. Written
    out because autograd's ``dots / ||f||`` spends most of its time in norm reductions and
    temporaries; here the backward is two matmuls and one fused in-place pass over the features.
    """

    @staticmethod
    def forward(ctx, features: torch.Tensor, unit_prototypes: torch.Tensor, channel_dim: int) -> torch.Tensor:
        batch = features.shape[0]
        if channel_dim == 1:
            dots = torch.bmm(unit_prototypes.expand(batch, -1, -1), features)  # (B, K, N)
        else:
            dots = torch.matmul(features, unit_prototypes.t()).transpose(1, 2)  # (B, K, N) view
        # (B, 1, N); a sum of squares: vector_norm is slow over the strided channels of (B, C, N)
        inv_norms = features.square().sum(channel_dim).sqrt_().clamp_min_(1e-12).reciprocal_().unsqueeze(1)
        ctx.channel_dim = channel_dim
        ctx.save_for_backward(features, unit_prototypes, dots, inv_norms)
        return dots * inv_norms

    @staticmethod
    def backward(ctx, grad_cosine: torch.Tensor):
        features, unit_prototypes, dots, inv_norms = ctx.saved_tensors
        channel_dim = ctx.channel_dim
        grad_dots = grad_cosine * inv_norms  # (B, K, N)
        grad_features = grad_prototypes = None
        if ctx.needs_input_grad[0]:
            if channel_dim == 1:  # (C, K) @ (B, K, N) -> (B, C, N)
                grad_features = torch.bmm(unit_prototypes.t().expand(features.shape[0], -1, -1), grad_dots)
            else:  # (B, N, K) @ (K, C) -> (B, N, C)
                grad_features = torch.matmul(grad_dots.transpose(1, 2), unit_prototypes)
            # d(1/|f|)/df = -f / |f|^3, gathered over the K cosines of each feature
            radial = (grad_cosine * dots).sum(1, keepdim=True) * inv_norms.pow(3)  # (B, 1, N)
            grad_features.addcmul_(features, radial if channel_dim == 1 else radial.transpose(1, 2), value=-1.0)
        if ctx.needs_input_grad[1]:
            # sum_b grad_dots_b @ tokens_b, as the product BLAS reads in place for each layout
            if channel_dim == 1:  # sum_b (C, N) @ (N, K), transposed
                grad_prototypes = _batch_summed_product(features, grad_dots.transpose(1, 2)).t()
            else:  # one (K, B*N) @ (B*N, C) product
                grad_prototypes = grad_dots.transpose(0, 1).flatten(1) @ features.flatten(0, 1)
        return grad_features, grad_prototypes, None


class _WeightedSum(torch.autograd.Function):
    """z_b = sum_j w_bj f_bj: contiguous features (B, N, C) or (B, C, N), weights (B, N) -> (B, C)."""

    @staticmethod
    def forward(ctx, features: torch.Tensor, weights: torch.Tensor, channel_dim: int) -> torch.Tensor:
        ctx.channel_dim = channel_dim
        ctx.save_for_backward(features, weights)
        return torch.bmm(weights.unsqueeze(1), token_view(features, channel_dim)).squeeze(1)

    @staticmethod
    def backward(ctx, grad_pooled: torch.Tensor):
        features, weights = ctx.saved_tensors
        channel_dim = ctx.channel_dim
        grad_features = grad_weights = None
        if ctx.needs_input_grad[0]:  # the outer product w_bj g_bc, laid out like the features
            grad_features = grad_pooled.unsqueeze(3 - channel_dim) * weights.unsqueeze(channel_dim)
        if ctx.needs_input_grad[1]:
            channels_first = token_view(features, channel_dim).transpose(1, 2)  # (B, C, N)
            grad_weights = torch.bmm(grad_pooled.unsqueeze(1), channels_first).squeeze(1)
        return grad_features, grad_weights, None


def dense_layout(features: torch.Tensor, channel_dim: int) -> Tuple[torch.Tensor, int]:
    """Features as a contiguous tensor in whichever of the two layouts needs no copy."""
    if features.is_contiguous():
        return features, channel_dim
    if features.transpose(1, 2).is_contiguous():
        return features.transpose(1, 2), 3 - channel_dim
    return features.contiguous(), channel_dim


def weighted_sum(features: torch.Tensor, weights: torch.Tensor, channel_dim: int = 2) -> torch.Tensor:
    """Pooled features: (B, N, C) (``channel_dim=2``) or (B, C, N) (``channel_dim=1``) weighted
    by weights (B, N) -> (B, C)."""
    features, channel_dim = dense_layout(features, channel_dim)
    weights = weights.to(features.dtype)
    if torch.jit.is_scripting():
        return torch.bmm(weights.unsqueeze(1), token_view(features, channel_dim)).squeeze(1)
    return _WeightedSum.apply(features, weights, channel_dim)


def prototype_costs(features: torch.Tensor, prototypes: torch.Tensor, channel_dim: int = 2,
                    norm: str = "unit") -> torch.Tensor:
    """Euclidean distance between L2-normalised prototypes and normalised features, in [0, 2].

    Args:
        features: (B, N, C) when ``channel_dim == 2`` or (B, C, N) when ``channel_dim == 1``;
            read in place when contiguous in either layout (a transposed view included).
        prototypes: (K, C).
        norm: "unit" divides each feature by its norm; "clip" only by a norm above 1 (the reference
            release's), so a weak feature (norm r < 1) is at least 1 - r from every prototype;
            "relative" only by a norm above the image's mean cell norm ``m`` (the scale of a network's
            features is its own: clipping at 1 leaves most networks' features unit), so a cell of norm
            r < m is at least 1 - r / m from every prototype: the selection sees how strong a cell is.

    Returns:
        costs: (B, K, N).
    """
    if features.dim() != 3 or channel_dim not in (1, 2):
        raise ValueError(f"features must be (B, N, C) or (B, C, N), got shape {list(features.shape)}")
    if prototypes.dim() != 2 or prototypes.shape[1] != features.shape[channel_dim]:
        raise ValueError(
            f"prototypes of shape {list(prototypes.shape)} do not match features of shape "
            f"{list(features.shape)} with channels on dim {channel_dim}"
        )
    features, channel_dim = dense_layout(features, channel_dim)
    unit_prototypes = F.normalize(prototypes, dim=1)
    if norm != "unit":  # |p - f'|^2 = 1 + |f'|^2 - 2 p.f' with f' = f / max(|f|, scale)
        tokens = token_view(features, channel_dim)
        norms = torch.linalg.vector_norm(tokens, dim=2, keepdim=True)  # (B, N, 1)
        # the image's mean cell norm is a reference scale, not something to optimise: no gradient through it
        scale = norms.mean(dim=1, keepdim=True).detach() if norm == "relative" else torch.ones_like(norms[:, :1])
        dots = torch.matmul(tokens / torch.maximum(norms, scale), unit_prototypes.t())  # (B, N, K)
        squared = 1.0 + (norms / scale).clamp_max(1.0).square() - 2.0 * dots
        return squared.clamp_min(1e-8).sqrt().transpose(1, 2)
    if torch.jit.is_scripting():  # custom autograd kernels are not scriptable: the same in plain ops
        tokens = token_view(features, channel_dim)
        cosine = torch.matmul(F.normalize(tokens, dim=2), unit_prototypes.t()).transpose(1, 2)
    else:
        cosine = _CosineToPrototypes.apply(features, unit_prototypes, channel_dim)  # (B, K, N)
    # ||p - f||^2 = 2 - 2 cos; the floor keeps sqrt's gradient finite for coincident vectors.
    return (2.0 - 2.0 * cosine).clamp_min(1e-8).sqrt()


def solve_threshold(closeness: torch.Tensor, transport_ratio: float, max_iters: int = MAX_SOLVER_ITERS) -> torch.Tensor:
    """Root ``t`` of ``g(t) = mean_j sigmoid(t + l_j) - mu`` for each row of ``closeness``.

    Safeguarded Newton in the log domain: below the root it steps on ``log mean_j s_j`` and above
    it on ``log mean_j (1 - s_j)``, both nearly linear in ``t`` far from the root, so a far start
    converges in a few steps; a step that would leave the bracket (which shrinks with the sign of
    ``g``, strictly increasing) is replaced by bisection. Pass centred closeness (max 0) so that
    ``t + l_j`` keeps float32 precision for any gamma, and detached: this builds no graph.

    In eager mode and TorchScript the loop stops once every row has converged; traced graphs
    (``torch.compile``, ``torch.export``, ONNX) run all ``max_iters`` iterations, and a
    converged row stays frozen, so both give the same result.

    Args:
        closeness: (B, N) soft-min closeness ``l_j`` of each feature to the prototypes.
        transport_ratio: ``mu`` in (0, 1).
        max_iters: iteration cap (the fixed count of traced graphs).

    Returns:
        t: (B, 1).
    """
    mu = float(transport_ratio)
    log_mu, log_rest_target = math.log(mu), math.log1p(-mu)
    logit_mu = log_mu - log_rest_target
    log_n = math.log(closeness.shape[1])
    low = logit_mu - closeness.amax(dim=1, keepdim=True)
    high = logit_mu - closeness.amin(dim=1, keepdim=True)
    t = logit_mu - closeness.mean(dim=1, keepdim=True)  # exact when all l_j are equal
    resolution = 4 * _machine_eps(closeness.dtype)
    tolerance = _mass_tolerance(closeness.dtype)
    if torch.jit.is_scripting():
        check_each_step = True
    else:
        check_each_step = not torch.compiler.is_compiling()
    for _ in range(max_iters):
        x = t + closeness
        log_s, log_not_s = F.logsigmoid(x), F.logsigmoid(-x)
        log_mass = torch.logsumexp(log_s, dim=1, keepdim=True) - log_n  # log mean_j s_j
        mass_error = log_mass.exp() - mu
        converged = (mass_error.abs() <= tolerance) | (high - low <= resolution * (1 + t.abs()))
        if check_each_step and bool(converged.all()):
            break
        over = mass_error > 0
        high = torch.where(over, t, high)
        low = torch.where(over, low, t)
        log_rest = torch.logsumexp(log_not_s, dim=1, keepdim=True) - log_n  # log mean_j (1 - s_j)
        # d/dt log mean s = E_{j ~ s}[1 - s_j];  d/dt log mean (1 - s) = -E_{j ~ 1-s}[s_j]
        slope_mass = (torch.softmax(log_s, dim=1) * torch.sigmoid(-x)).sum(dim=1, keepdim=True)
        slope_rest = (torch.softmax(log_not_s, dim=1) * torch.sigmoid(x)).sum(dim=1, keepdim=True)
        step = torch.where(
            over,
            (log_rest - log_rest_target) / slope_rest.clamp_min(1e-30),
            (log_mu - log_mass) / slope_mass.clamp_min(1e-30),
        )
        newton = t + step
        inside = (newton > low) & (newton < high)
        t = torch.where(converged, t, torch.where(inside, newton, 0.5 * (low + high)))
    return t


def _transport(costs: torch.Tensor, transport_ratio: float, gamma: float,
               ratio: Optional[torch.Tensor] = None) -> TransportPlan:
    """``gsp_transport`` without argument checks or autocast handling, in the dtype of ``costs``."""
    logits = costs * (-gamma)  # (B, K, N)
    assignment = torch.softmax(logits, dim=1)  # (B, K, N): softmax_i(-gamma c_ij)
    num_features = costs.shape[2]
    if transport_ratio >= 1.0:
        # mu = 1 transports everything: every feature keeps weight 1/n, i.e. GAP.
        weights = torch.full((costs.shape[0], num_features), 1.0 / num_features, dtype=costs.dtype, device=costs.device)
    else:
        closeness = torch.logsumexp(logits, dim=1)  # (B, N)
        # The solution is shift invariant in l; centring keeps t + l_j small and precise.
        closeness = closeness - closeness.detach().amax(dim=1, keepdim=True)
        t_star = solve_threshold(closeness.detach(), transport_ratio)
        # One Newton step replayed with gradient: its derivative is the implicit dt/dl, and
        # only its gradient is kept (value exactly t*), so a flat g cannot blow up the value.
        s_star = torch.sigmoid(t_star + closeness)
        slope = (s_star * (1.0 - s_star)).mean(dim=1, keepdim=True).detach().clamp_min(1e-30)
        newton_step = -(s_star.mean(dim=1, keepdim=True) - transport_ratio) / slope
        if ratio is not None:  # a learned ratio (of value transport_ratio) gets the implicit dt/dmu = 1 / g'(t*)
            newton_step = newton_step + (ratio.reshape(1, 1) - transport_ratio) / slope
        selected = torch.sigmoid(t_star + (newton_step - newton_step.detach()) + closeness)
        # sum_j s_j = n * mu at the root; dividing by the sum instead removes the solver's
        # residual from the weights, and its gradient is zero there (implicit t).
        weights = selected / selected.sum(dim=1, keepdim=True)
    attributes = torch.bmm(assignment, weights.unsqueeze(2)).squeeze(2)  # (B, K): sum_j w_j softmax_i
    return TransportPlan(weights, attributes)


def gsp_transport(costs: torch.Tensor, transport_ratio: float, gamma: float,
                  ratio: Optional[torch.Tensor] = None) -> TransportPlan:
    """Pooling weights and prototype attributes of GSP's entropy-smoothed partial transport.

    Computed in float32 (float64 for float64 input) with autocast disabled; gradients are the
    implicit ones described in the module docstring.

    Args:
        costs: (B, K, N) prototype-to-feature costs.
        transport_ratio: ``mu`` in (0, 1], the share of feature mass that is transported.
        gamma: entropy weight (inverse temperature) > 0.
        ratio: a learned ``mu`` as a one-element tensor of value ``transport_ratio``, to receive the
            implicit gradient ``dt/dmu = 1 / g'(t)``; None for a fixed ratio.

    Returns:
        TransportPlan with weights (B, N) and attributes (B, K), in the compute dtype.
    """
    if costs.dim() != 3 or costs.shape[1] == 0 or costs.shape[2] == 0:
        raise ValueError(f"costs must have shape (B, K, N) with K, N >= 1, got {list(costs.shape)}")
    compute_dtype = torch.float64 if costs.dtype == torch.float64 else torch.float32
    if ratio is not None:
        ratio = ratio.to(compute_dtype)
    if torch.jit.is_scripting():
        return _transport(costs.to(compute_dtype), transport_ratio, gamma, ratio)
    check_gsp_args(transport_ratio=transport_ratio, gamma=gamma)
    with torch.autocast(device_type=costs.device.type, enabled=False):
        return _transport(costs.to(compute_dtype), float(transport_ratio), float(gamma), ratio)
