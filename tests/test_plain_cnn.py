"""PlainCNN (timm_gsp.models.plain_cnn): registered with timm, full resolution in its first stage, timm's head.

timm's own model checks (forward / backward, cfg, TorchScript, FX, features_only) run on it with GSP in
test_timm_model_checks.py; these tests pin down what the architecture promises.
"""
import timm
import torch

import timm_gsp
from timm_gsp import gsp_modules


def test_registered_with_timm_and_sized_as_documented():
    assert timm.is_model("plain_cnn6") and "plain_cnn6" in timm.list_models("plain_cnn*")
    model = timm.create_model("plain_cnn6", num_classes=0)
    convs = [m for m in model.modules() if isinstance(m, torch.nn.Conv2d)]
    assert [(c.in_channels, c.out_channels) for c in convs] == [(3, 32), (32, 32), (32, 64), (64, 64), (64, 128), (128, 128)]
    assert sum(c.weight.numel() for c in convs) == 286_560  # six 3 x 3 convs, no bias (BatchNorm follows)
    assert model.num_features == 128


def test_first_stage_runs_at_the_input_resolution_and_output_stride_is_8():
    model = timm.create_model("plain_cnn6", num_classes=0).eval()
    sizes = []
    hooks = [m.register_forward_hook(lambda m, i, o: sizes.append(tuple(o.shape[-2:])))
             for m in model.modules() if isinstance(m, torch.nn.Conv2d)]
    features = model.forward_features(torch.randn(1, 3, 96, 80))
    for hook in hooks:
        hook.remove()
    assert sizes == [(96, 80), (96, 80), (48, 40), (48, 40), (24, 20), (24, 20)]
    assert features.shape == (1, 128, 12, 10)
    assert tuple(model.pretrained_cfg["pool_size"]) == tuple(s // 8 for s in model.pretrained_cfg["input_size"][1:])
    assert [f["reduction"] for f in model.feature_info] == [2, 4, 8]


def test_gsp_head_pools_its_feature_map():
    model = timm.create_model("plain_cnn6", global_pool="gsp:num_prototypes=8", num_classes=0).eval()
    (_, pool), = gsp_modules(model)
    x = torch.randn(2, 3, 96, 96)
    with timm_gsp.capture_transport(model) as plans:
        pooled = model(x)
    assert pooled.shape == (2, 128) and pool.prototypes.shape == (8, 128)
    assert plans[-1].grid_size == (12, 12) and plans[-1].weights.shape == (2, 144)
    embedder = timm_gsp.create_model("plain_cnn6", embed_dim=16, num_prototypes=8)
    assert embedder(x).shape == (2, 16)


def test_width_and_depth_are_create_arguments():
    model = timm.create_model("plain_cnn6", channels=(8, 16, 24, 32), depth=1, num_classes=5)
    assert model.num_features == 32 and model.forward_features(torch.randn(1, 3, 64, 64)).shape == (1, 32, 4, 4)
    assert model(torch.randn(1, 3, 64, 64)).shape == (1, 5)
