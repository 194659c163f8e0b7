"""The transport solver against the oracles of docs/method.md (closed form and gradients)."""
import math

import numpy as np
import pytest
import torch
from scipy.optimize import brentq
from scipy.special import expit, logsumexp, softmax

from timm_gsp import gsp_transport, prototype_costs
from timm_gsp.layers.transport import solve_threshold


def closed_form_float64(costs: np.ndarray, mu: float, gamma: float):
    """Independent evaluation of section 3: (B, K, N) costs -> weights (B, N), attributes (B, K)."""
    weights, attributes = [], []
    for c in costs.astype(np.float64):
        closeness = logsumexp(-gamma * c, axis=0)  # (N,)
        g = lambda t: expit(t + closeness).mean() - mu  # noqa: E731
        logit = math.log(mu / (1 - mu))
        t = brentq(g, logit - closeness.max() - 1, logit - closeness.min() + 1, xtol=1e-14, rtol=1e-15)
        w = expit(t + closeness) / (len(closeness) * mu)
        weights.append(w)
        attributes.append(softmax(-gamma * c, axis=0) @ w)
    return np.stack(weights), np.stack(attributes)


def random_costs(batch=3, prototypes=5, features=11, seed=0, dtype=torch.float64):
    generator = torch.Generator().manual_seed(seed)
    feats = torch.randn(batch, 16, features, generator=generator, dtype=dtype)
    protos = torch.randn(prototypes, 16, generator=generator, dtype=dtype)
    return prototype_costs(feats, protos, channel_dim=1)


@pytest.mark.parametrize("mu,gamma", [(0.3, 5.0), (0.1, 1.0), (0.7, 20.0), (0.5, 0.1), (0.3, 100.0)])
def test_matches_float64_closed_form(mu, gamma):
    costs = random_costs()
    weights, attributes = gsp_transport(costs, mu, gamma)
    ref_w, ref_a = closed_form_float64(costs.numpy(), mu, gamma)
    np.testing.assert_allclose(weights.numpy(), ref_w, rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(attributes.numpy(), ref_a, rtol=1e-9, atol=1e-12)
    # float32 path, same oracle
    w32, a32 = gsp_transport(costs.float(), mu, gamma)
    assert w32.dtype == torch.float32
    np.testing.assert_allclose(w32.numpy(), ref_w, rtol=2e-5, atol=1e-7)
    np.testing.assert_allclose(a32.numpy(), ref_a, rtol=2e-5, atol=1e-7)


def test_outputs_are_distributions():
    weights, attributes = gsp_transport(random_costs(batch=4, features=49, dtype=torch.float32), 0.3, 5.0)
    assert weights.shape == (4, 49) and attributes.shape == (4, 5)
    assert (weights >= 0).all() and (attributes >= 0).all()
    torch.testing.assert_close(weights.sum(1), torch.ones(4), rtol=0, atol=1e-6)
    torch.testing.assert_close(attributes.sum(1), torch.ones(4), rtol=0, atol=1e-6)


@pytest.mark.parametrize("gamma", [0.5, 5.0, 50.0])
@pytest.mark.parametrize("mu", [0.05, 0.3, 0.9])
def test_mass_error_float32(mu, gamma):
    costs = random_costs(batch=8, features=196, dtype=torch.float32, seed=3)
    closeness = torch.logsumexp(-gamma * costs, dim=1)
    closeness = closeness - closeness.amax(1, keepdim=True)
    t = solve_threshold(closeness, mu)
    mass = torch.sigmoid(t.double() + closeness.double()).mean(1)
    assert (mass - mu).abs().max().item() <= 1e-6 + 2e-7  # the solver's float32 mass tolerance


def test_transport_ratio_one_is_gap():
    costs = random_costs()
    weights, attributes = gsp_transport(costs, 1.0, 5.0)
    torch.testing.assert_close(weights, torch.full_like(weights, 1 / costs.shape[2]))
    torch.testing.assert_close(attributes, torch.softmax(-5.0 * costs, 1).mean(2))
    # and the limit mu -> 1 approaches it continuously
    near, _ = gsp_transport(costs, 1 - 1e-7, 5.0)
    torch.testing.assert_close(near, weights, rtol=0, atol=1e-6)


@pytest.mark.parametrize("mu", [0.1, 0.3, 0.8])
def test_equidistant_features_get_uniform_weights(mu):
    costs = torch.full((2, 4, 9), math.sqrt(2.0), dtype=torch.float64)
    weights, attributes = gsp_transport(costs, mu, 7.0)
    torch.testing.assert_close(weights, torch.full_like(weights, 1 / 9))
    torch.testing.assert_close(attributes, torch.full_like(attributes, 1 / 4))


def test_large_gamma_is_exact_partial_transport():
    # n = 10 features whose nearest-prototype costs are well separated; mu * n = 3.5 features.
    min_cost = torch.tensor([0.40, 0.10, 0.90, 0.30, 0.70, 0.20, 0.60, 0.80, 0.50, 1.00], dtype=torch.float64)
    costs = torch.stack([min_cost, min_cost + 0.5]).unsqueeze(0)  # (1, 2, 10)
    weights, _ = gsp_transport(costs, 0.35, 1000.0)
    expected = torch.zeros(10, dtype=torch.float64)
    expected[[1, 5, 3]] = 1 / 3.5  # the three closest
    expected[0] = 0.5 / 3.5  # the boundary feature is transported in part
    torch.testing.assert_close(weights[0], expected, rtol=0, atol=1e-6)


def test_permutation_equivariance():
    costs = random_costs(features=13)
    perm = torch.randperm(13, generator=torch.Generator().manual_seed(1))
    weights, attributes = gsp_transport(costs, 0.3, 5.0)
    weights_p, attributes_p = gsp_transport(costs[:, :, perm], 0.3, 5.0)
    torch.testing.assert_close(weights_p, weights[:, perm])
    torch.testing.assert_close(attributes_p, attributes)


@pytest.mark.parametrize("gamma", [0.5, 5.0, 30.0])
def test_gradcheck_float64(gamma):
    costs = random_costs(batch=2, prototypes=3, features=6).requires_grad_(True)
    assert torch.autograd.gradcheck(lambda c: gsp_transport(c, 0.4, gamma), (costs,), eps=1e-6, atol=1e-6)


def _graph_size(tensor):
    seen, stack = set(), [tensor.grad_fn]
    while stack:
        node = stack.pop()
        if node is None or node in seen:
            continue
        seen.add(node)
        stack.extend(next_fn for next_fn, _ in node.next_functions)
    return len(seen)


def test_backward_graph_does_not_unroll_the_solver():
    # One row needs many solver iterations (large gamma, wide spread), the other a single one;
    # the autograd graph must be the same size: the iterations run without gradient.
    easy = torch.full((1, 4, 8), 1.4, dtype=torch.float64, requires_grad=True)
    hard = (torch.rand(1, 4, 8, dtype=torch.float64) * 2).requires_grad_(True)
    assert _graph_size(gsp_transport(easy, 0.3, 1.0).weights) == _graph_size(gsp_transport(hard, 0.3, 500.0).weights)


@pytest.mark.parametrize("gamma", [0.1, 1.0, 5.0, 100.0, 1000.0])
@pytest.mark.parametrize("features", [1, 2, 49])
def test_finite_for_extreme_gamma_and_tiny_inputs(gamma, features):
    costs = random_costs(batch=1, features=features, dtype=torch.float32).requires_grad_(True)
    weights, attributes = gsp_transport(costs, 0.3, gamma)
    (weights.square().sum() + attributes.square().sum()).backward()
    assert torch.isfinite(weights).all() and torch.isfinite(attributes).all()
    assert torch.isfinite(costs.grad).all()
    torch.testing.assert_close(weights.sum(), torch.tensor(1.0), rtol=0, atol=1e-5)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_autocast_computes_in_float32(dtype):
    costs = random_costs(batch=4, features=49, dtype=torch.float32)
    with torch.autocast("cpu", dtype=dtype):
        weights, attributes = gsp_transport(costs.to(dtype), 0.3, 5.0)
    assert weights.dtype == torch.float32 and torch.isfinite(weights).all()
    reference, _ = gsp_transport(costs.to(dtype).float(), 0.3, 5.0)
    torch.testing.assert_close(weights, reference)


@pytest.mark.parametrize(
    "mu,gamma,shape",
    [(0.0, 5.0, (1, 2, 3)), (1.5, 5.0, (1, 2, 3)), (0.3, 0.0, (1, 2, 3)), (0.3, float("inf"), (1, 2, 3)), (0.3, 5.0, (2, 3))],
)
def test_bad_arguments_raise(mu, gamma, shape):
    with pytest.raises(ValueError):
        gsp_transport(torch.rand(shape), mu, gamma)


def test_prototype_costs_shapes_and_range():
    feats = torch.randn(2, 8, 5)
    protos = torch.randn(3, 8)
    costs = prototype_costs(feats, protos, channel_dim=1)
    costs_nlc = prototype_costs(feats.transpose(1, 2), protos, channel_dim=2)
    torch.testing.assert_close(costs, costs_nlc)
    reference = torch.cdist(
        torch.nn.functional.normalize(protos, dim=1).expand(2, 3, 8),
        torch.nn.functional.normalize(feats, dim=1).transpose(1, 2),
    )
    torch.testing.assert_close(costs, reference, rtol=1e-4, atol=1e-4)
    with pytest.raises(ValueError, match="do not match"):
        prototype_costs(feats, torch.randn(3, 7), channel_dim=1)


def test_fused_cost_and_pooling_gradients_float64():
    from timm_gsp.layers.transport import weighted_sum

    tokens = torch.randn(2, 5, 6, dtype=torch.float64, requires_grad=True)
    protos = torch.randn(3, 6, dtype=torch.float64, requires_grad=True)
    weights = torch.rand(2, 5, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda f, p: prototype_costs(f, p), (tokens, protos))
    assert torch.autograd.gradcheck(lambda f, p: prototype_costs(f, p, channel_dim=1), (tokens.detach().transpose(1, 2).requires_grad_(True), protos))
    assert torch.autograd.gradcheck(weighted_sum, (tokens, weights))
    channels_first = tokens.detach().transpose(1, 2).contiguous().requires_grad_(True)  # (B, C, N)
    assert torch.autograd.gradcheck(lambda f, w: weighted_sum(f, w, channel_dim=1), (channels_first, weights))
    # a transposed view of (B, C, N) is read in place, in the other layout: same values and gradients
    assert torch.autograd.gradcheck(lambda f, p: prototype_costs(f.transpose(1, 2), p), (channels_first, protos))
    assert torch.autograd.gradcheck(lambda f, w: weighted_sum(f.transpose(1, 2), w), (channels_first, weights))
