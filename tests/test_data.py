"""Tests of timm_gsp.data: official layouts on tiny fixture trees, errors, collage, sampler, transforms."""
from __future__ import annotations

import pickle
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from fixtures_data import (
    corrupt_image, make_cars_tree, make_cub_tree, make_fixture_tree, make_folder_tree, make_inshop_tree,
    make_sop_tree, truncate_image, write_png16,
)
from timm_gsp.data import (
    Augmentation, CachedDataset, CollageConfig, CollageDataset, CorruptImageError, DatasetLayoutError,
    MPerClassBatchSampler, RandomBatchSampler, build_dataset, build_transforms, ensure_collage, evaluation_splits,
    find_unreadable_images, generate_collage, load_rgb, split_classes,
)
from timm_gsp.errors import ConfigError

SMALL_COLLAGE = dict(num_train_classes=6, num_test_classes=5, train_per_class=4, test_per_class=3, seed=3)


def assert_contiguous(ds):
    assert sorted(set(ds.labels.tolist())) == list(range(ds.num_classes))
    assert len(ds.classes) == ds.num_classes == len(set(ds.classes))
    assert len(ds.samples) == len(ds.labels) == len(ds)


# ---------------------------------------------------------------- official layouts

@pytest.mark.parametrize("name, kwargs, sizes", [
    ("cub", dict(num_classes=4, per_class=3), {"train": (2, 6), "test": (2, 6)}),
    ("cars", dict(num_classes=6, per_class=2), {"train": (3, 6), "test": (3, 6)}),
    ("cars", dict(num_classes=4, per_class=2, layout="folder"), {"train": (2, 4), "test": (2, 4)}),
    ("sop", dict(num_train_classes=3, num_test_classes=4, per_class=2), {"train": (3, 6), "test": (4, 8)}),
    ("inshop", dict(num_train_items=3, num_test_items=2, per_item=4), {"train": (3, 12), "query": (2, 4), "gallery": (2, 4)}),
    ("inshop", dict(num_train_items=2, num_test_items=3, per_item=2, variant="official"),
     {"train": (2, 4), "query": (3, 3), "gallery": (3, 3)}),
    ("folder", dict(num_classes=4, per_class=3), {"train": (2, 6), "test": (2, 6)}),
])
def test_official_layout_splits(tmp_path, name, kwargs, sizes):
    root = make_fixture_tree(name, tmp_path, **kwargs)
    splits = {s: build_dataset(name, root, s) for s in sizes}
    for split, (n_cls, n_img) in sizes.items():
        ds = splits[split]
        assert (ds.num_classes, len(ds)) == (n_cls, n_img), split
        assert_contiguous(ds)
        assert all(Path(p).is_file() for p in ds.samples)
    # class-disjoint: no train class name in any evaluation split
    for split in sizes:
        if split != "train":
            assert not set(splits["train"].classes) & set(splits[split].classes)
    img, label = splits["train"][0]
    assert isinstance(img, Image.Image) and img.mode == "RGB" and label == int(splits["train"].labels[0])


def test_cub_split_follows_class_ids_and_names(tmp_path):
    root = make_cub_tree(tmp_path, num_classes=6, per_class=2)
    train, test = build_dataset("cub", root, "train"), build_dataset("cub", root / "CUB_200_2011", "test")
    assert train.classes == ["001.Bird_1", "002.Bird_2", "003.Bird_3"]
    assert test.classes == ["004.Bird_4", "005.Bird_5", "006.Bird_6"]
    # the label of every sample is the class of its folder
    for ds in (train, test):
        assert all(ds.classes[l] == Path(p).parent.name for p, l in zip(ds.samples, ds.labels.tolist()))
    assert build_dataset("cub", root, "train", num_train_classes=4).num_classes == 4


def test_cars_annos_labels_match_mat_classes(tmp_path):
    root = make_cars_tree(tmp_path, num_classes=4, per_class=3)
    train = build_dataset("cars", root, "train")
    assert train.layout == "annos" and train.classes == ["Make1 Model 2001", "Make2 Model 2002"]
    # fixture writes classes interleaved: image i (1-based) has class ((i-1) % 4) + 1
    for path, label in zip(train.samples, train.labels.tolist()):
        idx = int(Path(path).stem)
        assert (idx - 1) % 4 == label


def test_inshop_query_gallery_share_label_space(tmp_path):
    root = make_inshop_tree(tmp_path, num_train_items=2, num_test_items=4, per_item=4)
    q, g = build_dataset("inshop", root, "query"), build_dataset("inshop", root, "gallery")
    assert q.classes == g.classes and q.num_classes == 4
    item_of = lambda p: Path(p).parent.name  # noqa: E731
    mapping = {}
    for ds in (q, g):
        for p, l in zip(ds.samples, ds.labels.tolist()):
            assert mapping.setdefault(item_of(p), l) == l  # same item -> same label in both splits
            assert ds.classes[l] == item_of(p)
    assert set(q.samples).isdisjoint(g.samples)
    assert evaluation_splits("inshop") == ("query", "gallery") and evaluation_splits("cub") == ("test",)
    with pytest.raises(ValueError, match="query"):
        build_dataset("inshop", root, "test")


def test_inshop_query_gallery_consistent_when_item_missing_from_query(tmp_path):
    root = make_inshop_tree(tmp_path, num_train_items=1, num_test_items=3, per_item=2)
    index = root / "list_eval_partition.txt"
    lines = index.read_text().splitlines()
    # drop item 2's query image: the gallery must keep the same labels for the other items
    kept = [l for l in lines if not ("id_00000002" in l and "query" in l)]
    index.write_text("\n".join([str(len(kept) - 2)] + kept[1:]) + "\n")
    q, g = build_dataset("inshop", root, "query"), build_dataset("inshop", root, "gallery")
    assert q.classes == g.classes
    assert q.classes[int(q.labels[0])] == Path(q.samples[0]).parent.name


# ---------------------------------------------------------------- errors

def test_missing_root_and_index(tmp_path):
    with pytest.raises(DatasetLayoutError, match="does not exist: .*nowhere"):
        build_dataset("cub", tmp_path / "nowhere", "train")
    root = make_cub_tree(tmp_path / "a")
    (root / "CUB_200_2011" / "images.txt").unlink()
    with pytest.raises(DatasetLayoutError, match=r"images\.txt") as err:
        build_dataset("cub", root, "train")
    assert "CUB_200_2011" in str(err.value)  # names the expected layout
    sop = make_sop_tree(tmp_path / "s")
    (sop / "Stanford_Online_Products" / "Ebay_test.txt").unlink()
    build_dataset("sop", sop, "train")  # the other split still works
    with pytest.raises(DatasetLayoutError, match=r"Ebay_test\.txt"):
        build_dataset("sop", sop, "test")
    with pytest.raises(DatasetLayoutError, match=r"cars_annos\.mat"):
        build_dataset("cars", root, "train")


def test_wrong_level_suggests_the_right_folder(tmp_path):
    root = make_cub_tree(tmp_path / "data" / "birds")
    with pytest.raises(DatasetLayoutError) as too_deep:
        build_dataset("cub", root / "CUB_200_2011" / "images", "train")
    assert f"root={root / 'CUB_200_2011'}" in str(too_deep.value)
    with pytest.raises(DatasetLayoutError) as too_high:
        build_dataset("cub", tmp_path / "data", "train")
    assert str(root / "CUB_200_2011") in str(too_high.value)
    inshop = make_inshop_tree(tmp_path / "fashion" / "benchmark", variant="official")
    with pytest.raises(DatasetLayoutError, match="did you mean"):
        build_dataset("inshop", tmp_path / "fashion", "train")
    assert len(build_dataset("inshop", inshop, "train")) > 0
    folder = make_folder_tree(tmp_path / "f")
    with pytest.raises(DatasetLayoutError, match=f"root={folder}"):
        build_dataset("folder", folder / "class_00", "train")


def test_inshop_images_missing_names_tried_paths(tmp_path):
    root = make_inshop_tree(tmp_path, variant="official")
    shutil.rmtree(root / "Img")
    with pytest.raises(DatasetLayoutError, match=r"Img/img/WOMEN"):
        build_dataset("inshop", root, "train")


def test_missing_image_named(tmp_path):
    root = make_cub_tree(tmp_path, num_classes=2, per_class=3)
    ds = build_dataset("cub", root, "train")
    victim = Path(ds.samples[1])
    victim.unlink()
    with pytest.raises(DatasetLayoutError, match=str(victim)):
        ds[1]
    Path(ds.samples[0]).unlink()  # the first image is checked up front: layout problem at build time
    with pytest.raises(DatasetLayoutError, match=str(ds.samples[0])):
        build_dataset("cub", root, "train")


def test_corrupt_and_truncated_images(tmp_path):
    root = make_cub_tree(tmp_path, num_classes=4, per_class=4)
    ds = build_dataset("cub", root, "train")
    bad, cut = ds.samples[1], ds.samples[5]
    corrupt_image(bad)
    truncate_image(cut)
    with pytest.raises(CorruptImageError, match=bad):
        ds[1]
    with pytest.raises(CorruptImageError, match=cut):
        ds[5]  # a truncated JPEG must not decode silently
    ds[0]
    with pytest.warns(RuntimeWarning, match="skipped 2 corrupt images") as rec:
        clean = build_dataset("cub", root, "train", skip_corrupt=True)
    assert bad in str(rec[0].message) and cut in str(rec[0].message)
    assert len(clean) == 6 and {p for p, _ in clean.skipped} == {bad, cut}
    assert bad not in clean.samples and cut not in clean.samples
    assert_contiguous(clean)
    for i in range(len(clean)):
        clean[i]


def test_high_bit_depth_and_float_images_decode_to_8_bit(tmp_path):
    ramp = np.linspace(0, 65535, 48 * 32).round().reshape(48, 32).astype(np.uint16)
    grey16 = write_png16(tmp_path / "grey16.png", ramp)
    with Image.open(grey16) as img:
        assert img.mode == "I;16"  # the file really is 16-bit
    decoded = np.asarray(load_rgb(grey16))
    assert decoded.shape == (48, 32, 3) and decoded.dtype == np.uint8
    assert np.array_equal(decoded, np.repeat(np.rint(ramp / 257)[..., None], 3, axis=2))  # not 99% white
    rgb16 = np.stack([ramp, ramp[::-1], 65535 - ramp], axis=-1)
    decoded = np.asarray(load_rgb(write_png16(tmp_path / "rgb16.png", rgb16)), dtype=np.int64)
    assert np.abs(decoded - rgb16 / 257).max() <= 1  # Pillow keeps the high byte
    unit = np.linspace(0, 1, 48 * 32, dtype=np.float32).reshape(48, 32)
    Image.fromarray(unit).save(tmp_path / "float.tif")
    with Image.open(tmp_path / "float.tif") as img:
        assert img.mode == "F"
    decoded = np.asarray(load_rgb(tmp_path / "float.tif"))
    assert np.array_equal(decoded, np.repeat(np.rint(unit * 255)[..., None], 3, axis=2))  # not black


def test_unmappable_float_image_refused_with_its_range(tmp_path):
    root = make_folder_tree(tmp_path, num_classes=2, per_class=2)
    bad = root / "class_00" / "hdr.tif"
    Image.fromarray(np.linspace(-0.5, 3, 16 * 16, dtype=np.float32).reshape(16, 16)).save(bad)
    with pytest.raises(CorruptImageError, match=rf"{bad}: .*\[-0.5, 3\]"):
        load_rgb(bad)
    ds = build_dataset("folder", root, "all")
    with pytest.raises(CorruptImageError, match=str(bad)):
        ds[ds.samples.index(str(bad))]
    assert [p for p, _ in find_unreadable_images(ds.samples)] == [str(bad)]
    with pytest.warns(RuntimeWarning, match="skipped 1 corrupt"):
        assert str(bad) not in build_dataset("folder", root, "all", skip_corrupt=True).samples


def test_skip_corrupt_relabels_when_a_class_vanishes(tmp_path):
    root = make_folder_tree(tmp_path, num_classes=4, per_class=2)
    for p in (root / "class_00").iterdir():
        corrupt_image(p)
    with pytest.warns(RuntimeWarning, match="skipped 2"):
        ds = build_dataset("folder", root, "train", skip_corrupt=True)
    assert ds.classes == ["class_01"] and ds.labels.tolist() == [0, 0]


def test_malformed_index_line(tmp_path):
    root = make_cub_tree(tmp_path)
    (root / "CUB_200_2011" / "image_class_labels.txt").write_text("1\n")
    with pytest.raises(DatasetLayoutError, match=r"line 1 .*image_class_labels\.txt"):
        build_dataset("cub", root, "train")


# ---------------------------------------------------------------- folder + validation splits

def test_folder_split_by_ratio_and_class_lists(tmp_path):
    root = make_folder_tree(tmp_path, num_classes=5, per_class=2)
    train = build_dataset("folder", root, "train", train_fraction=0.6)
    test = build_dataset("folder", root, "test", train_fraction=0.6)
    assert train.classes == ["class_00", "class_01", "class_02"] and test.classes == ["class_03", "class_04"]
    assert build_dataset("folder", root, "all").num_classes == 5
    explicit = build_dataset("folder", root, "train", train_classes=["class_04", "class_01"])
    rest = build_dataset("folder", root, "test", train_classes=["class_04", "class_01"])
    assert explicit.classes == ["class_01", "class_04"] and rest.classes == ["class_00", "class_02", "class_03"]
    assert build_dataset("folder", root, "test", test_classes=["class_02"]).classes == ["class_02"]
    with pytest.raises(ValueError, match="overlap"):
        build_dataset("folder", root, "train", train_classes=["class_00"], test_classes=["class_00"])
    with pytest.raises(ValueError, match="class_99"):
        build_dataset("folder", root, "train", train_classes=["class_99"])


def symlink_or_skip(link: Path, target) -> None:
    try:
        link.symlink_to(target, target_is_directory=not str(target).endswith(".png"))
    except (OSError, NotImplementedError):
        pytest.skip("this platform cannot make symbolic links")


def test_folder_symlink_loops_read_each_image_once(tmp_path):
    root = make_folder_tree(tmp_path / "data", num_classes=6, per_class=6)
    symlink_or_skip(root / "class_00" / "up", "..")
    symlink_or_skip(root / "class_01" / "self", ".")
    with pytest.warns(RuntimeWarning) as caught:
        train = build_dataset("folder", root, "train")
    assert len(caught) == 1 and "skipped 2 directory links" in str(caught[0].message)
    assert (len(train), train.classes) == (18, ["class_00", "class_01", "class_02"])
    for path, label in zip(train.samples, train.labels.tolist()):
        assert Path(path).relative_to(root).parts == (train.classes[label], Path(path).name)
    assert_contiguous(train)
    # outside the root: skipped; a file link to an image read already: once; a shared folder inside
    # the root: followed once, by the first class linking to it
    outside = make_folder_tree(tmp_path / "outside", num_classes=1, per_class=2)
    symlink_or_skip(root / "class_02" / "out", outside / "class_00")
    symlink_or_skip(root / "class_03" / "copy.png", root / "class_03" / "img_0.png")
    symlink_or_skip(root / "class_03" / "other_class.png", root / "class_05" / "img_0.png")
    make_folder_tree(root / ".shared", num_classes=1, per_class=2)
    symlink_or_skip(root / "class_04" / "more", root / ".shared")
    symlink_or_skip(root / "class_05" / "more", root / ".shared")
    with pytest.warns(RuntimeWarning, match="skipped 4 directory links"):
        everything = build_dataset("folder", root, "all")
    counts = dict(zip(everything.classes, torch.bincount(everything.labels).tolist()))
    assert counts == {"class_00": 6, "class_01": 6, "class_02": 6, "class_03": 7, "class_04": 8, "class_05": 5}
    assert len({Path(p).resolve() for p in everything.samples}) == len(everything) == 38


def test_split_classes_deterministic_and_disjoint():
    tr, va = split_classes(50, 0.2, seed=1)
    assert (tr, va) == split_classes(list(range(50)), 0.2, seed=1)
    assert len(va) == 10 and not set(tr) & set(va) and sorted(tr + va) == list(range(50))
    assert split_classes(50, 0.2, seed=2)[1] != va
    with pytest.raises(ValueError):
        split_classes(1, 0.5)


def test_val_split_carved_from_train_classes(tmp_path):
    root = make_cub_tree(tmp_path, num_classes=20, per_class=2)
    full = build_dataset("cub", root, "train")
    train = build_dataset("cub", root, "train", val_fraction=0.3, val_seed=5)
    val = build_dataset("cub", root, "val", val_fraction=0.3, val_seed=5)
    test = build_dataset("cub", root, "test")
    assert (train.num_classes, val.num_classes) == (7, 3) and val.split == "val"
    assert not set(train.classes) & set(val.classes)
    assert set(train.classes) | set(val.classes) == set(full.classes)
    assert not set(val.classes) & set(test.classes)
    assert_contiguous(train), assert_contiguous(val)
    assert val.classes == build_dataset("cub", root, "val", val_fraction=0.3, val_seed=5).classes
    assert val.classes != build_dataset("cub", root, "val", val_fraction=0.3, val_seed=6).classes
    with pytest.raises(ValueError, match="val_fraction"):
        build_dataset("cub", root, "val")


# ---------------------------------------------------------------- decoded-image cache

def test_cached_dataset_serves_the_same_tensors(tmp_path):
    root = make_folder_tree(tmp_path, num_classes=6, per_class=3, image_size=20)
    transform = build_transforms({"input_size": (3, 16, 16), "crop_pct": 1.0}, False)
    plain = build_dataset("folder", root, "train", transform, val_fraction=0.34)
    cached = CachedDataset(plain, progress=False, num_threads=2)
    assert (cached.samples, cached.classes, cached.num_classes) == (plain.samples, plain.classes, plain.num_classes)
    assert torch.equal(cached.labels, plain.labels) and cached.nbytes == len(plain) * 20 * 20 * 3
    for i in range(len(plain)):
        assert torch.equal(cached[i][0], plain[i][0]) and cached[i][1] == plain[i][1]
    # served from memory: the files are no longer read
    shutil.rmtree(root)
    loader = torch.utils.data.DataLoader(cached, batch_size=4, num_workers=2)
    images, labels = next(iter(loader))
    assert torch.equal(images, torch.stack([plain.transform(cached.load_image(i)) for i in range(4)]))
    subset = cached.select_classes([1], split="val")
    assert subset.samples == [s for s, l in zip(plain.samples, plain.labels.tolist()) if l == 1]
    assert all(torch.equal(subset[i][0], cached[plain.samples.index(s)][0]) for i, s in enumerate(subset.samples))
    cached.transform = None
    clone = pickle.loads(pickle.dumps(cached))  # spawned workers get a copy
    assert isinstance(cached[0][0], Image.Image) and np.array_equal(np.asarray(clone[1][0]), np.asarray(cached[1][0]))


def test_cached_dataset_refuses_past_its_limit_before_decoding_everything(tmp_path, monkeypatch):
    root = make_folder_tree(tmp_path, num_classes=4, per_class=20, image_size=32)
    dataset = build_dataset("folder", root, "all")
    decoded = []
    monkeypatch.setattr(dataset, "load_image", lambda i: decoded.append(i) or load_rgb(dataset.samples[i]))
    with pytest.raises(ConfigError) as error:
        CachedDataset(dataset, max_bytes=200_000, progress=False)
    assert str(error.value).startswith("--cache-images: folder/all (80 images) decodes to about 0.2 MiB, over the 0.2 MiB")
    assert len(decoded) <= 32  # refused from the estimate
    assert len(CachedDataset(dataset, max_bytes=80 * 32 * 32 * 3, progress=False)) == 80


# ---------------------------------------------------------------- collage

def test_collage_deterministic_and_seed_sensitive():
    cfg = CollageConfig(**SMALL_COLLAGE)
    a, b = generate_collage(cfg), generate_collage(cfg)
    for split in ("train", "test"):
        assert a[split]["images"].tobytes() == b[split]["images"].tobytes()
        assert np.array_equal(a[split]["tiles"], b[split]["tiles"])
    c = generate_collage(CollageConfig(**{**SMALL_COLLAGE, "seed": 4}))
    assert a["train"]["images"].tobytes() != c["train"]["images"].tobytes()
    # a class's look does not depend on how many classes are generated
    more = generate_collage(CollageConfig(**{**SMALL_COLLAGE, "num_test_classes": 9}), ("train",))
    assert more["train"]["images"].tobytes() == a["train"]["images"].tobytes()


def test_collage_cache_roundtrip_and_classes(tmp_path):
    train = CollageDataset("train", cache_dir=tmp_path, **SMALL_COLLAGE)
    test = CollageDataset("test", cache_dir=tmp_path, **SMALL_COLLAGE)
    path = train.cache_path
    assert path.parent == tmp_path and path.name.startswith("collage-") and (path / "meta.json").is_file()
    assert not [p for p in tmp_path.iterdir() if ".tmp-" in p.name]  # no temp dir left behind
    assert ensure_collage(CollageConfig(**SMALL_COLLAGE), tmp_path) == path
    assert (len(train), train.num_classes, len(test), test.num_classes) == (24, 6, 15, 5)
    assert_contiguous(train), assert_contiguous(test)
    assert not set(train.class_ids.tolist()) & set(test.class_ids.tolist())
    assert not set(train.classes) & set(test.classes)
    mem = CollageDataset("train", cache=False, **SMALL_COLLAGE)
    img, label = train[5]
    assert img.size == (64, 64) and label == int(train.labels[5])
    assert np.asarray(img).tobytes() == np.asarray(mem.load_image(5)).tobytes()
    # pickling (spawned DataLoader workers) drops the memory map and reopens it
    clone = pickle.loads(pickle.dumps(train))
    assert np.array_equal(np.asarray(clone.load_image(3)), np.asarray(train.load_image(3)))


def test_collage_object_boxes(tmp_path):
    ds = CollageDataset("train", cache=False, **{**SMALL_COLLAGE, "grid_size": 2, "image_size": 64})
    boxes = ds.object_boxes
    assert boxes.shape == (len(ds), 4) and boxes.dtype == torch.long
    assert (boxes[:, 0] >= 0).all() and (boxes[:, 1] >= 0).all() and (boxes[:, 2:] <= 64).all()
    assert ((boxes[:, 2] - boxes[:, 0]) == 32).all() and ((boxes[:, 3] - boxes[:, 1]) == 32).all()
    assert (boxes % 32 == 0).all() and len(set(ds.object_tiles.tolist())) > 1  # positions vary
    # The object tile is the "plain background" one: its border pixels vary far less than those
    # of nuisance tiles (this is what makes the object tile findable by a pooling).
    def border_std(tile):
        t = tile.astype(np.float32)
        return np.concatenate([t[:2].reshape(-1, 3), t[-2:].reshape(-1, 3), t[:, :2].reshape(-1, 3), t[:, -2:].reshape(-1, 3)]).std(0).mean()
    hits, obj, nui = 0, [], []
    for i in range(len(ds)):
        img = np.asarray(ds.load_image(i))
        x0, y0, x1, y1 = ds.object_boxes[i].tolist()
        o = border_std(img[y0:y1, x0:x1])
        others = [border_std(img[y:y + 32, x:x + 32]) for y in (0, 32) for x in (0, 32) if (x, y) != (x0, y0)]
        hits += o < min(others)
        obj.append(o)
        nui += others
    assert np.median(obj) < 0.5 * np.median(nui)
    assert hits >= 0.75 * len(ds)  # ~95% in practice; the box must point at the object tile
    # select_classes keeps boxes aligned with images
    sub = ds.select_classes([1, 4])
    assert sub.num_classes == 2 and len(sub) == 8
    for i in range(len(sub)):
        j = int(sub.rows[i])
        assert torch.equal(sub.object_boxes[i], ds.object_boxes[j])
        assert np.array_equal(np.asarray(sub.load_image(i)), np.asarray(ds.load_image(j)))


def test_collage_default_size(tmp_path):
    train = build_dataset("collage", tmp_path, "train")
    test = build_dataset("collage", tmp_path, "test")
    assert train.num_classes >= 50 and test.num_classes >= 50
    assert 20 <= len(train) / train.num_classes <= 30 and len(test) / test.num_classes >= 20
    assert train[0][0].size == (64, 64)


def test_collage_rejects_bad_config():
    with pytest.raises(ValueError, match="multiple of grid_size"):
        CollageConfig(image_size=65)
    with pytest.raises(ValueError, match="split"):
        CollageDataset("val", cache=False, **SMALL_COLLAGE)


# ---------------------------------------------------------------- sampler

def _labels(num_classes=13, per_class=(3, 9)):
    rng = np.random.default_rng(0)
    return np.concatenate([[c] * int(rng.integers(*per_class)) for c in range(num_classes)])


def test_sampler_m_per_class():
    labels = _labels()
    s = MPerClassBatchSampler(labels, m=3, batch_size=12, seed=1)
    batches = list(s)
    assert len(batches) == len(s) == len(labels) // 12
    for b in batches:
        assert len(b) == 12
        counts = np.bincount(labels[b], minlength=13)
        assert sorted(counts[counts > 0].tolist()) == [3] * 4  # 4 distinct classes, 3 each
    used = np.bincount(labels[np.concatenate(batches)], minlength=13)
    assert (used > 0).sum() >= 10  # classes are cycled, not a few favourites
    # a class with fewer than m images still yields m entries (repeats)
    tiny = np.array([0, 1, 1, 1, 2, 2, 2, 3, 3, 3])
    for b in MPerClassBatchSampler(tiny, m=3, batch_size=6, num_batches=8):
        assert sorted(np.bincount(tiny[b])[np.bincount(tiny[b]) > 0].tolist()) == [3, 3]


def test_sampler_epochs_are_deterministic_and_distinct():
    labels = _labels()
    a, b = MPerClassBatchSampler(labels, 2, 8, seed=7), MPerClassBatchSampler(labels, 2, 8, seed=7)
    assert list(a) == list(b)
    a.set_epoch(1)
    assert list(a) != list(b)
    b.set_epoch(1)
    assert list(a) == list(b)
    assert list(MPerClassBatchSampler(labels, 2, 8, seed=8)) != list(MPerClassBatchSampler(labels, 2, 8, seed=7))


def test_sampler_ddp_ranks_disjoint_equal_length():
    labels = _labels(num_classes=20, per_class=(4, 12))
    world = 3
    single = list(MPerClassBatchSampler(labels, 2, 8, seed=3, num_replicas=1, rank=0))
    per_rank = [list(MPerClassBatchSampler(labels, 2, 8, seed=3, num_replicas=world, rank=r)) for r in range(world)]
    assert len({len(p) for p in per_rank}) == 1 and len(per_rank[0]) == len(single) // world
    keys = [tuple(b) for p in per_rank for b in p]
    assert len(keys) == len(set(keys))  # no batch on two ranks
    # ranks partition the same global sequence: interleaving them gives its first batches back
    interleaved = [per_rank[i % world][i // world] for i in range(world * len(per_rank[0]))]
    assert interleaved == single[:len(interleaved)]
    with pytest.raises(ValueError, match="rank"):
        MPerClassBatchSampler(labels, 2, 8, num_replicas=2, rank=2)


def test_sampler_resume_mid_epoch_identical():
    labels = _labels()
    ref = MPerClassBatchSampler(labels, 3, 9, seed=11, num_replicas=2, rank=1)
    ref.set_epoch(4)
    full = list(ref)
    run = MPerClassBatchSampler(labels, 3, 9, seed=11, num_replicas=2, rank=1)
    run.set_epoch(4)
    it = iter(run)
    head = [next(it) for _ in range(2)]
    state = run.state_dict()
    assert state["epoch"] == 4 and state["position"] == 2
    resumed = MPerClassBatchSampler(labels, 3, 9, seed=11, num_replicas=2, rank=1)
    resumed.load_state_dict(state)
    resumed.set_epoch(4)  # the usual loop calls set_epoch again: must not lose the position
    tail = list(resumed)
    assert head + tail == full and len(tail) == len(full) - 2
    resumed.set_epoch(5)
    ref.set_epoch(5)
    assert list(resumed) == list(ref)  # the following epoch is complete again
    moved_on = MPerClassBatchSampler(labels, 3, 9, seed=11, num_replicas=2, rank=1)
    moved_on.load_state_dict(state)
    moved_on.set_epoch(5)  # a resume position belongs to its epoch only
    assert list(moved_on) == list(ref)
    assert resumed.state_dict(position=1)["position"] == 1
    with pytest.raises(ValueError, match="num_replicas"):
        MPerClassBatchSampler(labels, 3, 9, seed=11, num_replicas=1, rank=0).load_state_dict(state)


def test_sampler_with_dataloader(tmp_path):
    ds = CollageDataset("train", cache=False, transform=lambda im: torch.from_numpy(np.asarray(im).copy()), **SMALL_COLLAGE)
    sampler = MPerClassBatchSampler(ds, m=2, batch_size=6, seed=0)
    loader = torch.utils.data.DataLoader(ds, batch_sampler=sampler)
    x, y = next(iter(loader))
    assert x.shape == (6, 64, 64, 3) and sorted(torch.bincount(y)[torch.bincount(y) > 0].tolist()) == [2, 2, 2]
    with pytest.raises(ValueError, match="multiple"):
        MPerClassBatchSampler(ds, m=4, batch_size=6)


def test_sampler_random_batches_cover_each_sample_once_per_epoch_without_balancing():
    labels = _labels()
    sampler = RandomBatchSampler(labels, batch_size=8, seed=2)
    batches = list(sampler)
    assert len(batches) == len(sampler) == len(labels) // 8 and all(len(b) == 8 for b in batches)
    drawn = np.concatenate(batches)
    assert len(set(drawn.tolist())) == len(drawn)  # one pass: no sample twice in an epoch
    # not class-balanced: some batch holds a class an odd number of times (m-per-class never does)
    counts = [np.bincount(labels[b], minlength=13) for b in batches]
    assert any(((c % 2) == 1).any() for c in counts)
    # asking for more batches than one pass walks a second, reshuffled pass
    longer = list(RandomBatchSampler(labels, batch_size=8, num_batches=2 * len(labels) // 8, seed=2))
    assert longer[:len(batches)] == batches and len(longer) == 2 * len(labels) // 8
    with pytest.raises(ConfigError, match="batch_size"):
        RandomBatchSampler(labels, batch_size=len(labels) + 1)


def test_sampler_random_batches_are_a_function_of_seed_and_epoch_and_shard_like_m_per_class():
    labels = _labels(num_classes=20, per_class=(4, 12))
    a, b = RandomBatchSampler(labels, 8, seed=7), RandomBatchSampler(labels, 8, seed=7)
    assert list(a) == list(b)
    a.set_epoch(1)
    assert list(a) != list(b)
    b.set_epoch(1)
    assert list(a) == list(b)
    assert list(RandomBatchSampler(labels, 8, seed=8)) != list(RandomBatchSampler(labels, 8, seed=7))
    world = 3
    single = list(RandomBatchSampler(labels, 8, seed=3, num_replicas=1, rank=0))
    per_rank = [list(RandomBatchSampler(labels, 8, seed=3, num_replicas=world, rank=r)) for r in range(world)]
    assert len({len(p) for p in per_rank}) == 1 and len(per_rank[0]) == len(single) // world
    interleaved = [per_rank[i % world][i // world] for i in range(world * len(per_rank[0]))]
    assert interleaved == single[:len(interleaved)]
    drawn = [i for p in per_rank for batch in p for i in batch]
    assert len(drawn) == len(set(drawn))  # ranks see disjoint samples
    with pytest.raises(ValueError, match="rank"):
        RandomBatchSampler(labels, 8, num_replicas=2, rank=2)


def test_sampler_random_batches_resume_mid_epoch_identical():
    labels = _labels()
    ref = RandomBatchSampler(labels, 6, seed=11, num_replicas=2, rank=1)
    ref.set_epoch(3)
    full = list(ref)
    run = RandomBatchSampler(labels, 6, seed=11, num_replicas=2, rank=1)
    run.set_epoch(3)
    it = iter(run)
    head = [next(it) for _ in range(2)]
    state = run.state_dict()
    assert state["epoch"] == 3 and state["position"] == 2 and state["m"] == 0
    resumed = RandomBatchSampler(labels, 6, seed=11, num_replicas=2, rank=1)
    resumed.load_state_dict(state)
    resumed.set_epoch(3)
    assert head + list(resumed) == full
    with pytest.raises(ValueError, match="RandomBatchSampler.load_state_dict: batch_size"):
        RandomBatchSampler(labels, 3, seed=11, num_replicas=2, rank=1).load_state_dict(state)
    # random and m-per-class batches are different sequences: either checkpoint is refused by the other
    m_state = MPerClassBatchSampler(labels, 2, 6, seed=11, num_replicas=2, rank=1).state_dict()
    with pytest.raises(ValueError, match="RandomBatchSampler.load_state_dict: m=2 in the checkpoint but 0 now"):
        RandomBatchSampler(labels, 6, seed=11, num_replicas=2, rank=1).load_state_dict(m_state)
    with pytest.raises(ValueError, match="MPerClassBatchSampler.load_state_dict: m=0 in the checkpoint but 2 now"):
        MPerClassBatchSampler(labels, 2, 6, seed=11, num_replicas=2, rank=1).load_state_dict(state)


# ---------------------------------------------------------------- transforms

def test_transforms_from_model_and_dict():
    import timm
    model = timm.create_model("resnet18", pretrained=False, num_classes=0)
    train_tf = build_transforms(model, True, input_size=64, augmentation=Augmentation(scale=(0.8, 1.0), color_jitter=0))
    eval_tf = build_transforms(model, False, input_size=64, crop_pct=1.0)
    img = Image.fromarray(np.random.default_rng(0).integers(0, 255, (64, 64, 3), dtype=np.uint8))
    assert train_tf(img).shape == (3, 64, 64)
    x = eval_tf(img)
    assert x.shape == (3, 64, 64)
    # crop_pct=1 at the native size: a pure normalisation, pixel geometry (object boxes) unchanged
    mean = torch.tensor(model.pretrained_cfg["mean"]).view(3, 1, 1)
    std = torch.tensor(model.pretrained_cfg["std"]).view(3, 1, 1)
    expect = (torch.from_numpy(np.array(img)).permute(2, 0, 1).float() / 255 - mean) / std
    assert torch.allclose(x, expect, atol=1e-5)
    default_eval = build_transforms({"input_size": (3, 48, 48), "crop_pct": 0.5, "mean": (0.5,) * 3, "std": (0.5,) * 3}, False)
    assert default_eval(img.resize((200, 100))).shape == (3, 48, 48)
