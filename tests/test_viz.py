"""GSP heat maps (timm_gsp.retrieval.viz): values from the transport, layout on the image, PNG output."""
import numpy as np
import pytest
import timm
import torch
from PIL import Image

import timm_gsp
from timm_gsp import ConfigError, capture_transport, gsp_modules
from timm_gsp.retrieval.viz import (BACKGROUND, CORRECT_COLOR, UNKNOWN_COLOR, WRONG_COLOR, Hit, denormalize, feature_grid,
                          overlay, pooling_maps, retrieval_sheet, save_overlays, weight_map_sheet)

# (name, create kwargs, input (H, W)): NCHW, NHWC, ViT tokens (square, and non-square with dynamic
# size: the grid comes from the token count and the image's shape), and a wrapped token family.
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
    # The factorisation closest to the image's shape, whatever the model.
    assert feature_grid(24, (64, 96)) == (4, 6)
    assert feature_grid(24, (96, 64)) == (6, 4)
    assert feature_grid(49, (224, 224)) == (7, 7)
    assert feature_grid(7, (32, 256)) == (1, 7)


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


# --- contact sheets -----------------------------------------------------------------------------

# A toy gallery of coloured squares: each image a unique colour (so it can be found on the sheet),
# its label the colour family.
FAMILIES = {"orange": lambda j: (250, 110 + 12 * j, 20), "purple": lambda j: (110 + 12 * j, 40, 200),
            "teal": lambda j: (20, 200, 110 + 12 * j)}


def _square(family, shade, size=40):
    return Image.new("RGB", (size, size), FAMILIES[family](shade))


def _box(sheet, colour):
    """(left, top, right, bottom) of the pixels of ``colour`` on the sheet (exactly one square)."""
    ys, xs = np.nonzero((np.abs(sheet.astype(int) - colour).max(axis=2) <= 2))
    assert len(xs), f"colour {colour} not on the sheet"
    return xs.min(), ys.min(), xs.max(), ys.max()


def _caption_band(sheet, box):
    """The pixels under a thumbnail's frame, down to the next row (or the sheet's end)."""
    left, _, right, bottom = box
    y = bottom + 1
    while tuple(sheet[y, (left + right) // 2]) != BACKGROUND:  # skip the frame, if any
        y += 1
    return sheet[y:y + (bottom - box[1]) // 2, left:right + 1]


def test_retrieval_sheet_layout_frames_and_captions(tmp_path):
    thumb = 96
    query_path = tmp_path / "query_teal.png"
    _square("teal", 6).save(query_path)  # a query given by path
    queries = [_square("orange", 6), _square("purple", 6), query_path]
    query_labels = ["orange", "purple", "teal"]
    hits = [
        [Hit(_square("orange", 0), 0.93, "orange"), Hit(_square("purple", 0), 0.71, "purple"),
         Hit(_square("orange", 1), 0.70, "orange")],
        [Hit(_square("purple", 1), 0.88, "purple"), Hit(_square("teal", 0), 0.52, "teal"),
         Hit(_square("purple", 2), 0.50, None)],  # label unknown: grey
        [Hit(_square("teal", 1), 0.61, "teal"), Hit(_square("orange", 2), 0.60, "orange", correct=True),
         Hit(_square("teal", 2), 0.40, "teal", correct=False)],  # an explicit verdict wins over labels
    ]
    expected_frames = [[CORRECT_COLOR, WRONG_COLOR, CORRECT_COLOR],
                       [CORRECT_COLOR, WRONG_COLOR, UNKNOWN_COLOR],
                       [CORRECT_COLOR, CORRECT_COLOR, WRONG_COLOR]]
    image = retrieval_sheet(queries, hits, query_labels=query_labels, thumb=thumb, title="top-3")
    assert image.mode == "RGB"
    sheet = np.asarray(image)
    boxes = [[_box(sheet, FAMILIES[query_labels[q]](6))] + [_box(sheet, hit.image.getpixel((0, 0))) for hit in row]
             for q, row in enumerate(hits)]
    # Q rows and k + 1 columns of thumb x thumb squares, queries first, hits in rank order.
    for row in boxes:
        assert [b[2] - b[0] + 1 for b in row] == [b[3] - b[1] + 1 for b in row] == [thumb] * 4
        assert len({b[1] for b in row}) == 1
        assert [b[0] for b in row] == sorted(b[0] for b in row)
    assert [row[0][1] for row in boxes] == sorted(row[0][1] for row in boxes)
    for column in zip(*boxes):
        assert len({b[0] for b in column}) == 1
    # Frames: just outside each hit, on all four sides; none around the queries.
    for q, row in enumerate(boxes):
        for c, (left, top, right, bottom) in enumerate(row):
            outside = [sheet[top + thumb // 2, left - 2], sheet[top + thumb // 2, right + 2],
                       sheet[top - 2, left + thumb // 2], sheet[bottom + 2, left + thumb // 2]]
            want = BACKGROUND if c == 0 else expected_frames[q][c - 1]
            assert all(tuple(pixel) == want for pixel in outside), (q, c)
    # Captions: dark text under every thumbnail, and different text under different ranks.
    for q, row in enumerate(boxes):
        bands = [_caption_band(sheet, box) for box in row]
        for band in bands:
            assert (band.sum(axis=2) < 300).sum() > 20
        assert not np.array_equal(bands[1], bands[2])  # "#1  0.93" vs "#2  0.71"
    # The title above the first row.
    assert (sheet[:boxes[0][0][1] - 6].sum(axis=2) < 300).sum() > 20


def test_retrieval_sheet_caption_newline_adds_a_line():
    """A newline in a query label (class, then AP@R in eval reports) becomes a second caption line,
    so neither part is cut off with an ellipsis: the sheet grows by the extra line."""
    queries, hits = [_square("teal", 0)], [[Hit(_square("teal", 1), 0.9, "teal")]]
    one = retrieval_sheet(queries, hits, query_labels=["teal  AP@R 0.50"], thumb=64)
    two = retrieval_sheet(queries, hits, query_labels=["teal\nAP@R 0.50"], thumb=64)
    assert one.width == two.width and two.height > one.height


def test_retrieval_sheet_checks_its_rows():
    with pytest.raises(ConfigError, match="2 rows of hits for 1 queries"):
        retrieval_sheet([_square("teal", 0)], [[], []])


@pytest.mark.parametrize("name,kwargs,size", [("resnet10t", {}, (64, 64)),
                                              ("vit_tiny_patch16_224", {"img_size": 64}, (64, 64))], ids=["cnn", "vit"])
def test_weight_map_sheet(name, kwargs, size):
    torch.manual_seed(0)
    model = timm.create_model(name, global_pool="gsp", num_classes=8, **kwargs).eval()
    mean, std = (0.5,) * 3, (0.25,) * 3
    colours = torch.tensor([[0.9, 0.2, 0.1], [0.1, 0.8, 0.3], [0.2, 0.3, 0.9]])  # one flat colour per image
    images = ((colours - 0.5) / 0.25)[:, :, None, None].expand(3, 3, *size).contiguous()
    thumb = 48
    sheets = [np.asarray(weight_map_sheet(model, images, mean, std, captions=["a", "b", "c"], thumb=thumb, columns=c))
              for c in (1, 2, 3)]
    # Each column adds the same width, each row the same height: an image above its overlay.
    (h1, w1), (h2, w2), (h3, w3) = (s.shape[:2] for s in sheets)
    assert w2 - w1 == w3 - w2 >= thumb and h1 - h2 == h2 - h3 >= 2 * thumb
    sheet = sheets[-1]
    for colour in colours:
        left, top, right, bottom = _box(sheet, tuple((colour * 255).round().int().tolist()))
        assert (right - left + 1, bottom - top + 1) == (thumb, thumb)
        below = sheet[bottom + 1:bottom + 1 + 2 * thumb, left:right + 1]  # the overlay, then the caption
        assert (np.abs(below.astype(int) - BACKGROUND).sum(axis=2) > 30).sum() > thumb * thumb // 2
    with pytest.raises(ConfigError, match="1 captions for 3 images"):
        weight_map_sheet(model, images, mean, std, captions=["a"])


def test_maps_of_a_pool_with_a_border():
    torch.manual_seed(0)
    model = timm_gsp.create_model("resnet10t", embed_dim=8, pool="gsp:num_prototypes=5,border=1").eval()
    images = torch.randn(2, 3, 128, 160)  # a 4x5 feature map: a 2x3 interior
    maps = pooling_maps(model, images)
    with capture_transport(model) as plans, torch.no_grad():
        model(images)
    assert maps.grid_size == (4, 5) and maps.assignments.shape == (2, 5, 4, 5)
    torch.testing.assert_close(maps.weights.reshape(2, -1), plans[-1].weights)
    ring = torch.ones(4, 5, dtype=torch.bool)
    ring[1:-1, 1:-1] = False
    for name in ("weights", "selection"):
        assert torch.equal(getattr(maps, name)[:, ring], torch.zeros(2, 14)), name
    assert torch.equal(maps.assignments[:, :, ring], torch.zeros(2, 5, 14))
    torch.testing.assert_close(maps.assignments[:, :, 1:-1, 1:-1].sum(1), torch.ones(2, 2, 3))
    torch.testing.assert_close(torch.einsum("bhw,bkhw->bk", maps.weights, maps.assignments), maps.attributes)
    (_, pool), = gsp_modules(model)
    # the transported share of the interior cells' mass, each of mass 1 / 6
    torch.testing.assert_close(maps.selection, (maps.weights * 6 * pool.transport_ratio).clamp(0, 1))
    sheet = weight_map_sheet(model, images, (0.5,) * 3, (0.5,) * 3, thumb=32)
    assert sheet.size[0] >= 2 * 32
