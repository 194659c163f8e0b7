"""``global_pool="gsp"`` across timm families, reset_classifier, pretrained loading, errors."""
import pytest
import timm
import torch

import timm_gsp
from timm_gsp import GSPUnsupportedModelError, gsp_modules
from timm_gsp import timm_plugin

from model_zoo import ALL, WRAPPED, reachable

SPEC = "gsp:num_prototypes=8,transport_ratio=0.3,gamma=5.0"


def _prototype_grads(model):
    return [p.grad for name, p in model.named_parameters() if name.endswith("prototypes")]


@pytest.mark.parametrize("name,kwargs,size", ALL, ids=[m[0] for m in ALL])
def test_global_pool_gsp_forward_backward(name, kwargs, size):
    torch.manual_seed(0)
    if not reachable(name):  # this timm's constructor refuses the pool name: an honest, named error
        with pytest.raises(GSPUnsupportedModelError, match=name.split("_")[0]):
            timm.create_model(name, pretrained=False, global_pool=SPEC, num_classes=7, **kwargs)
        return
    model = timm.create_model(name, pretrained=False, global_pool=SPEC, num_classes=7, **kwargs)
    pools = gsp_modules(model)
    assert len(pools) == 1 and pools[0][1].num_prototypes == 8 and not pools[0][1].is_lazy()
    model.train()
    out = model(torch.randn(2, 3, *size))
    assert out.shape == (2, 7)
    out.square().mean().backward()
    grads = _prototype_grads(model)
    assert len(grads) == 1 and grads[0] is not None and torch.isfinite(grads[0]).all()
    # num_classes=0: the pooled GSP vector itself
    model.reset_classifier(0)
    pooled_width = getattr(model, "head_hidden_size", None) or model.num_features
    assert model(torch.randn(2, 3, *size)).shape == (2, pooled_width)


@pytest.mark.parametrize("name", ["resnet10t", "convnext_atto", "swin_tiny_patch4_window7_224", "vit_tiny_patch16_224"])
def test_head_is_gsp_over_forward_features(name):
    if not reachable(name):
        pytest.skip(f"{name} refuses global_pool='gsp' on this timm (test_global_pool_gsp_forward_backward checks the error)")
    kwargs = {"img_size": 64} if "vit" in name else {"img_size": 112} if "swin" in name else {}
    size = 112 if "swin" in name else 64
    model = timm.create_model(name, global_pool="gsp", num_classes=0, **kwargs).eval()
    x = torch.randn(2, 3, size, size)
    features = model.forward_features(x)
    pool = gsp_modules(model)[0][1]
    pooled = pool(features)
    if "convnext" in name:  # NormMlpClassifierHead: pool -> LayerNorm2d -> flatten
        pooled = model.head.norm(pooled).flatten(1)
    torch.testing.assert_close(model.forward_head(features, pre_logits=True), pooled)
    torch.testing.assert_close(model(x), pooled)


def test_reset_classifier_switches_pools_both_ways():
    model = timm.create_model("resnet10t", num_classes=5)
    assert not gsp_modules(model)
    model.reset_classifier(3, "gsp:num_prototypes=4")
    (_, pool), = gsp_modules(model)
    # timm does not tell a pool its width: sized by the first forward (torch's lazy-module rule)
    assert pool.is_lazy()
    assert model(torch.randn(1, 3, 64, 64)).shape == (1, 3)
    assert pool.prototypes.shape == (4, model.num_features)
    model.reset_classifier(3, "avg")
    assert not gsp_modules(model)

    vit = timm.create_model("vit_tiny_patch16_224", img_size=64, num_classes=0)
    vit.reset_classifier(0, "gsp")
    (name, pool), = gsp_modules(vit)
    assert name == "head_drop.pool" and pool.num_prefix_tokens == 1 and not pool.is_lazy()
    vit.reset_classifier(0, "avg")
    assert not gsp_modules(vit) and vit(torch.randn(1, 3, 64, 64)).shape == (1, vit.num_features)


def test_lazy_family_is_sized_at_creation():
    model = timm.create_model("efficientvit_b0", global_pool="gsp:num_prototypes=4")
    pool = gsp_modules(model)[0][1]
    assert not pool.is_lazy() and pool.prototypes.shape == (4, 1024)  # not num_features (128)
    torch.optim.SGD(model.parameters(), lr=0.1)  # all parameters are real tensors
    converted = timm_gsp.convert(timm.create_model("efficientvit_b0"), embed_dim=2, num_prototypes=6)
    assert gsp_modules(converted)[0][1].prototypes.shape == (6, 1024)


def _save_backbone_checkpoint(name, tmp_path, **kwargs):
    plain = timm.create_model(name, **kwargs)
    path = tmp_path / f"{name}.pth"
    torch.save(plain.state_dict(), path)
    return plain, path


@pytest.mark.parametrize("name,kwargs", [("resnet10t", {}), ("vit_tiny_patch16_224", {"img_size": 64})])
def test_pretrained_backbone_checkpoint_loads_strictly_except_prototypes(name, kwargs, tmp_path):
    plain, path = _save_backbone_checkpoint(name, tmp_path, **kwargs)
    model = timm.create_model(name, pretrained=True, pretrained_cfg_overlay={"file": str(path), "custom_load": False},
                              global_pool="gsp", **kwargs)
    state = model.state_dict()
    for key, value in plain.state_dict().items():
        torch.testing.assert_close(state[key], value, msg=key)
    assert any(key.endswith("prototypes") for key in state)
    assert model.pretrained_cfg["architecture"] == name and model.default_cfg is model.pretrained_cfg


def test_pretrained_checkpoint_missing_backbone_weights_still_fails(tmp_path):
    plain, path = _save_backbone_checkpoint("resnet10t", tmp_path)
    state = plain.state_dict()
    del state["layer1.0.conv1.weight"]
    torch.save(state, path)
    with pytest.raises(RuntimeError, match="layer1.0.conv1.weight"):
        timm.create_model("resnet10t", pretrained=True, pretrained_cfg_overlay={"file": str(path)}, global_pool="gsp")


def test_features_only_and_feature_info_unchanged():
    plain = timm.create_model("resnet10t")
    model = timm.create_model("resnet10t", global_pool="gsp")
    assert model.feature_info == plain.feature_info
    extractor = timm.create_model("resnet10t", features_only=True, global_pool="gsp")
    assert [f.shape[1] for f in extractor(torch.randn(1, 3, 64, 64))] == extractor.feature_info.channels()


def test_pool_string_records_the_gsp_layer():
    model = timm.create_model("resnet10t", global_pool=SPEC, num_classes=3)
    assert model.global_pool.pool_type == SPEC
    rebuilt = timm.create_model("resnet10t", global_pool=model.global_pool.pool_type, num_classes=3)
    rebuilt.load_state_dict(model.state_dict())  # identical layer: strict load works
    x = torch.randn(2, 3, 64, 64)
    torch.testing.assert_close(rebuilt.eval()(x), model.eval()(x))


@pytest.mark.parametrize("name,kwargs,size", WRAPPED, ids=[m[0] for m in WRAPPED])
def test_unsupported_family_names_itself(name, kwargs, size):
    family = name.split("_")[0]
    with pytest.raises(GSPUnsupportedModelError, match=family):
        timm.create_model(name, global_pool="gsp", **kwargs)


def test_model_that_ignores_global_pool_is_reported():
    with pytest.raises(GSPUnsupportedModelError, match="distilled|deit"):
        timm.create_model("deit_tiny_distilled_patch16_224", global_pool="gsp", img_size=64)


@pytest.mark.parametrize("spec,match", [("gsp:gamma=0", "gamma"), ("gsp:k=3", "bad GSP pool option"), ("gsp:num_prototypes=x", "int"),
                                        ("gsp:num_prototypes=2.7", "integer, got '2.7'"), ("gsp:gamma=5,gamma=6", "given twice")])
def test_bad_spec_is_rejected_early(spec, match):
    with pytest.raises(ValueError, match=match):
        timm.create_model("resnet10t", global_pool=spec)


def test_register_is_idempotent():
    before = timm.layers.SelectAdaptivePool2d.__init__
    timm_gsp.register()
    timm_gsp.register()
    assert timm.layers.SelectAdaptivePool2d.__init__ is before
    assert timm.create_model is timm.models.create_model


def test_version_guard(monkeypatch):
    monkeypatch.setattr(timm, "__version__", "0.9.16")
    with pytest.raises(ImportError, match="0.9.16"):
        timm_plugin.register()
    monkeypatch.setattr(timm, "__version__", "2.0.0")
    with pytest.raises(ImportError, match="2.0.0"):
        timm_plugin.register()


def test_border_pool_string_round_trip():
    assert "border" not in timm_gsp.format_gsp_spec(num_prototypes=8)  # existing strings unchanged
    assert timm_gsp.format_gsp_spec(num_prototypes=8, border=0) == timm_gsp.format_gsp_spec(num_prototypes=8)
    spec = timm_gsp.format_gsp_spec(num_prototypes=8, border=2)
    assert spec.endswith(",border=2")
    assert timm_gsp.parse_gsp_spec(spec) == {**timm_gsp.GSP_DEFAULTS, "num_prototypes": 8, "border": 2}
    assert timm_gsp.parse_gsp_spec("gsp")["border"] == 0
    for bad, match in [("gsp:border=-1", "border must be an integer >= 0"), ("gsp:border=1.5", "border.*integer")]:
        with pytest.raises(ValueError, match=match):
            timm_gsp.parse_gsp_spec(bad)
    model = timm.create_model("resnet10t", global_pool=spec, num_classes=3)
    (_, pool), = gsp_modules(model)
    assert pool.border == 2 and pool.spec == spec == model.global_pool.pool_type
    rebuilt = timm.create_model("resnet10t", global_pool=pool.spec, num_classes=3)
    rebuilt.load_state_dict(model.state_dict())
    x = torch.randn(2, 3, 224, 224)  # 7x7 map: a 3x3 interior
    torch.testing.assert_close(rebuilt.eval()(x), model.eval()(x))


def test_vit_pool_knows_its_patch_grid_for_border():
    model = timm.create_model("vit_tiny_patch16_224", img_size=64, num_classes=0, global_pool="gsp:border=1").eval()
    (_, pool), = gsp_modules(model)
    assert pool.grid_size == (4, 4) and pool.border == 1
    with timm_gsp.capture_transport(model) as plans, torch.no_grad():
        model(torch.randn(2, 3, 64, 64))
    assert plans[-1].grid_size == (4, 4)
    weights = plans[-1].weights.view(2, 4, 4)
    assert torch.equal(weights[:, 0], torch.zeros(2, 4)) and torch.equal(weights[:, :, -1], torch.zeros(2, 4))
    torch.testing.assert_close(weights[:, 1:3, 1:3].sum((1, 2)), torch.ones(2))


def test_border_on_tokens_of_unknown_grid_is_a_config_error():
    # dynamic_img_size: the patch grid changes with the image, so the pool cannot know it
    with pytest.raises(GSPUnsupportedModelError, match="border=1 needs the grid of the tokens"):
        timm.create_model("vit_tiny_patch16_224", img_size=64, dynamic_img_size=True, global_pool="gsp:border=1")
    with pytest.raises(timm_gsp.ConfigError, match="border=1 needs the grid of the tokens"):
        timm_gsp.create_model("vit_tiny_patch16_224", img_size=64, dynamic_img_size=True, pool="gsp:border=1")


def test_one_timm_version_parser():
    assert timm_plugin.timm_version("1.0.16.dev0") == (1, 0, 16)
    assert timm_plugin.timm_version("1.0.16rc1") == (1, 0, 16)
    assert timm_plugin.timm_version("2.0") == (2, 0, 0)
    assert timm_plugin.timm_version() == timm_plugin.timm_version(timm.__version__) >= timm_plugin.SUPPORTED_TIMM_VERSIONS[0]
