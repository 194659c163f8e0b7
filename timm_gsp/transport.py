"""Entropy-smoothed partial optimal transport of Generalized Sum Pooling, in closed form.

Gurbuz, Sener, Alatan, "Generalized Sum Pooling for Metric Learning", ICCV 2023.

Pure functions, no module state. With ``l_j = logsumexp_i(-gamma * c_ij)`` the optimal plan is

    w_j = sigmoid(t + l_j) / (n * mu)               (pooling weights, sum_j w_j = 1)
    a_i = sum_j w_j * softmax_i(-gamma * c_ij)      (attributes,      sum_i a_i = 1)

where the per-image threshold ``t`` is the root of ``mean_j sigmoid(t + l_j) = mu``. The root is
found without gradient by a safeguarded Newton iteration in the log domain, then one Newton step
is replayed with gradient (divided by a detached derivative) so that autograd sees exactly the
implicit-function gradient, never the solver's iterations.
"""
from __future__ import annotations

import math
from typing import NamedTuple

import torch
import torch.nn.functional as F

__all__ = [
    "TransportPlan",
    "gsp_transport",
    "prototype_costs",
    "weighted_sum",
    "solve_threshold",
    "check_transport_args",
]

# |mean_j sigmoid(t + l_j) - mu| at which the solver stops, per compute dtype; rows whose bracket
# has shrunk to float resolution stop too (hard selections at large gamma).
MASS_TOLERANCE = {torch.float32: 1e-6, torch.float64: 1e-12}
MAX_SOLVER_ITERS = 30


class TransportPlan(NamedTuple):
    """Output of the transport: ``weights`` (B, N) and ``attributes`` (B, K), each summing to 1."""

    weights: torch.Tensor
    attributes: torch.Tensor


def check_transport_args(transport_ratio: float, gamma: float) -> None:
    """Raise ``ValueError`` naming the hyper-parameter that is out of range."""
    if not 0.0 < float(transport_ratio) <= 1.0:
        raise ValueError(f"transport_ratio must be in (0, 1], got {transport_ratio}")
    if not (float(gamma) > 0.0 and math.isfinite(gamma)):
        raise ValueError(f"gamma must be a finite number > 0, got {gamma}")


class _CosineToPrototypes(torch.autograd.Function):
    """cos(p_i, f_j) of unit prototypes (K, C) and contiguous tokens (B, N, C) -> (B, N, K).

    Written out because autograd's ``dots / ||f||`` spends most of its time in norm reductions and
    temporaries; here the backward is two plain matmuls and one fused in-place pass over the tokens.
    """

    @staticmethod
    def forward(ctx, tokens: torch.Tensor, unit_prototypes: torch.Tensor) -> torch.Tensor:
        batch, num_tokens, channels = tokens.shape
        flat = tokens.view(batch * num_tokens, channels)
        dots = (flat @ unit_prototypes.t()).view(batch, num_tokens, -1)  # (B, N, K)
        inv_norms = torch.linalg.vector_norm(tokens, dim=2, keepdim=True).clamp_min(1e-12).reciprocal()  # (B, N, 1)
        ctx.save_for_backward(tokens, unit_prototypes, dots, inv_norms)
        return dots * inv_norms

    @staticmethod
    def backward(ctx, grad_cosine: torch.Tensor):
        tokens, unit_prototypes, dots, inv_norms = ctx.saved_tensors
        batch, num_tokens, channels = tokens.shape
        grad_dots = (grad_cosine * inv_norms).reshape(batch * num_tokens, -1)  # (B*N, K)
        grad_tokens = grad_prototypes = None
        if ctx.needs_input_grad[0]:
            # d(1/|f|)/df = -f / |f|^3, gathered over the K cosines of each token
            radial = (grad_cosine * dots).sum(2, keepdim=True) * inv_norms.pow(3)  # (B, N, 1)
            grad_tokens = (grad_dots @ unit_prototypes).view(batch, num_tokens, channels)
            grad_tokens.addcmul_(tokens, radial, value=-1.0)
        if ctx.needs_input_grad[1]:
            grad_prototypes = grad_dots.t() @ tokens.view(batch * num_tokens, channels)  # (K, C)
        return grad_tokens, grad_prototypes


class _WeightedSum(torch.autograd.Function):
    """z_b = sum_j w_bj f_bj: tokens (B, N, C), weights (B, N) -> (B, C), with a copy-free backward."""

    @staticmethod
    def forward(ctx, tokens: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
        ctx.save_for_backward(tokens, weights)
        return torch.bmm(weights.unsqueeze(1), tokens).squeeze(1)

    @staticmethod
    def backward(ctx, grad_pooled: torch.Tensor):
        tokens, weights = ctx.saved_tensors
        grad_tokens = weights.unsqueeze(2) * grad_pooled.unsqueeze(1) if ctx.needs_input_grad[0] else None
        grad_weights = torch.bmm(tokens, grad_pooled.unsqueeze(2)).squeeze(2) if ctx.needs_input_grad[1] else None
        return grad_tokens, grad_weights


def weighted_sum(tokens: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """Pooled features: tokens (B, N, C) weighted by weights (B, N) -> (B, C)."""
    return _WeightedSum.apply(tokens.contiguous(), weights.to(tokens.dtype))


def prototype_costs(features: torch.Tensor, prototypes: torch.Tensor, channel_dim: int = 2) -> torch.Tensor:
    """Euclidean distance between L2-normalised prototypes and features, in [0, 2].

    Args:
        features: (B, N, C) when ``channel_dim == 2`` (fastest: contiguous tokens) or
            (B, C, N) when ``channel_dim == 1``.
        prototypes: (K, C).

    Returns:
        costs: (B, K, N).
    """
    if features.dim() != 3 or channel_dim not in (1, 2):
        raise ValueError(f"features must be (B, N, C) or (B, C, N), got shape {tuple(features.shape)}")
    if prototypes.dim() != 2 or prototypes.shape[1] != features.shape[channel_dim]:
        raise ValueError(
            f"prototypes of shape {tuple(prototypes.shape)} do not match features of shape "
            f"{tuple(features.shape)} with channels on dim {channel_dim}"
        )
    tokens = (features if channel_dim == 2 else features.transpose(1, 2)).contiguous()
    cosine = _CosineToPrototypes.apply(tokens, F.normalize(prototypes, dim=1)).transpose(1, 2)  # (B, K, N)
    # ||p - f||^2 = 2 - 2 cos; the floor keeps sqrt's gradient finite for coincident vectors.
    return (2.0 - 2.0 * cosine).clamp_min(1e-8).sqrt()


@torch.no_grad()
def solve_threshold(closeness: torch.Tensor, transport_ratio: float) -> torch.Tensor:
    """Root ``t`` of ``g(t) = mean_j sigmoid(t + l_j) - mu`` for each row of ``closeness``.

    Safeguarded Newton in the log domain: below the root it steps on ``log mean_j s_j`` and above
    it on ``log mean_j (1 - s_j)``, both nearly linear in ``t`` far from the root, so a far start
    converges in a few steps; a step that would leave the bracket (which shrinks with the sign of
    ``g``, strictly increasing) is replaced by bisection. Pass centred closeness (max 0) so that
    ``t + l_j`` keeps float32 precision for any gamma.

    Args:
        closeness: (B, N) soft-min closeness ``l_j`` of each feature to the prototypes.
        transport_ratio: ``mu`` in (0, 1).

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
    resolution = 4 * torch.finfo(closeness.dtype).eps
    tolerance = MASS_TOLERANCE[closeness.dtype]
    check_each_step = not torch.compiler.is_compiling()
    for _ in range(MAX_SOLVER_ITERS):
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


def gsp_transport(costs: torch.Tensor, transport_ratio: float, gamma: float) -> TransportPlan:
    """Pooling weights and prototype attributes of GSP's entropy-smoothed partial transport.

    Computed in float32 (float64 for float64 input) with autocast disabled; gradients are the
    implicit ones of GSP_METHOD section 4.

    Args:
        costs: (B, K, N) prototype-to-feature costs.
        transport_ratio: ``mu`` in (0, 1], the share of feature mass that is transported.
        gamma: entropy weight (inverse temperature) > 0.

    Returns:
        TransportPlan with weights (B, N) and attributes (B, K), in the compute dtype.
    """
    check_transport_args(transport_ratio, gamma)
    if costs.dim() != 3 or costs.shape[1] == 0 or costs.shape[2] == 0:
        raise ValueError(f"costs must have shape (B, K, N) with K, N >= 1, got {tuple(costs.shape)}")
    compute_dtype = torch.float64 if costs.dtype == torch.float64 else torch.float32
    with torch.autocast(device_type=costs.device.type, enabled=False):
        logits = costs.to(compute_dtype) * (-float(gamma))  # (B, K, N)
        assignment = torch.softmax(logits, dim=1)  # (B, K, N): softmax_i(-gamma c_ij)
        num_features = costs.shape[2]
        if transport_ratio >= 1.0:
            # mu = 1 transports everything: every feature keeps weight 1/n, i.e. GAP.
            weights = logits.new_full((costs.shape[0], num_features), 1.0 / num_features)
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
            selected = torch.sigmoid(t_star + (newton_step - newton_step.detach()) + closeness)
            # sum_j s_j = n * mu at the root; dividing by the sum instead removes the solver's
            # residual from the weights, and its gradient is zero there (implicit t).
            weights = selected / selected.sum(dim=1, keepdim=True)
        attributes = torch.einsum("bn,bkn->bk", weights, assignment)
    return TransportPlan(weights, attributes)
