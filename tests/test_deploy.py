"""Deploying GSP models (timm_gsp.deploy): torch.compile, torch.export, ONNX, channels_last.

The solver's early exit reads a tensor value; traced graphs must take its fixed-iteration path.
Each traced graph is checked on inputs other than the one it was traced with (other batch sizes,
another scale), where an early exit baked in at trace time would give other weights.
"""
import pytest
import torch

import timm_gsp
from timm_gsp import gsp_modules
from timm_gsp.deploy import example_input, export_onnx, export_program, onnx_max_error


def _model(name="resnet10t", **kwargs):
    torch.manual_seed(0)
    return timm_gsp.create_model(name, embed_dim=8, num_prototypes=4, **kwargs).eval()


def _other_inputs(size=(64, 64)):
    generator = torch.Generator().manual_seed(1)
    return [torch.randn(1, 3, *size, generator=generator), 4.0 * torch.randn(3, 3, *size, generator=generator)]


@pytest.fixture(scope="module")
def cnn():
    return _model()


@pytest.fixture(scope="module")
def program(cnn):
    return export_program(cnn, torch.randn(2, 3, 64, 64))


def test_example_input_has_the_models_input_size():
    model = _model("vit_tiny_patch16_224", img_size=64)
    assert example_input(model, batch_size=3).shape == (3, 3, 64, 64)


def test_example_input_takes_the_size_the_model_is_built_for_from_its_description():
    """timm has no public accessor of a model's img_size: the description (or data config) says it."""
    config = timm_gsp.RetrievalModelConfig("test_vit", embed_dim=8, pool="gsp", model_kwargs={"img_size": 48})
    model = config.build().eval()
    assert example_input(model, config).shape == (2, 3, 48, 48)
    assert example_input(model, {"input_size": (3, 32, 32)}).shape == (2, 3, 32, 32)
    assert example_input(model, 40, batch_size=3).shape == (3, 3, 40, 40)
    with torch.no_grad():  # the model runs at that size
        assert model(example_input(model, config)).shape == (2, 8)
    with pytest.raises(timm_gsp.ConfigError, match=r"input_size must be an int, \(H, W\) or \(C, H, W\)"):
        example_input(model, [3, 32, 32, 1])


@torch.no_grad()
def test_exported_program_matches_eager_on_new_inputs(cnn, program):
    exported = program.module()
    for images in _other_inputs():
        torch.testing.assert_close(exported(images), cnn(images), rtol=1e-5, atol=1e-6)


@torch.no_grad()
def test_exported_vit_matches_eager():
    model = _model("vit_tiny_patch16_224", img_size=64)
    exported = export_program(model, torch.randn(2, 3, 64, 64)).module()
    for images in _other_inputs():
        torch.testing.assert_close(exported(images), model(images), rtol=1e-5, atol=1e-6)


def test_onnx_matches_onnxruntime(cnn, program, tmp_path):
    pytest.importorskip("onnxscript", reason="ONNX export needs onnxscript (pip install timm-gsp[export])")
    pytest.importorskip("onnxruntime", reason="the ONNX check needs onnxruntime (pip install timm-gsp[export])")
    path = export_onnx(program, tmp_path / "gsp.onnx", torch.randn(2, 3, 64, 64))
    assert path.stat().st_size > 0
    assert onnx_max_error(path, cnn, _other_inputs()) < 1e-4  # dynamic batch: 1 and 3


def test_compile_fullgraph_matches_eager_forward_and_backward():
    """``fullgraph=True``: no graph break anywhere in GSP. aot_eager runs dynamo and AOTAutograd
    (the graph capture that inductor compiles) without the slow C++ build; inductor is in the slow test."""
    torch._dynamo.reset()
    model = _model()
    compiled = torch.compile(model, backend="aot_eager", fullgraph=True)
    images = torch.randn(2, 3, 64, 64)
    (_, pool), = gsp_modules(model)
    outputs, grads = [], []
    for net in (model, compiled):
        # eval: batch norm leaves its running statistics alone, so both runs see the same model.
        model.zero_grad()
        out = net(images)
        out.square().sum().backward()
        outputs.append(out.detach())
        grads.append(pool.prototypes.grad.clone())
    torch.testing.assert_close(outputs[1], outputs[0], rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(grads[1], grads[0], rtol=1e-4, atol=1e-6)


@pytest.mark.slow
def test_compile_inductor_matches_eager():
    torch._dynamo.reset()
    model = _model()
    compiled = torch.compile(model)
    with torch.no_grad():
        for images in _other_inputs():
            torch.testing.assert_close(compiled(images), model(images), rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("name", ["resnet10t", "convnext_atto"])
def test_channels_last(name):
    model = _model(name)
    images = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        expected = model(images)
        model = model.to(memory_format=torch.channels_last)
        got = model(images.contiguous(memory_format=torch.channels_last))
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-5)
    model.train()
    model(images.contiguous(memory_format=torch.channels_last)).sum().backward()
    (_, pool), = gsp_modules(model)
    assert torch.isfinite(pool.prototypes.grad).all()
