"""GeneralizedSumPool: layouts, GAP limit, prefix tokens, k-center, hooks, lazy sizing, errors."""
import pytest
import torch

from timm_gsp import GeneralizedSumPool, capture_transport, gsp_transport, prototype_costs


def make_pool(**kwargs):
    torch.manual_seed(0)
    return GeneralizedSumPool(**{"in_chs": 16, "num_prototypes": 4, **kwargs})


def test_layouts_agree_and_match_transport():
    pool_nchw = make_pool()
    x = torch.randn(3, 16, 5, 4)
    z = pool_nchw(x)
    weights, _ = gsp_transport(prototype_costs(x.flatten(2), pool_nchw.prototypes, channel_dim=1), 0.3, 5.0)
    torch.testing.assert_close(z, torch.einsum("bcn,bn->bc", x.flatten(2), weights))
    for fmt, inp in [("NHWC", x.permute(0, 2, 3, 1)), ("NLC", x.flatten(2).transpose(1, 2))]:
        pool = make_pool(input_fmt=fmt)
        pool.load_state_dict(pool_nchw.state_dict())
        torch.testing.assert_close(pool(inp), z)


def test_memory_layouts_give_the_same_values_and_gradients():
    """Plain NCHW is read as (B, C, N), channels_last as (B, N, C), a strided slice via one copy."""
    pool = make_pool().double()
    base = torch.randn(3, 16, 5, 8, dtype=torch.float64)
    results = []
    for x in (base, base.contiguous(memory_format=torch.channels_last), torch.stack([base, torch.zeros_like(base)], dim=-1)[..., 0]):
        x = x.detach().requires_grad_(True)
        pool.zero_grad()
        out = pool(x)
        (out * torch.linspace(-1, 1, 16, dtype=torch.float64)).sum().backward()
        results.append((out, x.grad, pool.prototypes.grad.clone()))
    for other in results[1:]:
        for got, expected in zip(other, results[0]):
            torch.testing.assert_close(got, expected)


def test_flatten_false_keeps_singleton_dims():
    x = torch.randn(2, 16, 3, 3)
    assert make_pool(flatten=False)(x).shape == (2, 16, 1, 1)
    assert make_pool(input_fmt="NHWC", flatten=False)(x.permute(0, 2, 3, 1)).shape == (2, 1, 1, 16)


def test_transport_ratio_one_is_global_average_pooling():
    x = torch.randn(2, 16, 7, 7)
    torch.testing.assert_close(make_pool(transport_ratio=1.0)(x), x.mean((2, 3)))


def test_prefix_tokens_are_skipped():
    pool = make_pool(input_fmt="NLC", num_prefix_tokens=2)
    tokens = torch.randn(2, 11, 16)
    other_prefix = tokens.clone()
    other_prefix[:, :2] = torch.randn(2, 2, 16) * 100
    torch.testing.assert_close(pool(tokens), pool(other_prefix))
    plain = make_pool(input_fmt="NLC")
    plain.load_state_dict(pool.state_dict())
    torch.testing.assert_close(pool(tokens), plain(tokens[:, 2:]))


def test_selection_prefers_features_near_prototypes():
    pool = make_pool(num_prototypes=1, gamma=20.0)
    target = pool.prototypes.detach()[0]
    x = torch.randn(1, 16, 10) * 0.1
    x[0, :, :3] += target[:, None]  # three features lie on the prototype
    with capture_transport(torch.nn.Sequential(pool)) as plans:
        pool(x.view(1, 16, 2, 5))
    weights = plans[0].weights[0]
    assert plans[0].grid_size == (2, 5)
    assert weights[:3].min() > 3 * weights[3:].max()


def test_gradients_reach_features_and_prototypes_float64():
    pool = make_pool().double()
    x = torch.randn(2, 16, 2, 3, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda inp, protos: torch.func.functional_call(pool, {"prototypes": protos}, (inp,)),
                                    (x, pool.prototypes.detach().clone().requires_grad_(True)), eps=1e-6, atol=1e-5)


def test_bf16_autocast_forward_backward():
    pool = make_pool()
    x = torch.randn(4, 16, 7, 7, requires_grad=True)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        z = pool(x.bfloat16())
    z.float().sum().backward()
    assert z.dtype == torch.bfloat16 and torch.isfinite(z.float()).all()
    assert torch.isfinite(pool.prototypes.grad).all() and torch.isfinite(x.grad).all()
    torch.testing.assert_close(z.float(), pool(x.bfloat16().float()), rtol=2e-2, atol=2e-2)


def test_batch_one_and_single_feature():
    pool = make_pool()
    torch.testing.assert_close(pool(torch.ones(1, 16, 1, 1) * 3), torch.full((1, 16), 3.0))


def test_kcenter_init_picks_spread_features():
    pool = make_pool(num_prototypes=3)
    base = torch.eye(16)[:3] * 5
    features = torch.cat([base[i].repeat(4, 1) + 0.01 * torch.randn(4, 16) for i in range(3)])  # (12, 16), 3 clusters
    indices = pool.init_prototypes_kcenter(features, seed=0)
    clusters = {int(i) // 4 for i in indices}
    assert clusters == {0, 1, 2}
    torch.testing.assert_close(pool.prototypes.data, features[indices])
    with pytest.raises(ValueError, match="at least K"):
        make_pool(num_prototypes=20).init_prototypes_kcenter(features)


def test_lazy_pool_sizes_itself_and_loads_state():
    lazy = GeneralizedSumPool(None, num_prototypes=4)
    assert lazy.is_lazy() and lazy.in_chs is None
    assert lazy(torch.randn(2, 8, 3, 3)).shape == (2, 8)
    assert lazy.in_chs == 8
    restored = GeneralizedSumPool(None, num_prototypes=4)
    restored.load_state_dict(lazy.state_dict())
    torch.testing.assert_close(restored.prototypes, lazy.prototypes)


def test_checkpoint_without_prototypes_keeps_them_and_shapes_are_checked():
    pool = make_pool()
    before = pool.prototypes.detach().clone()
    pool.load_state_dict({})  # e.g. an ImageNet backbone checkpoint: the prototypes are new parameters
    torch.testing.assert_close(pool.prototypes, before)
    with pytest.raises(RuntimeError, match="Unexpected key.*transport.extra"):
        pool.load_state_dict({"transport.extra": torch.zeros(1)})  # everything else stays strict
    with pytest.raises(RuntimeError, match="size mismatch"):
        pool.load_state_dict({"prototypes": torch.zeros(5, 16)})


@pytest.mark.parametrize(
    "kwargs,match",
    [
        ({"transport_ratio": 0.0}, "transport_ratio"),
        ({"gamma": -1.0}, "gamma"),
        ({"num_prototypes": 0}, "num_prototypes"),
        ({"input_fmt": "NCL"}, "input_fmt"),
        ({"num_prefix_tokens": 1}, "num_prefix_tokens"),
    ],
)
def test_invalid_hyper_parameters(kwargs, match):
    with pytest.raises(ValueError, match=match):
        GeneralizedSumPool(16, **kwargs)


def test_bad_inputs_name_the_shape():
    pool = make_pool()
    with pytest.raises(ValueError, match=r"4-d tensor, got shape \[2, 16, 9\]"):
        pool(torch.randn(2, 16, 9))
    with pytest.raises(ValueError, match="prototypes for 16 channels"):
        pool(torch.randn(2, 8, 3, 3))
    with pytest.raises(ValueError, match="no patch token"):
        make_pool(input_fmt="NLC", num_prefix_tokens=2)(torch.randn(1, 2, 16))


def test_compile_matches_eager():
    pool = make_pool()
    x = torch.randn(2, 16, 4, 4)
    compiled = torch.compile(pool, fullgraph=True)
    torch.testing.assert_close(compiled(x), pool(x), rtol=1e-5, atol=1e-6)


# --- border: the outer rings of the grid are left out of the transport ------------------------------

def test_border_zero_is_todays_pool():
    x = torch.randn(2, 16, 6, 6)
    default, zero = make_pool(), make_pool(border=0)
    assert torch.equal(zero(x), default(x))
    with capture_transport(torch.nn.Sequential(zero)) as plans:
        zero(x)
    weights, _ = gsp_transport(prototype_costs(x.flatten(2), zero.prototypes, channel_dim=1), 0.3, 5.0)
    assert torch.equal(plans[0].weights, weights)  # the full grid, unchanged
    assert plans[0].costs.shape == (2, 4, 36) and plans[0].border == 0


def _interior_layouts(x):
    """(input_fmt, pool kwargs, 6x6 input, its 4x4 interior crop) for the three layouts of NCHW ``x``."""
    nhwc = x.permute(0, 2, 3, 1)
    tokens = torch.cat([torch.randn(x.shape[0], 2, x.shape[1]) * 50, nhwc.flatten(1, 2)], dim=1)  # 2 prefix tokens
    crop_tokens = nhwc[:, 1:-1, 1:-1].flatten(1, 2)
    return [
        ("NCHW", {}, x, x[:, :, 1:-1, 1:-1]),
        ("NHWC", {}, nhwc, nhwc[:, 1:-1, 1:-1]),
        ("NLC", {"num_prefix_tokens": 2, "grid_size": (6, 6)}, tokens, crop_tokens),
    ]


def test_border_one_on_a_6x6_map_is_gsp_on_its_4x4_interior():
    x = torch.randn(3, 16, 6, 6)
    for fmt, kwargs, full, crop in _interior_layouts(x):
        bordered = make_pool(input_fmt=fmt, border=1, **kwargs)
        plain = make_pool(input_fmt=fmt)
        plain.load_state_dict(bordered.state_dict())
        with capture_transport(torch.nn.Sequential(bordered, plain)) as plans:
            pooled = bordered(full)
            expected = plain(crop)
        torch.testing.assert_close(pooled, expected, msg=fmt)
        got, reference = plans
        assert got.grid_size == (6, 6) and got.weights.shape == (3, 36) and got.border == 1
        grid = got.weights.view(3, 6, 6)
        torch.testing.assert_close(grid[:, 1:-1, 1:-1].reshape(3, 16), reference.weights, msg=fmt)
        ring = torch.ones(6, 6, dtype=torch.bool)
        ring[1:-1, 1:-1] = False
        assert torch.equal(grid[:, ring], torch.zeros(3, 20)), fmt  # exactly zero on the border
        torch.testing.assert_close(got.weights.sum(1), torch.ones(3))
        torch.testing.assert_close(got.attributes, reference.attributes)
        assert got.costs.shape == (3, 4, 16)  # the transport ran on the interior only
        assert got.on_grid(got.costs).shape == (3, 4, 36)


def test_border_interior_cells_keep_equal_mass():
    # transport_ratio = 1 is GAP over the transported cells: the interior mean.
    x = torch.randn(2, 16, 7, 5)
    torch.testing.assert_close(make_pool(transport_ratio=1.0, border=2)(x), x[:, :, 2:-2, 2:-2].mean((2, 3)))


def test_border_gradients_float64():
    pool = make_pool(border=1).double()
    x = torch.randn(1, 16, 4, 4, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda inp, protos: torch.func.functional_call(pool, {"prototypes": protos}, (inp,)),
                                    (x, pool.prototypes.detach().clone().requires_grad_(True)), eps=1e-6, atol=1e-5)
    x.grad = None
    pool(x).sum().backward()
    ring = torch.ones(4, 4, dtype=torch.bool)
    ring[1:-1, 1:-1] = False
    assert torch.equal(x.grad[..., ring], torch.zeros(1, 16, 12))  # the border does not feed the output


def test_border_errors_name_border():
    from timm_gsp import ConfigError

    with pytest.raises(ConfigError, match=r"border=2 leaves no cell of a 4x6 feature grid.*at most 1"):
        make_pool(border=2)(torch.randn(1, 16, 4, 6))
    with pytest.raises(ConfigError, match=r"border=1 leaves no cell of a 2x2"):
        make_pool(input_fmt="NHWC", border=1)(torch.randn(1, 2, 2, 16))
    with pytest.raises(ConfigError, match="border=1 needs the grid of the tokens"):
        make_pool(input_fmt="NLC", border=1)
    with pytest.raises(ConfigError, match="border=2 leaves no cell of a 3x8"):
        make_pool(input_fmt="NLC", border=2, grid_size=(3, 8))
    with pytest.raises(ValueError, match=r"border=1 expects 4x4 patch tokens \(grid_size\), got 9"):
        make_pool(input_fmt="NLC", border=1, grid_size=(4, 4))(torch.randn(1, 9, 16))
    for bad in (-1, 1.5, True):
        with pytest.raises(ValueError, match="border must be an integer >= 0"):
            make_pool(border=bad)
    with pytest.raises(ValueError, match="grid_size is only meaningful for NLC"):
        make_pool(grid_size=(4, 4))


def test_kcenter_uses_only_the_interior():
    import timm_gsp

    pool = make_pool(num_prototypes=3, border=1)
    x = torch.randn(2, 16, 5, 5) * 0.1
    x[:, :, 0, :] += 100 * torch.eye(16)[:5].T  # far-away border features: farthest-point picks them if it can see them
    timm_gsp.init_prototypes_kcenter(torch.nn.Sequential(pool), x)
    interior = x[:, :, 1:-1, 1:-1].flatten(2).transpose(1, 2).flatten(0, 1)  # (2 * 9, 16)
    distances = torch.cdist(pool.prototypes.detach(), interior)
    assert torch.equal(distances.min(dim=1).values, torch.zeros(3))  # each prototype is an interior feature


def test_border_scripts_and_compiles():
    x = torch.randn(2, 16, 6, 6)
    for fmt, kwargs, full, _ in _interior_layouts(x):
        pool = make_pool(input_fmt=fmt, border=1, **kwargs)
        torch.testing.assert_close(torch.jit.script(pool)(full), pool(full), msg=fmt)
    pool = make_pool(border=1)
    torch.testing.assert_close(torch.compile(pool, fullgraph=True)(x), pool(x), rtol=1e-5, atol=1e-6)
