"""GSP heat maps (timm_gsp.viz): values from the transport, layout on the image, PNG output."""
import pytest
import torch
from PIL import Image

import timm_gsp
from timm_gsp import capture_transport, gsp_modules
from timm_gsp.viz import denormalize, feature_grid, overlay, pooling_maps, save_overlays

# (name, create kwargs, input (H, W)): NCHW, NHWC, ViT tokens (square: patch_embed.grid_size;
# non-square with dynamic size: image // patch), and a wrapped token family.
LAYOUTS = [
    ("resnet10t", {}, (128, 192)),
    ("swin_tiny_patch4_window7_224", {"img_size": 112}, (112, 112)),
    ("vit_tiny_patch16_224", {"img_size": 64}, (64, 64)),
    ("vit_tiny_patch16_224", {"img_size": 64, "dynamic_img_size": True}, (64, 96)),
    ("xcit_nano_12_p16_224", {"img_size": 64}, (64, 64)),
]


def _pool_tokens(model, images):
    """The features entering the GSP pool as (N, C), in the pool's own token order."""
    (_, pool), = gsp_modules(model)
    seen = {}
    handle = pool.register_forward_pre_hook(lambda m, args: seen.__setitem__("x", args[0]))
    with torch.no_grad():
        model(images)
    handle.remove()
    x = seen["x"][0]
    if pool.input_fmt == "NCHW":
        return x.flatten(1).T
    if pool.input_fmt == "NHWC":
        return x.flatten(0, 1)
    return x[pool.num_prefix_tokens:]


@pytest.mark.parametrize("name,kwargs,size", LAYOUTS, ids=["nchw", "nhwc", "vit", "vit-nonsquare", "wrapped"])
def test_selection_lands_on_the_object_in_image_coordinates(name, kwargs, size):
    """A bright square on a noise background. The prototype is the token that the square changes
    most (found by comparing with the background alone, without any grid), so GSP selects the
    square's tokens. The heat map, laid out by viz and upsampled, must peak inside the square:
    grid size and orientation are right."""
    torch.manual_seed(0)
    model = timm_gsp.create_model(name, embed_dim=8, num_prototypes=1, transport_ratio=0.2, gamma=20.0, **kwargs).eval()
    height, width = size
    background = 0.05 * torch.randn(1, 3, height, width)
    images = background.clone()
    images[:, :, :height // 4, width - width // 4:] += 2.5  # a corner object: any transpose or swap moves it
    tokens = _pool_tokens(model, images)
    changed = (tokens - _pool_tokens(model, background)).norm(dim=1).argmax()
    (_, pool), = gsp_modules(model)
    with torch.no_grad():
        pool.prototypes.copy_(tokens[changed][None])
    maps = pooling_maps(model, images)
    heat = torch.nn.functional.interpolate(maps.selection[:, None], size=size, mode="bilinear")[0, 0]
    quadrant = torch.zeros_like(heat, dtype=torch.bool)
    quadrant[:height // 2, width // 2:] = True  # the object's quadrant
    assert heat[quadrant].mean() > 2 * heat[~quadrant].mean()
    row, col = divmod(int(heat.argmax()), width)
    assert row < height // 2 and col >= width // 2


@pytest.mark.parametrize("name,kwargs,size", [LAYOUTS[0], LAYOUTS[2]], ids=["nchw", "vit"])
def test_maps_are_the_transport_of_the_forward(name, kwargs, size):
    torch.manual_seed(0)
    model = timm_gsp.create_model(name, embed_dim=8, num_prototypes=5, **kwargs).eval()
    images = torch.randn(2, 3, *size)
    maps = pooling_maps(model, images)
    with capture_transport(model) as plans, torch.no_grad():
        model(images)
    batch, height, width = maps.weights.shape
    torch.testing.assert_close(maps.weights.reshape(batch, -1), plans[-1].weights)
    torch.testing.assert_close(maps.attributes, plans[-1].attributes)
    assert maps.assignments.shape == (2, 5, height, width)
    torch.testing.assert_close(maps.assignments.sum(1), torch.ones(batch, height, width))
    # The attributes are the weight-averaged assignments: the softmax viz rebuilds is GSP's own.
    torch.testing.assert_close(torch.einsum("bhw,bkhw->bk", maps.weights, maps.assignments), maps.attributes)
    (_, pool), = gsp_modules(model)
    torch.testing.assert_close(maps.selection, (maps.weights * height * width * pool.transport_ratio).clamp(0, 1))


def test_feature_grid_factorisation():
    model = torch.nn.Linear(1, 1)  # no patch_embed: the factorisation closest to the image's shape
    assert feature_grid(model, 24, (64, 96)) == (4, 6)
    assert feature_grid(model, 24, (96, 64)) == (6, 4)
    assert feature_grid(model, 49, (224, 224)) == (7, 7)
    assert feature_grid(model, 7, (32, 256)) == (1, 7)


def test_overlay_colours_and_blend():
    image = torch.full((3, 32, 32), 0.5)
    heat = torch.tensor([[0.0, 0.0], [0.0, 1.0]])
    pixels = overlay(image, heat, alpha=0.5).load()
    assert pixels[0, 0] == (64, 64, 64)  # heat 0 -> black, half blended over gray 128
    assert pixels[31, 31] == (191, 191, 64)  # heat 1 -> yellow: (128 + 255) / 2, rounded down
    relative = overlay(image, heat * 0.1, alpha=0.5, scale=None).load()
    assert relative[31, 31] == (191, 191, 64)  # scale=None: the map's maximum is drawn as 1
    with pytest.raises(ValueError, match=r"\(h, w\)"):
        overlay(image, torch.ones(2, 2, 2))


def test_denormalize_inverts_the_normalisation():
    mean, std = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
    raw = torch.rand(2, 3, 8, 8)
    normalised = (raw - torch.tensor(mean).view(1, 3, 1, 1)) / torch.tensor(std).view(1, 3, 1, 1)
    torch.testing.assert_close(denormalize(normalised, mean, std), raw)


def test_save_overlays_writes_one_png_per_map(tmp_path):
    torch.manual_seed(0)
    model = timm_gsp.create_model("resnet10t", embed_dim=8, num_prototypes=5).eval()
    written = save_overlays(model, torch.randn(2, 3, 64, 80), tmp_path, ["a", "b"], mean=(0.5,) * 3, std=(0.5,) * 3,
                            top_prototypes=2)
    assert len(written) == 2 * 3 and all(path.exists() for path in written)
    assert [p.name for p in written[:1]] == ["a_gsp.png"]
    assert sum(p.name.startswith("b_prototype") for p in written) == 2
    with Image.open(written[0]) as image:
        assert image.size == (80, 64)
    with pytest.raises(ValueError, match="names"):
        save_overlays(model, torch.randn(2, 3, 64, 64), tmp_path, ["only-one"], mean=(0.5,) * 3, std=(0.5,) * 3)


def test_model_without_gsp_is_refused():
    model = timm_gsp.create_model("resnet10t", embed_dim=8, pool="avg")
    with pytest.raises(ValueError, match="no GeneralizedSumPool"):
        pooling_maps(model, torch.randn(1, 3, 64, 64))
