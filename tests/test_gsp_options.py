"""GSP's pool-string options beyond the paper's three: ``mix``, ``learn_ratio``, ``project``, ``norm``.

Each is checked against an oracle: its limit at ``transport_ratio = 1`` (a timm baseline pool), a
hard selection at large gamma, a float64 gradcheck, or the identity it starts from. And the pool
strings that existed before the options still mean the same layer.
"""
import pytest
import timm
import torch

import timm_gsp
from timm_gsp import GeneralizedSumPool, capture_transport
from timm_gsp.layers.baseline_pools import GeneralizedMeanPool

TODAYS_STRINGS = ["gsp", "gsp:num_prototypes=8,transport_ratio=0.3,gamma=5.0",
                  "gsp:num_prototypes=8,transport_ratio=0.25,gamma=10.0,border=1"]


def make_pool(**kwargs):
    torch.manual_seed(0)
    return GeneralizedSumPool(**{"in_chs": 16, "num_prototypes": 4, **kwargs})


def features(*shape, seed=1):
    torch.manual_seed(seed)
    return torch.rand(*shape) + 0.05  # positive, as after a ReLU, and without ties (max has no gradient at a tie)


@pytest.mark.parametrize("spec", TODAYS_STRINGS)
def test_todays_pool_strings_build_the_same_layer(spec):
    """No new option appears in the canonical string or the state dict of a pool that does not use it."""
    params = timm_gsp.parse_gsp_spec(spec)
    pool = GeneralizedSumPool(16, **params)
    assert list(pool.state_dict()) == ["prototypes"]
    assert pool.spec == timm_gsp.format_gsp_spec(**{k: params[k] for k in ("num_prototypes", "transport_ratio",
                                                                            "gamma", "border")})
    assert all(key not in pool.spec for key in ("mix", "learn_ratio", "project", "norm"))
    if spec != "gsp":
        assert pool.spec == spec
    x = features(2, 16, 6, 6)
    weights = pool.transport(timm_gsp.prototype_costs(pool._to_tokens(x), pool.prototypes))[0]
    # the paper's weighted sum, as the pool computed it before the options existed, to the last bit
    torch.testing.assert_close(pool(x), timm_gsp.layers.transport.weighted_sum(pool._to_tokens(x), weights), rtol=0, atol=0)


@pytest.mark.parametrize("spec", ["gsp:mix=max", "gsp:mix=gem,transport_ratio=0.2", "gsp:mix=addmax,learn_ratio=1",
                                  "gsp:project=1,norm=clip,gamma=2.0", "gsp:mix=max,learn_ratio=true,border=1"])
def test_option_strings_round_trip_and_rebuild_identically(spec):
    model = timm.create_model("resnet10t", global_pool=spec, num_classes=5)
    (_, pool), = timm_gsp.gsp_modules(model)
    assert timm_gsp.parse_gsp_spec(pool.spec) == timm_gsp.parse_gsp_spec(spec)
    assert model.global_pool.pool_type == spec
    rebuilt = timm.create_model("resnet10t", global_pool=pool.spec, num_classes=5)
    rebuilt.load_state_dict(model.state_dict())  # strict: the same parameters
    x = torch.randn(2, 3, 96, 96)
    torch.testing.assert_close(rebuilt.eval()(x), model.eval()(x), rtol=0, atol=0)


@pytest.mark.parametrize("bad, match", [
    ("gsp:mix=mean", "mix must be one of sum, max, gem, addmax"),
    ("gsp:norm=l1", "norm must be one of unit, clip, relative"),
    ("gsp:learn_ratio=yes", "learn_ratio .* must be 0 or 1"),
    ("gsp:project=2", "project .* must be 0 or 1"),
    ("gsp:learn_ratio=1,transport_ratio=1", "learn_ratio needs a starting transport_ratio below 1"),
])
def test_bad_options_name_the_option(bad, match):
    with pytest.raises(ValueError, match=match):
        timm_gsp.parse_gsp_spec(bad)
    with pytest.raises(ValueError, match=match.split(" ")[0]):
        timm.create_model("resnet10t", global_pool=bad)


def test_mixes_at_ratio_one_are_timms_pools():
    """mu = 1 keeps every cell with m_j = 1: max is global max pooling, gem is GeM, addmax is avg + max."""
    x = features(3, 16, 5, 5)
    torch.testing.assert_close(make_pool(mix="max", transport_ratio=1.0)(x), x.amax((2, 3)))
    torch.testing.assert_close(make_pool(mix="addmax", transport_ratio=1.0)(x), x.mean((2, 3)) + x.amax((2, 3)))
    torch.testing.assert_close(make_pool(mix="gem", transport_ratio=1.0)(x), GeneralizedMeanPool("NCHW")(x))
    torch.testing.assert_close(make_pool(mix="sum", transport_ratio=1.0)(x), x.mean((2, 3)))


def test_max_mix_at_large_gamma_is_max_over_the_selected_cells():
    """gamma -> inf: the mu N cells closest to the prototypes, each re-weighted 1 / mu; the others are out."""
    pool = make_pool(mix="max", transport_ratio=0.25, gamma=1e4)
    x = features(2, 16, 4, 4)  # N = 16: 4 cells selected
    with capture_transport(pool) as plans:
        pooled = pool(x)
    cells = x.flatten(2)  # (B, C, N)
    costs = plans[-1].costs.min(1).values  # (B, N)
    ranked = costs.sort(dim=1).values
    assert (ranked[:, 4] - ranked[:, 3]).min() > 2e-3  # a clear 4th / 5th cell: the selection is hard
    chosen = costs.topk(4, dim=1, largest=False).indices
    expected = torch.stack([cells[b][:, chosen[b]].amax(1) / 0.25 for b in range(2)])
    torch.testing.assert_close(pooled, expected, rtol=1e-4, atol=1e-4)
    assert not torch.allclose(pooled, cells.amax(2) / 0.25)  # a left-out cell held some channel's maximum


@pytest.mark.parametrize("mix", ["max", "gem", "addmax"])
def test_mix_gradients_float64(mix):
    pool = make_pool(mix=mix, transport_ratio=0.4).double()
    x = features(2, 16, 3, 3).double().requires_grad_(True)
    prototypes = pool.prototypes.detach().clone().requires_grad_(True)

    def pooled(inp, protos):
        return torch.func.functional_call(pool, {"prototypes": protos}, (inp,))

    assert torch.autograd.gradcheck(pooled, (x, prototypes), eps=1e-6, atol=1e-5)


def test_learned_ratio_starts_at_the_ratio_and_has_the_implicit_gradient():
    pool = make_pool(learn_ratio=True, transport_ratio=0.3).double()
    assert abs(pool.transport.current_ratio - 0.3) < 1e-7
    x = features(2, 16, 4, 4).double()
    plain = make_pool(transport_ratio=0.3).double()
    plain.load_state_dict(pool.state_dict(), strict=False)
    torch.testing.assert_close(pool(x), plain(x))
    logit = pool.transport.ratio_logit.detach().clone().requires_grad_(True)
    assert torch.autograd.gradcheck(
        lambda theta: torch.func.functional_call(pool, {"transport.ratio_logit": theta}, (x,)), (logit,), eps=1e-6, atol=1e-5)
    loss = pool(x).square().sum()
    loss.backward()
    assert pool.transport.ratio_logit.grad is not None and pool.transport.ratio_logit.grad.abs().item() > 0


def test_projection_starts_as_the_identity_and_learns():
    projected, plain = make_pool(project=True), make_pool()
    assert set(projected.state_dict()) == {"prototypes", "projection", "projection_bias"}
    x = features(2, 16, 4, 4)
    torch.testing.assert_close(projected(x), plain(x))
    projected(x).sum().backward()
    assert projected.projection.grad.abs().sum() > 0 and projected.projection_bias.grad.abs().sum() > 0


def test_clip_norm_matches_unit_norm_for_strong_cells_and_separates_weak_ones():
    strong = features(2, 16, 3, 3) * 10 + 1  # every cell's norm far above 1
    clip, unit = make_pool(norm="clip"), make_pool()
    torch.testing.assert_close(clip(strong), unit(strong), rtol=1e-5, atol=1e-5)
    weak = strong / strong.norm(dim=1, keepdim=True) * 0.2  # norm 0.2: at least 0.8 from every prototype
    with torch.no_grad():  # prototype 0 points exactly at a weak cell: unit norm puts it at cost 0, clip at 0.8
        clip.prototypes[0] = unit.prototypes[0] = weak[0, :, 1, 1]
    with capture_transport(clip) as plans:
        clip(weak)
    assert plans[-1].costs.min() >= 0.8 - 1e-4 and abs(plans[-1].costs[0, 0, 4] - 0.8) < 1e-4
    with capture_transport(unit) as plans:
        unit(weak)
    assert plans[-1].costs[0, 0, 4] < 1e-3


def test_new_parameters_are_new_when_loading_a_backbone_and_required_when_loading_gsp():
    """A checkpoint without the pool's parameters (a GAP backbone) loads strictly; one with them must fit."""
    spec = "gsp:num_prototypes=4,mix=gem,learn_ratio=1,project=1"
    backbone = timm.create_model("resnet10t", num_classes=0)
    model = timm.create_model("resnet10t", global_pool=spec, num_classes=0)
    model.load_state_dict(backbone.state_dict())  # strict
    (name, pool), = timm_gsp.gsp_modules(model)
    own = {n for n, _ in pool.named_parameters()}
    assert own == {"prototypes", "gem_p", "transport.ratio_logit", "projection", "projection_bias"}
    state = model.state_dict()
    del state[f"{name}.gem_p"]
    fresh = timm.create_model("resnet10t", global_pool=spec, num_classes=0)
    from timm_gsp.hub.published import load_state_dict
    with pytest.raises(timm_gsp.CheckpointMismatchError, match="gem_p"):
        load_state_dict(fresh, state)  # a trained GSP model's loader requires every pool parameter


def test_options_script_and_match_eager():
    for spec in ("gsp:mix=max", "gsp:mix=gem,learn_ratio=1", "gsp:project=1,norm=clip,mix=addmax"):
        pool = GeneralizedSumPool(16, **{**timm_gsp.parse_gsp_spec(spec), "num_prototypes": 4})
        x = features(2, 16, 4, 4)
        torch.testing.assert_close(torch.jit.script(pool)(x), pool(x), rtol=1e-5, atol=1e-6)


def test_kcenter_pooled_initialisation_uses_image_means():
    model = timm_gsp.create_model("test_resnet", embed_dim=8, num_prototypes=4)
    images = torch.randn(6, 3, 64, 64)
    timm_gsp.init_prototypes_kcenter(model, [images[:3], images[3:]], pooled=True)
    (_, pool), = timm_gsp.gsp_modules(model)
    with capture_transport(model, keep_features=True) as plans:
        model.eval()(images)
    means = plans[-1].features.mean(1)  # (6, C)
    # every prototype is one of the image means
    distance = torch.cdist(pool.prototypes.detach(), means)
    assert distance.min(1).values.max() < 1e-4
    with pytest.raises(ValueError, match="at least K=4"):
        timm_gsp.init_prototypes_kcenter(model, images[:3], pooled=True)


def test_relative_norm_is_clip_at_the_images_mean_cell_norm():
    """f / max(|f|, m), m = the image's mean cell norm: a cell at or above m is unit-normalised, a weaker
    one (norm r) is at least 1 - r / m from every prototype; scaling the image leaves the costs unchanged."""
    x = features(1, 16, 3, 3)
    x[0, :, 1, 1] *= 0.1  # one weak cell
    relative, unit = make_pool(norm="relative"), make_pool()
    with torch.no_grad():  # prototype 0 points exactly at the weak cell: cost 0 under unit, 1 - r / m under relative
        relative.prototypes[0] = unit.prototypes[0] = x[0, :, 1, 1]
    norms = x[0].flatten(1).norm(dim=0)
    with capture_transport(relative) as plans:
        relative(x)
    costs = plans[-1].costs[0]
    assert abs(costs[0, 4] - (1 - norms[4] / norms.mean())) < 1e-4
    with capture_transport(relative) as plans:
        relative(x * 37.0)
    torch.testing.assert_close(plans[-1].costs[0], costs, rtol=1e-5, atol=1e-5)
    uniform = features(1, 16, 3, 3)
    uniform = uniform / uniform.norm(dim=1, keepdim=True)  # every norm equal to the mean: relative is unit
    torch.testing.assert_close(relative(uniform), unit(uniform), rtol=1e-5, atol=1e-5)
