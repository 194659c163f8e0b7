"""Tests of the generated image-folder families (timm_gsp.data.generated): scenes, fashion, collage.

Each family is written for real (a few classes x a few images) and read back with the folder dataset.
"""
from __future__ import annotations

import hashlib
import itertools
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from conftest import subprocess_env
from timm_gsp.data import build_dataset, generate_collage
from timm_gsp.data.generated import default_config, read_boxes, read_meta, write_family, write_preview
from timm_gsp.data.generated.collage import collage_folder_config, write_collage_folder
from timm_gsp.errors import DatasetLayoutError, OutputExistsError

pytest.importorskip("skimage", reason="scenes and fashion cut their clutter from scikit-image's photographs "
                                      "(pip install 'timm-gsp[bench]')")
from timm_gsp.data.generated import fashion  # noqa: E402  (needs scipy: the bench extra)
from timm_gsp.data.generated.scenes import ScenesConfig, photo_clutter, photo_pool, render_scene, write_scenes  # noqa: E402

needs_fashion = pytest.mark.skipif(
    not (fashion.fashion_mnist_dir() / "train-images-idx3-ubyte.gz").is_file(),
    reason="Fashion-MNIST is not installed: apt-get install dataset-fashion-mnist")

SMALL = {"num_classes": 4, "images_per_class": 3}
# Decoded pixels + metadata of small scenes folders, recorded with write_scenes before it moved onto
# the shared writer (generated.write_generated_folder): the refactor must not change one pixel.
SCENES_BEFORE_REFACTOR = {
    (("layout", "grid"), ("seed", 3)): "76d28fd18a354ae51338260ce685132387a626fc8df1cbdd7ccab88ea12798f2",
    (("object_size", (0.2, 0.3)), ("seed", 1)): "4a6adbb6ef373c2b0993f4b8da467a20cbc60c862cfe2f59ef9cdfedbf2279af",
}


def pixel_hash(root: Path) -> str:
    h = hashlib.sha256()
    for p in sorted(root.rglob("*")):
        if p.suffix == ".png":
            h.update(str(p.relative_to(root)).encode())
            h.update(np.asarray(Image.open(p)).tobytes())
        elif p.suffix == ".json":
            h.update(p.read_bytes())
    return h.hexdigest()


def file_bytes(root: Path) -> dict:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def families():
    return [pytest.param("scenes", id="scenes"), pytest.param("fashion", id="fashion", marks=needs_fashion),
            pytest.param("collage", id="collage")]


@pytest.mark.parametrize("fields, expected", list(SCENES_BEFORE_REFACTOR.items()))
def test_scenes_output_unchanged_by_refactor(tmp_path, fields, expected):
    root = write_scenes(tmp_path / "s", ScenesConfig(num_classes=5, images_per_class=3, **dict(fields)), progress=False)
    assert pixel_hash(root) == expected


@pytest.mark.parametrize("family", families())
def test_family_deterministic_seeded_and_readable(tmp_path, family):
    config = default_config(family, seed=0, **SMALL)
    a = write_family(family, tmp_path / "a", config, progress=False)
    b = write_family(family, tmp_path / "b", config, progress=False)
    assert file_bytes(a) == file_bytes(b)
    assert write_family(family, a, config, progress=False) == a  # same config: nothing redone
    other = write_family(family, tmp_path / "c", default_config(family, seed=1, **SMALL), progress=False)
    assert file_bytes(other).keys() == file_bytes(a).keys() and file_bytes(other) != file_bytes(a)
    with pytest.raises(OutputExistsError, match="not empty"):  # never replaced by another config
        write_family(family, a, default_config(family, seed=1, **SMALL), progress=False)
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temporary folder left
    umask = os.umask(0o022)
    os.umask(umask)
    assert a.stat().st_mode & 0o777 == 0o777 & ~umask  # an ordinary folder, not mkdtemp's private one

    meta = read_meta(a)
    assert meta["generator"] == f"timm_gsp.data.{family}" and meta["config"]["image_size"] == 96
    boxes = read_boxes(a)
    assert sorted(boxes) == sorted(str(p.relative_to(a)) for p in a.rglob("*.png"))
    assert len(boxes) == 4 * 3 and sorted({n.split("/")[0] for n in boxes}) == [f"class_{k:03d}" for k in range(4)]
    for name, (x0, y0, x1, y1) in boxes.items():
        image = Image.open(a / name)
        assert image.mode == "RGB" and image.size == (96, 96)
        assert 0 <= x0 < x1 <= 96 and 0 <= y0 < y1 <= 96
    # the folder dataset reads it, splitting classes by sorted name
    train, test = build_dataset("folder", a, "train"), build_dataset("folder", a, "test")
    assert (train.num_classes, test.num_classes, len(train), len(test)) == (2, 2, 6, 6)
    assert set(train.classes) == {"class_000", "class_001"} and set(test.classes) == {"class_002", "class_003"}


def _assert_box_covers_change(before: Image.Image, after: Image.Image, box) -> None:
    """The pasted object changed the pixels inside ``box`` and, beyond its faint anti-aliased rim
    (alpha <= 32 / 255, so at most 32 grey levels), nothing outside it; and ``box`` is tight."""
    diff = np.abs(np.asarray(after, np.int16) - np.asarray(before, np.int16)).max(axis=2)
    x0, y0, x1, y1 = box
    outside = diff.copy()
    outside[y0:y1, x0:x1] = 0
    assert outside.max() <= 32
    ys, xs = np.nonzero(diff)
    assert xs.min() <= x0 and ys.min() <= y0 and xs.max() + 1 >= x1 and ys.max() + 1 >= y1  # no slack
    assert (diff[y0:y1, x0:x1] > 0).mean() > 0.35  # the object fills a good part of its box


@pytest.mark.parametrize("layout", ["free", "grid"])
def test_scenes_box_covers_the_object(layout):
    config, photos = ScenesConfig(layout=layout), photo_pool()
    from timm_gsp.data.generated.scenes import _class_object
    obj = _class_object(config, photos, 3)
    for index in range(4):
        image, box = render_scene(config, photos, obj, np.random.default_rng([9, index]))
        before = photo_clutter(96, photos, np.random.default_rng([9, index]), config.clutter_crops, layout)
        _assert_box_covers_change(before, image, box)


@needs_fashion
def test_fashion_box_covers_the_small_tinted_item():
    config, photos, items = fashion.FashionConfig(), photo_pool(), fashion.load_fashion_mnist()
    chosen, pool = fashion.class_items(config, len(items.images))
    sides, colours = [], []
    for index in range(6):
        image, box = fashion.render_fashion(config, photos, items, int(chosen[0]), pool, np.random.default_rng([5, index]))
        before = fashion.distractor_scene(config, photos, items, pool, np.random.default_rng([5, index]))
        _assert_box_covers_change(before, image, box)
        x0, y0, x1, y1 = box
        sides.append(max(x1 - x0, y1 - y0))
        colours.append(np.asarray(image)[y0:y1, x0:x1].reshape(-1, 3).mean(0))
    assert 20 <= min(sides) and max(sides) <= 48  # small: about 27-38 px (rotation widens the box)
    assert np.ptp(np.stack(colours), axis=0).max() > 30  # the tint changes from image to image


@needs_fashion
def test_fashion_class_item_keeps_its_class_colour_and_only_the_class_item():
    """Version 2: the class item's colour is drawn per class (jittered per image), so two images of a
    class agree in it and two classes differ; the distractors stay randomly tinted."""
    config, photos, items = fashion.FashionConfig(), photo_pool(), fashion.load_fashion_mnist()
    chosen, pool = fashion.class_items(config, len(items.images))

    def item_colours(class_id):
        colours = []
        for index in range(4):
            rng = np.random.default_rng([7, class_id, index])
            image, box = fashion.render_fashion(config, photos, items, int(chosen[class_id]), pool, rng,
                                                fashion.class_tint(config, class_id))
            before = np.asarray(fashion.distractor_scene(config, photos, items, pool, np.random.default_rng([7, class_id, index])))
            changed = np.abs(np.asarray(image, np.int16) - before).sum(-1) > 0  # the class item's own pixels
            colours.append(np.asarray(image)[changed].mean(0) / np.asarray(image)[changed].mean())  # chromaticity
        return np.stack(colours)

    chroma = {k: fashion.class_tint(config, k) / fashion.class_tint(config, k).mean() for k in range(10)}
    # two classes of clearly different colours (many classes share a similar one, by design)
    a, b = max(itertools.combinations(chroma, 2), key=lambda pair: np.abs(chroma[pair[0]] - chroma[pair[1]]).max())
    for class_id, own, other in ((a, chroma[a], chroma[b]), (b, chroma[b], chroma[a])):
        colours = item_colours(class_id)
        assert np.ptp(colours, axis=0).max() < 0.15  # one colour for the class, jittered a little
        # each image's item is nearer its own class's colour than the other class's
        assert (np.abs(colours - own).sum(1) < np.abs(colours - other).sum(1)).all()
    np.testing.assert_array_equal(fashion.class_tint(config, 3), fashion.class_tint(config, 3))
    with pytest.raises(ValueError, match="colour_jitter"):
        fashion.FashionConfig(colour_jitter=1.5)


@needs_fashion
def test_fashion_classes_are_distinct_items_train_and_test(tmp_path):
    config = fashion.FashionConfig(num_classes=40, images_per_class=2)
    items = fashion.load_fashion_mnist()
    assert items.images.shape == (60000, 28, 28) and items.labels.max() == 9
    chosen, pool = fashion.class_items(config, len(items.images))
    assert len(set(chosen.tolist())) == 40 and not set(chosen.tolist()) & set(pool.tolist())
    assert len(chosen) + len(pool) == len(items.images)
    train, test = chosen[:20], chosen[20:]  # the folder dataset's split: first half of sorted names
    # different pictures, not only different indices
    assert not {items.images[i].tobytes() for i in train} & {items.images[i].tobytes() for i in test}
    # fine-grained: test classes share categories with train classes
    assert {int(items.labels[i]) for i in test} & {int(items.labels[i]) for i in train}
    root = fashion.write_fashion(tmp_path / "f", fashion.FashionConfig(**SMALL), progress=False)
    classes = read_meta(root)["classes"]
    expected_items = fashion.class_items(fashion.FashionConfig(**SMALL), len(items.images))[0].tolist()
    assert [classes[f"class_{k:03d}"]["item"] for k in range(4)] == expected_items
    assert all(c["category"] in fashion.CATEGORIES for c in classes.values())


def test_fashion_missing_dataset_is_one_line_error(tmp_path):
    with pytest.raises(DatasetLayoutError, match="apt-get install dataset-fashion-mnist") as error:
        fashion.load_fashion_mnist(tmp_path)
    assert "\n" not in str(error.value) and str(tmp_path) in str(error.value)
    with pytest.raises(DatasetLayoutError, match="dataset-fashion-mnist"):
        fashion.write_fashion(tmp_path / "out", fashion.FashionConfig(**SMALL), fashion_dir=tmp_path, progress=False)
    assert not (tmp_path / "out").exists()


def test_fashion_rejects_bad_config():
    with pytest.raises(ValueError, match="object_size"):
        fashion.FashionConfig(object_size=(0.4, 0.2))
    with pytest.raises(ValueError, match="num_distractors"):
        fashion.FashionConfig(num_distractors=(4, 2))


def test_collage_folder_is_the_collage_as_files(tmp_path):
    config = collage_folder_config(seed=2, num_classes=5, images_per_class=3)
    assert (config.grid_size, config.tile_size, config.num_train_classes, config.num_test_classes) == (3, 32, 2, 3)
    root = write_collage_folder(tmp_path / "c", config, progress=False)
    data = generate_collage(config)
    images = np.concatenate([data["train"]["images"], data["test"]["images"]])
    tiles = np.concatenate([data["train"]["tiles"], data["test"]["tiles"]])
    boxes = read_boxes(root)
    for k, name in enumerate(sorted(boxes)):  # class by class, image by image
        assert np.array_equal(np.asarray(Image.open(root / name)), images[k])
        t = int(tiles[k])
        assert boxes[name] == ((t % 3) * 32, (t // 3) * 32, (t % 3) * 32 + 32, (t // 3) * 32 + 32)
    assert len({b for b in boxes.values()}) > 1  # the object tile moves


def test_preview_and_command_line(tmp_path):
    """``timm-gsp generate`` writes a family and prints its folder; a user error is one line, exit status 1."""
    out = tmp_path / "collage"
    done = subprocess.run([sys.executable, "-m", "timm_gsp.cli", "generate", "--family", "collage", "--seed", "3",
                           "--out", str(out), "--num-classes", "4", "--images-per-class", "2", "--quiet",
                           "--preview", str(tmp_path / "p.png")], env=subprocess_env(), capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == str(out) and "Warning" not in done.stderr
    assert read_meta(out)["config"] == {**read_meta(out)["config"], "seed": 3, "grid_size": 3}
    assert Image.open(tmp_path / "p.png").size == (2 * 100, 4 * 100)  # 4 class rows of 2 images, 2 px margins
    again = subprocess.run([sys.executable, "-m", "timm_gsp.cli", "generate", "--family", "collage", "--seed", "4",
                            "--out", str(out), "--num-classes", "4"], env=subprocess_env(), capture_output=True, text=True)
    assert again.returncode == 1 and again.stderr.count("\n") == 1 and "not empty" in again.stderr
    assert again.stderr.startswith("timm-gsp generate: error: ")
    with pytest.raises(DatasetLayoutError, match="no generated-folder metadata"):
        write_preview(tmp_path, tmp_path / "q.png")
