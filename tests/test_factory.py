"""timm_gsp.create_model / convert: GSP + embedding heads on any timm model."""
import pytest
import timm
import torch

import timm_gsp
from timm_gsp import GSPRetrievalNet, gsp_modules

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
