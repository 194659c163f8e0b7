"""timm_gsp.create_model / convert: GSP (or a baseline pool) + embedding heads on any timm model."""
import pytest
import timm
import torch

import timm_gsp
from timm_gsp import GSPRetrievalNet, gsp_modules
from timm_gsp.layers.baseline_pools import GeneralizedMeanPool, ReducePool, create_baseline_pool

from model_zoo import ALL, WRAPPED


@pytest.mark.parametrize("name,kwargs,size", ALL + WRAPPED, ids=[m[0] for m in ALL + WRAPPED])
def test_create_model_gives_embeddings(name, kwargs, size):
    torch.manual_seed(0)
    model = timm_gsp.create_model(name, embed_dim=24, num_prototypes=6, transport_ratio=0.4, gamma=3.0, **kwargs)
    (_, pool), = gsp_modules(model)
    assert (pool.num_prototypes, pool.transport_ratio, pool.gamma) == (6, 0.4, 3.0)
    embeddings = model(torch.randn(2, 3, *size))
    assert embeddings.shape == (2, 24)
    embeddings.sum().backward()
    assert pool.prototypes.grad is not None and torch.isfinite(pool.prototypes.grad).all()
    assert model.get_classifier().weight.abs().sum() > 0  # a zero-initialised head is re-initialised


@pytest.mark.parametrize("name,kwargs,size", [ALL[0], ALL[-7], WRAPPED[0]], ids=["cnn", "vit", "wrapped"])
def test_convert_keeps_the_backbone_weights(name, kwargs, size):
    built = timm.create_model(name, **kwargs)
    backbone_state = {k: v.clone() for k, v in built.state_dict().items()}
    model = timm_gsp.convert(built, embed_dim=16, num_prototypes=4)
    state = {k: v.clone() for k, v in model.state_dict().items()}
    assert model(torch.randn(2, 3, *size)).shape == (2, 16)
    prefix = "backbone." if isinstance(model, GSPRetrievalNet) else ""
    shared = [k for k in backbone_state if prefix + k in state and state[prefix + k].shape == backbone_state[k].shape]
    assert len(shared) > 0.9 * len(backbone_state)
    for key in shared:
        if "head" not in key and "fc." not in key:
            torch.testing.assert_close(state[prefix + key], backbone_state[key], msg=key)


def test_gap_baseline_through_the_same_factory():
    model = timm_gsp.create_model("resnet10t", embed_dim=8, pool="avg")
    assert not gsp_modules(model) and model(torch.randn(2, 3, 64, 64)).shape == (2, 8)
    wrapped = timm_gsp.create_model("xcit_nano_12_p16_224", embed_dim=8, pool="avg", img_size=64)
    assert not gsp_modules(wrapped) and wrapped(torch.randn(2, 3, 64, 64)).shape == (2, 8)


def test_wrapped_model_rebuilds_from_its_recorded_args():
    model = timm_gsp.create_model("xcit_nano_12_p16_224", embed_dim=8, num_prototypes=4, img_size=64).eval()
    rebuilt = timm.create_model("gsp_retrieval", **model.reconstruction_args()).eval()
    rebuilt.load_state_dict(model.state_dict())
    x = torch.randn(2, 3, 64, 64)
    torch.testing.assert_close(rebuilt(x), model(x))


def test_kcenter_initialisation_from_images():
    model = timm_gsp.create_model("resnet10t", embed_dim=8, num_prototypes=5)
    (_, pool), = gsp_modules(model)
    before = pool.prototypes.detach().clone()
    timm_gsp.init_prototypes_kcenter(model, torch.randn(2, 3, 64, 64))
    after = pool.prototypes.detach()
    assert not torch.equal(before, after)
    features = model.forward_features(torch.zeros(1, 3, 64, 64))
    assert after.shape == (5, features.shape[1])


def test_bad_arguments():
    with pytest.raises(ValueError, match="embed_dim"):
        timm_gsp.create_model("resnet10t", embed_dim=-1)
    with pytest.raises(ValueError, match="transport_ratio"):
        timm_gsp.create_model("resnet10t", transport_ratio=1.5)
    with pytest.raises(TypeError, match="timm model"):
        timm_gsp.convert(torch.nn.Linear(2, 2))


# --- baseline pools (spec.BASELINE_POOLS) and embed_dim=0 ------------------------------------------

LAYOUTS = {"NCHW": (2, 6, 3, 4), "NHWC": (2, 3, 4, 6), "NLC": (2, 1 + 12, 6)}  # NLC: one prefix token


def _positions(x, layout):
    """(B, N, C) of the local features of a layout (the NLC prefix token left out)."""
    if layout == "NCHW":
        return x.flatten(2).transpose(1, 2)
    if layout == "NHWC":
        return x.flatten(1, 2)
    return x[:, 1:]


@pytest.mark.parametrize("layout", sorted(LAYOUTS))
@pytest.mark.parametrize("pool", ["avg", "max", "avgmax", "catavgmax", "gem"])
def test_baseline_pools_reduce_every_layout(pool, layout):
    torch.manual_seed(0)
    x = torch.rand(LAYOUTS[layout]) + 0.1
    pooled = create_baseline_pool(pool, layout, num_prefix_tokens=1 if layout == "NLC" else 0)(x)
    positions = _positions(x, layout)
    mean, peak = positions.mean(1), positions.amax(1)
    gem = positions.pow(3).mean(1).pow(1 / 3)
    expected = {"avg": mean, "max": peak, "avgmax": (mean + peak) / 2, "catavgmax": torch.cat([mean, peak], 1), "gem": gem}
    assert pooled.shape == (2, 12 if pool == "catavgmax" else 6)
    torch.testing.assert_close(pooled, expected[pool])


def test_gem_is_average_pooling_at_p_1_and_tends_to_max_pooling():
    x = torch.rand(2, 5, 4, 4) + 0.05
    gem = GeneralizedMeanPool("NCHW")
    assert gem.p.item() == 3.0  # Radenovic et al.'s initial exponent
    with torch.no_grad():
        gem.p.fill_(1.0)
        torch.testing.assert_close(gem(x), x.mean((2, 3)))
        gaps = []
        for p in (4.0, 16.0, 64.0):
            gem.p.fill_(p)
            gaps.append((x.amax((2, 3)) - gem(x)).abs().max().item())
    assert gaps[0] > gaps[1] > gaps[2] and gaps[2] < 0.05


def test_gem_learns_its_exponent_and_clamps_negative_features():
    gem = GeneralizedMeanPool("NLC")
    x = torch.randn(2, 9, 4)  # tokens: negative values too
    out = gem(x)
    assert torch.isfinite(out).all() and (out > 0).all()
    out.sum().backward()
    assert gem.p.grad is not None and gem.p.grad.abs().item() > 0


def test_reduce_pool_refuses_unknown_modes():
    with pytest.raises(ValueError, match="mode"):
        ReducePool("median", "NCHW")
    with pytest.raises(ValueError, match="input_fmt"):
        GeneralizedMeanPool("NCL")


@pytest.mark.parametrize("pool", ["avgmax", "catavgmax", "gem"])
@pytest.mark.parametrize("name,kwargs", [("test_resnet", {}), ("test_vit", {"img_size": 32})], ids=["cnn", "vit"])
def test_new_baseline_pools_build_on_cnns_and_token_models(name, kwargs, pool):
    torch.manual_seed(0)
    model = timm_gsp.create_model(name, embed_dim=8, pool=pool, **kwargs)
    assert not gsp_modules(model)
    x = torch.randn(2, 3, 32, 32)
    assert model(x).shape == (2, 8)
    pooled = model.forward_head(model.forward_features(x), pre_logits=True)
    width = model.num_features * (2 if pool == "catavgmax" else 1)
    assert pooled.shape == (2, width) and model.get_classifier().in_features == width
    # gem is no timm pool type and a ViT head refuses catavgmax: the wrapper pools forward_features
    assert isinstance(model, GSPRetrievalNet) == (pool == "gem" or (name == "test_vit" and pool == "catavgmax"))
    if pool == "gem":
        model(x).sum().backward()
        assert model.pool.p.grad is not None


def test_catavgmax_doubles_the_width_of_an_embedding_free_model():
    for name, kwargs in [("test_resnet", {}), ("test_vit", {"img_size": 32})]:
        model = timm_gsp.create_model(name, embed_dim=0, pool="catavgmax", **kwargs).eval()
        assert model(torch.randn(2, 3, 32, 32)).shape == (2, 2 * model.num_features)


@pytest.mark.parametrize("pool", ["gsp", "avg", "gem"])
@pytest.mark.parametrize("name,kwargs", [("test_resnet", {}), ("xcit_nano_12_p16_224", {"img_size": 32})], ids=["cnn", "wrapped"])
def test_embed_dim_0_keeps_no_embedding_layer(name, kwargs, pool):
    model = timm_gsp.create_model(name, embed_dim=0, pool=pool, num_prototypes=4, **kwargs).eval()
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        embeddings = model(x)
        pooled = model.forward_head(model.forward_features(x), pre_logits=True)
    assert embeddings.shape == (2, model.num_features) and torch.equal(embeddings, pooled)
    assert isinstance(model.get_classifier(), torch.nn.Identity)
    converted = timm_gsp.convert(timm.create_model(name, **kwargs), embed_dim=0, pool=pool, num_prototypes=4)
    assert converted(x).shape == (2, model.num_features)


def test_unknown_pool_is_a_one_line_config_error():
    with pytest.raises(timm_gsp.ConfigError, match=r"one of \('avg', 'max', 'avgmax', 'catavgmax', 'gem'\), got 'median'"):
        timm_gsp.create_model("test_resnet", pool="median")
