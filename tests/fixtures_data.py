"""Tiny on-disk fixture trees in the official layouts of each dataset, for tests.

Every builder writes small Pillow-generated images (default 24 x 24, colour depends on the class)
under ``root`` and returns the path to pass as ``root`` to ``timm_gsp.data.build_dataset``. The
standard split rules give these sizes:

======================================================  ==========================================
builder                                                 splits (classes x images)
======================================================  ==========================================
``make_cub_tree(root, num_classes=4, per_class=3)``     train: first half of classes, test: rest
``make_cars_tree(root, num_classes=4, per_class=3)``    same (``layout="annos"`` or ``"folder"``)
``make_sop_tree(root, num_train_classes=3,              train / test as given
num_test_classes=3, per_class=2)``
``make_inshop_tree(root, num_train_items=3,             train: items x per_item; query and gallery:
num_test_items=3, per_item=4, variant="flat")``         test items x per_item // 2 each
``make_folder_tree(root, num_classes=4, per_class=3)``  split by ``train_fraction`` / class lists
======================================================  ==========================================

Usage from another test module (pytest puts ``tests/`` on ``sys.path``)::

    from fixtures_data import make_fixture_tree
    root = make_fixture_tree("cub", tmp_path)          # or make_cub_tree(tmp_path, num_classes=6)
    ds = build_dataset("cub", root, "train")

``corrupt_image(path)`` / ``truncate_image(path)`` damage a file in place to test error handling;
``write_png16(path, pixels)`` writes a 16-bit greyscale or RGB PNG.
"""
from __future__ import annotations

import os
import struct
import zlib
from pathlib import Path
from typing import Callable, Dict, List, Union

import numpy as np
from PIL import Image

__all__ = [
    "FIXTURE_BUILDERS", "corrupt_image", "make_cars_tree", "make_cub_tree", "make_fixture_tree",
    "make_folder_tree", "make_image", "make_inshop_tree", "make_sop_tree", "truncate_image", "write_png16",
]

PathLike = Union[str, os.PathLike]


def make_image(path: PathLike, class_index: int = 0, image_index: int = 0, size: int = 24) -> Path:
    """Write an RGB image (format from the suffix) whose colour encodes the class, plus noise."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng([class_index, image_index])
    base = np.array([(37 * class_index) % 256, (91 * class_index) % 256, (53 * class_index + 80) % 256], np.float32)
    arr = np.clip(base + rng.normal(0, 25, (size, size, 3)), 0, 255).astype(np.uint8)
    fmt = "JPEG" if path.suffix.lower() in (".jpg", ".jpeg") else None
    Image.fromarray(arr).save(path, format=fmt, **({"quality": 90} if fmt == "JPEG" else {}))
    return path


def corrupt_image(path: PathLike) -> Path:
    """Overwrite ``path`` with bytes that are not an image."""
    Path(path).write_bytes(b"this is not an image" * 8)
    return Path(path)


def truncate_image(path: PathLike, keep: float = 0.5) -> Path:
    """Cut ``path`` to its first ``keep`` fraction of bytes (a half-downloaded JPEG: header intact)."""
    data = Path(path).read_bytes()
    Path(path).write_bytes(data[: max(1, int(len(data) * keep))])
    return Path(path)


def write_png16(path: PathLike, pixels: np.ndarray) -> Path:
    """A 16-bit PNG of ``pixels`` (uint16, ``(H, W)`` greyscale or ``(H, W, 3)`` RGB). Pillow writes
    16-bit greyscale but not 16-bit RGB, so the RGB file is encoded here (unfiltered scanlines)."""
    path = Path(path)
    pixels = np.asarray(pixels, dtype=np.uint16)
    if pixels.ndim == 2:
        Image.fromarray(pixels).save(path)
        return path
    height, width, _ = pixels.shape
    rows = b"".join(b"\0" + row.astype(">u2").tobytes() for row in pixels)  # filter type 0 per row

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", width, height, 16, 2, 0, 0, 0)  # 16 bits, colour type 2 (RGB)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(rows)) + chunk(b"IEND", b""))
    return path


def make_cub_tree(root: PathLike, num_classes: int = 4, per_class: int = 3, image_size: int = 24) -> Path:
    """``root/CUB_200_2011/{images.txt, image_class_labels.txt, classes.txt, train_test_split.txt,
    images/NNN.Name/Name_K.jpg}`` with class ids 1..num_classes, image ids 1..N. Returns ``root``."""
    root = Path(root)
    base = root / "CUB_200_2011"
    images, labels, classes, split = [], [], [], []
    img_id = 0
    for c in range(1, num_classes + 1):
        cname = f"{c:03d}.Bird_{c}"
        classes.append(f"{c} {cname}")
        for k in range(per_class):
            img_id += 1
            rel = f"{cname}/Bird_{c}_{k:04d}.jpg"
            make_image(base / "images" / rel, c, k, image_size)
            images.append(f"{img_id} {rel}")
            labels.append(f"{img_id} {c}")
            split.append(f"{img_id} {k % 2}")
    for name, lines in (("images.txt", images), ("image_class_labels.txt", labels), ("classes.txt", classes),
                        ("train_test_split.txt", split)):
        (base / name).write_text("\n".join(lines) + "\n")
    return root


def make_cars_tree(root: PathLike, num_classes: int = 4, per_class: int = 3, image_size: int = 24,
                   layout: str = "annos") -> Path:
    """``layout="annos"``: ``root/cars_annos.mat`` (struct array ``annotations`` with
    ``relative_im_path, bbox_x1, bbox_y1, bbox_x2, bbox_y2, class, test``; cell ``class_names``) +
    ``root/car_ims/NNNNNN.jpg``, written with ``scipy.io.savemat`` like the official file.
    ``layout="folder"``: ``root/images/<class name>/<k>.jpg``. Returns ``root``."""
    root = Path(root)
    names = [f"Make{c} Model {2000 + c}" for c in range(1, num_classes + 1)]
    if layout == "folder":
        for c, name in enumerate(names, 1):
            for k in range(per_class):
                make_image(root / "images" / name / f"{k:05d}.jpg", c, k, image_size)
        return root
    if layout != "annos":
        raise ValueError(f"layout must be 'annos' or 'folder', got {layout!r}")
    import scipy.io

    fields = ["relative_im_path", "bbox_x1", "bbox_y1", "bbox_x2", "bbox_y2", "class", "test"]
    ann = np.zeros((1, num_classes * per_class), dtype=[(f, "O") for f in fields])
    i = 0
    # Interleave classes (as the official file is ordered by image, not by class).
    for k in range(per_class):
        for c in range(1, num_classes + 1):
            rel = f"car_ims/{i + 1:06d}.jpg"
            make_image(root / rel, c, k, image_size)
            ann[0, i] = (rel, np.uint16(1), np.uint16(2), np.uint16(image_size - 2), np.uint16(image_size - 1),
                         np.uint8(c), np.uint8(k % 2))
            i += 1
    class_names = np.empty((1, num_classes), dtype=object)
    class_names[0, :] = names
    scipy.io.savemat(str(root / "cars_annos.mat"), {"annotations": ann, "class_names": class_names})
    return root


def make_sop_tree(root: PathLike, num_train_classes: int = 3, num_test_classes: int = 3, per_class: int = 2,
                  image_size: int = 24) -> Path:
    """``root/Stanford_Online_Products/{Ebay_train.txt, Ebay_test.txt, <cat>_final/<cid>_<k>.JPG}``;
    train class ids 1..n_train, test ids follow. Returns ``root``."""
    root = Path(root)
    base = root / "Stanford_Online_Products"
    header = "image_id class_id super_class_id path"
    cid, img_id = 0, 0
    for split, n_cls in (("train", num_train_classes), ("test", num_test_classes)):
        lines = [header]
        for _ in range(n_cls):
            cid += 1
            super_id = 1 + cid % 2
            cat = ("bicycle", "chair")[super_id - 1]
            for k in range(per_class):
                img_id += 1
                rel = f"{cat}_final/{cid}_{k}.JPG"
                make_image(base / rel, cid, k, image_size)
                lines.append(f"{img_id} {cid} {super_id} {rel}")
        (base / f"Ebay_{split}.txt").write_text("\n".join(lines) + "\n")
    return root


def make_inshop_tree(root: PathLike, num_train_items: int = 3, num_test_items: int = 3, per_item: int = 4,
                     image_size: int = 24, variant: str = "flat") -> Path:
    """In-Shop partition file + images. ``variant="flat"``: ``root/list_eval_partition.txt`` +
    ``root/img/...``; ``variant="official"``: ``root/Eval/list_eval_partition.txt`` +
    ``root/Img/img/...``. Test items put the first half of their images in query, the rest in
    gallery. Item ids interleave train and test (as in the real file). Returns ``root``."""
    root = Path(root)
    if variant == "flat":
        index_dir, img_base = root, root
    elif variant == "official":
        index_dir, img_base = root / "Eval", root / "Img"
    else:
        raise ValueError(f"variant must be 'flat' or 'official', got {variant!r}")
    rows: List[str] = []
    # Alternate train/test items while both remain, then the rest.
    kinds = []
    for i in range(max(num_train_items, num_test_items)):
        kinds += ([True] if i < num_train_items else []) + ([False] if i < num_test_items else [])
    for n, is_train in enumerate(kinds, 1):
        item = f"id_{n:08d}"
        for k in range(per_item):
            rel = f"img/WOMEN/Dresses/{item}/{k:02d}_{k % 4 + 1}_front.jpg"
            make_image(img_base / rel, n, k, image_size)
            status = "train" if is_train else ("query" if k < per_item // 2 else "gallery")
            rows.append(f"{rel}  {item}  {status}")
    index_dir.mkdir(parents=True, exist_ok=True)
    text = f"{len(rows)}\nimage_name item_id evaluation_status\n" + "\n".join(rows) + "\n"
    (index_dir / "list_eval_partition.txt").write_text(text)
    return root


def make_folder_tree(root: PathLike, num_classes: int = 4, per_class: int = 3, image_size: int = 24) -> Path:
    """``root/class_NN/img_K.png`` (PNG, to cover a non-JPEG format). Returns ``root``."""
    root = Path(root)
    for c in range(num_classes):
        for k in range(per_class):
            make_image(root / f"class_{c:02d}" / f"img_{k}.png", c, k, image_size)
    return root


FIXTURE_BUILDERS: Dict[str, Callable[..., Path]] = {
    "cub": make_cub_tree,
    "cars": make_cars_tree,
    "sop": make_sop_tree,
    "inshop": make_inshop_tree,
    "folder": make_folder_tree,
}


def make_fixture_tree(name: str, root: PathLike, **kwargs) -> Path:
    """``FIXTURE_BUILDERS[name](root, **kwargs)``: a tiny tree for ``build_dataset(name, <result>)``."""
    if name not in FIXTURE_BUILDERS:
        raise ValueError(f"no fixture builder for {name!r}; have {sorted(FIXTURE_BUILDERS)}")
    return FIXTURE_BUILDERS[name](root, **kwargs)
