"""timm's own model checks (tests/test_models.py of timm) applied to GSP models of every family the
plugin reaches, and the proof that importing the plugin changes nothing for models without GSP.

Per family: forward, backward (every parameter gets a gradient), default / pretrained cfg, TorchScript
(``scriptable=True``, eval) equal to eager, FX feature extraction through timm's helpers (forward equal
to eager, backward), ``features_only`` and ``forward_intermediates`` as for the plain model, and
pretrained loading of checkpoints whose final norm is ``norm`` or ``fc_norm``.
"""
import json
import subprocess
import sys
import textwrap

import pytest
import timm
import torch
from timm.layers import set_scriptable
from timm.models import create_feature_extractor, get_graph_node_names

from timm_gsp import GSPUnsupportedModelError, gsp_modules

from model_zoo import reachable

SPEC = "gsp:num_prototypes=8,transport_ratio=0.3,gamma=5.0"
SMALL_TOKEN = {"depth": 2, "embed_dim": 64, "num_heads": 2}
# (family, model name, create kwargs, input size): one member per way the plugin attaches GSP.
FAMILIES = [
    ("SelectAdaptivePool2d via create_classifier", "resnet10t", {}, 64),
    ("SelectAdaptivePool2d in NormMlpClassifierHead", "convnext_atto", {}, 64),
    ("SelectAdaptivePool2d NHWC (ClassifierHead)", "swin_tiny_patch4_window7_224", {"img_size": 112, "depths": (1, 1, 1, 1)}, 112),
    ("SelectAdaptivePool2d built by the model", "mobilenetv3_small_050", {}, 64),
    ("SelectAdaptivePool2d, width != num_features", "efficientvit_b0", {}, 64),
    ("VisionTransformer (class token)", "test_vit", {}, 160),
    ("VisionTransformer (register tokens)", "vit_small_patch14_reg4_dinov2", dict(SMALL_TOKEN, img_size=56), 56),
    ("VisionTransformer 'avg' (fc_norm)", "vit_medium_patch16_gap_256", dict(SMALL_TOKEN, img_size=64), 64),
    ("Eva", "eva02_tiny_patch14_224", dict(SMALL_TOKEN, img_size=56), 56),
    ("Beit", "beit_base_patch16_224", dict(SMALL_TOKEN, img_size=64), 64),
    ("ClNormMlpClassifierHead (Hiera)", "hiera_tiny_224", {"stages": (1, 1, 1, 1)}, 224),
    ("ClassifierHead NCHW (timm_gsp's PlainCNN)", "plain_cnn6", {"channels": (8, 16, 16)}, 64),
]
IDS = [f[1] for f in FAMILIES]
# timm's own limits (its EXCLUDE_JIT_FILTERS / FX exclusions): the plain model cannot be scripted or traced either.
NOT_SCRIPTABLE = {"hiera_tiny_224": "Hiera builds views from Python lists TorchScript cannot size"}
NOT_TRACEABLE = {"hiera_tiny_224": "timm's FX tracing of Hiera fails (its unroll reads a traced shape)"}


def _create(name, kwargs, scriptable=False, **extra):
    with set_scriptable(scriptable):
        return timm.create_model(name, pretrained=False, num_classes=7, **kwargs, **extra)


def _gsp(name, kwargs, scriptable=False):
    if not reachable(name):
        pytest.skip(f"{name}'s constructor refuses global_pool='gsp' on this timm release (test_timm_plugin checks the error)")
    torch.manual_seed(0)
    model = _create(name, kwargs, scriptable, global_pool=SPEC)
    assert len(gsp_modules(model)) == 1
    return model


@pytest.mark.parametrize("family,name,kwargs,size", FAMILIES, ids=IDS)
def test_forward_backward_and_cfg(family, name, kwargs, size):
    model = _gsp(name, kwargs).train()
    x = torch.randn(2, 3, size, size)
    out = model(x)
    assert out.shape == (2, 7) and not torch.isnan(out).any()
    out.mean().backward()
    params = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    missing = [n for n, p in params if p.grad is None]
    assert not missing, f"parameters without gradient: {missing[:5]}"
    # timm's cfg checks: the same cfg object, the architecture, a classifier that exists
    cfg = model.pretrained_cfg
    assert model.default_cfg == cfg and cfg["architecture"] == name.split(".")[0]
    assert isinstance(model.get_classifier(), torch.nn.Linear)
    model.eval()
    features = model.forward_features(x)
    pooled = model.forward_head(features, pre_logits=True)
    assert pooled.shape == (2, getattr(model, "head_hidden_size", None) or model.num_features)
    model.reset_classifier(0)
    assert model(x).shape == pooled.shape


@pytest.mark.parametrize("family,name,kwargs,size", FAMILIES, ids=IDS)
def test_torchscript_equals_eager(family, name, kwargs, size):
    if name in NOT_SCRIPTABLE:
        with pytest.raises(Exception):  # the limit is timm's: the plain model fails the same way
            torch.jit.script(_create(name, kwargs, scriptable=True).eval())
        pytest.skip(NOT_SCRIPTABLE[name])
    model = _gsp(name, kwargs, scriptable=True).eval()
    x = torch.randn(2, 3, size, size)
    scripted = torch.jit.script(model)
    torch.testing.assert_close(scripted(x), model(x), rtol=1e-5, atol=1e-5)


def _fx_model(model):
    """timm's FX feature extraction (its leaf modules, GeneralizedSumPool among them) of the output node."""
    _, eval_nodes = get_graph_node_names(model)
    return create_feature_extractor(model, return_nodes=[eval_nodes[-1]])


@pytest.mark.parametrize("family,name,kwargs,size", FAMILIES, ids=IDS)
def test_fx_forward_and_backward(family, name, kwargs, size):
    x = torch.randn(2, 3, size, size)
    if name in NOT_TRACEABLE:
        with pytest.raises(Exception):  # the limit is timm's: the plain model fails the same way
            _fx_model(_create(name, kwargs).eval())(x)
        pytest.skip(NOT_TRACEABLE[name])
    model = _gsp(name, kwargs).eval()
    fx = _fx_model(model)
    (traced,) = fx(x).values()
    torch.testing.assert_close(traced, model(x), rtol=1e-5, atol=1e-5)
    fx.train()
    (out,) = fx(x).values()
    out.mean().backward()
    prototypes = [p for n, p in fx.named_parameters() if n.endswith("prototypes")]
    assert len(prototypes) == 1 and prototypes[0].grad is not None and torch.isfinite(prototypes[0].grad).all()
    assert all(p.grad is not None for p in fx.parameters() if p.requires_grad)


@pytest.mark.parametrize("family,name,kwargs,size", FAMILIES, ids=IDS)
def test_features_and_intermediates_as_for_the_plain_model(family, name, kwargs, size):
    torch.manual_seed(0)
    plain = _create(name, kwargs).eval()
    torch.manual_seed(0)
    model = _gsp(name, kwargs).eval()
    model.load_state_dict(plain.state_dict(), strict=False)  # same backbone weights
    assert model.feature_info == plain.feature_info
    x = torch.randn(1, 3, size, size)
    if hasattr(plain, "forward_intermediates"):
        expected = plain.forward_intermediates(x, indices=1, intermediates_only=True)
        got = model.forward_intermediates(x, indices=1, intermediates_only=True)
        assert len(got) == len(expected)
        for a, b in zip(got, expected):
            torch.testing.assert_close(a, b)
    extractor = _create(name, kwargs, features_only=True, out_indices=(1,), global_pool=SPEC)
    reference = _create(name, kwargs, features_only=True, out_indices=(1,))
    assert [f.shape for f in extractor(x)] == [f.shape for f in reference(x)]


# --- pretrained checkpoints whose final norm is `fc_norm` or `norm` --------------------------------

NORM_FAMILIES = [  # (name, create kwargs, input size, final norm of the plain model's checkpoint)
    ("eva02_tiny_patch14_224", dict(SMALL_TOKEN, img_size=56), 56, "fc_norm"),
    ("beit_base_patch16_224", dict(SMALL_TOKEN, img_size=64), 64, "fc_norm"),
    ("vit_tiny_patch16_224", dict(SMALL_TOKEN, img_size=64, global_pool="avg"), 64, "fc_norm"),
    ("vit_tiny_patch16_224", dict(SMALL_TOKEN, img_size=64), 64, "norm"),
    ("hiera_tiny_224", {"stages": (1, 1, 1, 1)}, 224, "head.norm"),
]


@pytest.mark.parametrize("name,kwargs,size,norm", NORM_FAMILIES, ids=[f"{n[0]}-{n[3]}" for n in NORM_FAMILIES])
def test_pretrained_final_norm_is_kept_and_applied_to_every_token(name, kwargs, size, norm, tmp_path):
    torch.manual_seed(1)
    plain = timm.create_model(name, num_classes=0, **kwargs)
    state = plain.state_dict()
    perturbed = {f"{norm}.weight": torch.rand_like(state[f"{norm}.weight"]) + 0.5,
                 f"{norm}.bias": torch.randn_like(state[f"{norm}.bias"])}
    state.update(perturbed)  # a stand-in for a Hub checkpoint: values no initialisation produces
    path = tmp_path / "checkpoint.pth"
    torch.save(state, path)
    gsp_kwargs = {k: v for k, v in kwargs.items() if k != "global_pool"}
    model = timm.create_model(name, pretrained=True, pretrained_cfg_overlay={"file": str(path), "custom_load": False}, num_classes=0,
                              global_pool=SPEC, **gsp_kwargs).eval()
    loaded = model.state_dict()
    norms = [k for k in loaded if k.endswith("norm.weight") and torch.equal(loaded[k], perturbed[f"{norm}.weight"])]
    assert len(norms) == 1, "the pretrained final norm must be loaded, exactly once"
    backbone = {k: v for k, v in state.items() if k not in perturbed}
    for key, value in backbone.items():
        torch.testing.assert_close(loaded[key], value, msg=key)
    # GSP pools the tokens after that norm: equal to the pool applied to norm(tokens)
    x = torch.randn(2, 3, size, size)
    (_, pool), = gsp_modules(model)
    norm_module = model.get_submodule(norms[0][: -len(".weight")])
    tokens = model.forward_features(x)
    if norm_module is not getattr(model, "norm", None):  # the head applies it, not forward_features
        tokens = norm_module(tokens)
    torch.testing.assert_close(model(x), pool(tokens))


# --- importing the plugin changes nothing for models without GSP --------------------------------

_PLAIN_PROBE = textwrap.dedent("""
    import json, sys, warnings
    warnings.simplefilter("ignore")
    import torch, timm
    from timm.layers import set_scriptable
    from timm.models import create_feature_extractor, get_graph_node_names
    if sys.argv[1] == "plugin":
        import timm_gsp
    out = {}
    for name, kwargs, size in %s:
        torch.manual_seed(0)
        with set_scriptable(True):
            model = timm.create_model(name, num_classes=5, **kwargs).eval()
        x = torch.randn(2, 3, size, size, generator=torch.Generator().manual_seed(1))
        row = {"eager": model(x).tolist(), "state": sorted(model.state_dict())}
        row["script"] = (torch.jit.script(model)(x) - model(x)).abs().max().item()
        fx = create_feature_extractor(model, return_nodes=[get_graph_node_names(model)[1][-1]])
        row["fx"] = (list(fx(x).values())[0] - model(x)).abs().max().item()
        out[name] = row
    print(json.dumps(out))
""")
PLAIN_MODELS = [("test_vit", {}, 160), ("deit_tiny_patch16_224", {"img_size": 64}, 64),
                ("eva02_tiny_patch14_224", dict(SMALL_TOKEN, img_size=56), 56), ("test_resnet", {}, 64),
                ("test_convnext", {}, 64)]


def test_plugin_has_no_side_effects_on_models_without_gsp():
    script = _PLAIN_PROBE % repr(PLAIN_MODELS)
    runs = {}
    for mode in ("plain", "plugin"):
        done = subprocess.run([sys.executable, "-c", script, mode], capture_output=True, text=True, timeout=600)
        assert done.returncode == 0, f"{mode}: {done.stderr[-2000:]}"
        runs[mode] = json.loads(done.stdout.strip().splitlines()[-1])
    for name, _, _ in PLAIN_MODELS:
        plain, plugin = runs["plain"][name], runs["plugin"][name]
        assert plugin["eager"] == plain["eager"], name  # bit for bit
        assert plugin["state"] == plain["state"], name
        assert plugin["script"] <= 1e-5 and plugin["fx"] <= 1e-5, name  # TorchScript and FX still work


# --- GSP with border=1: still scripted and FX-traced like eager ------------------------------------

BORDER_SPEC = SPEC + ",border=1"
BORDER_FAMILIES = [  # (name, create kwargs, input size, feature grid)
    ("resnet10t", {}, 128, (4, 4)),
    ("swin_tiny_patch4_window7_224", {"img_size": 112, "depths": (1, 1, 1, 1)}, 112, (4, 4)),  # 28 -> 14 -> 7 -> 4 (padded)
    ("vit_small_patch14_reg4_dinov2", dict(SMALL_TOKEN, img_size=56), 56, (4, 4)),  # tokens of a fixed patch grid
]


@pytest.mark.parametrize("name,kwargs,size,grid", BORDER_FAMILIES, ids=[f[0] for f in BORDER_FAMILIES])
def test_border_scripts_and_traces_like_eager(name, kwargs, size, grid):
    if not reachable(name):
        pytest.skip(f"{name}'s constructor refuses global_pool='gsp' on this timm")
    torch.manual_seed(0)
    model = _create(name, kwargs, scriptable=True, global_pool=BORDER_SPEC).eval()
    (_, pool), = gsp_modules(model)
    assert pool.border == 1
    x = torch.randn(2, 3, size, size)
    from timm_gsp import capture_transport

    with capture_transport(model) as plans, torch.no_grad():
        eager = model(x)
    weights = plans[-1].weights.view(2, *plans[-1].grid_size)
    if grid is not None:
        assert plans[-1].grid_size == grid
    assert weights[:, 0].abs().sum() == 0 and weights[:, -1].abs().sum() == 0 and weights[:, :, 0].abs().sum() == 0
    torch.testing.assert_close(torch.jit.script(model)(x), eager, rtol=1e-5, atol=1e-5)
    (traced,) = _fx_model(model)(x).values()
    torch.testing.assert_close(traced, eager, rtol=1e-5, atol=1e-5)


def test_border_on_vit_tokens_is_refused_naming_border():
    # test_vit is built with dynamic_img_size: its patch grid follows the image, so the pool cannot know it
    with pytest.raises(GSPUnsupportedModelError, match="border"):
        timm.create_model("test_vit", global_pool=BORDER_SPEC)
