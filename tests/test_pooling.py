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
