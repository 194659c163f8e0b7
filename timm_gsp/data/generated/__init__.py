"""Generated image-folder benchmarks: the registry of the families (``default_config``, ``write_family``)
and a contact sheet of any of their folders (``write_preview``).

Three structurally different families, each a pure function of its frozen config:

* ``scenes`` (:mod:`.scenes`): one class-specific blob sticker (duotone photo fill) on
  real-photo clutter, anywhere, 26-40 px across on 96 px;
* ``fashion`` (:mod:`.fashion`): one specific real Fashion-MNIST item per class (an
  instance, so classes are fine-grained), small (27-38 px), in its class's colour, among 2-4 other
  randomly tinted Fashion-MNIST items on dulled photo clutter;
* ``collage`` (:mod:`.collage`, drawn by :mod:`.collage_render`): a 3 x 3 mosaic of 32 px tiles, one
  holding the class glyph, the other eight textured nuisance.

Every family is written the same way, by :mod:`.folder_family` (the writer and readers they all
import; this registry, which imports the families, sits above them and hands those names on):
``root/class_NNN/NN.png`` (RGB, square) plus ``root/<family>.json`` holding ``{"generator", "version",
"config", "boxes": {"class_NNN/NN.png": [x0, y0, x1, y1]}}`` (the box of the class object in pixels,
x1/y1 exclusive), and extra per-family keys. The folder is written into a
temporary sibling and renamed into place (a kill leaves no half folder), and a non-empty ``root`` is
refused unless it already holds the very same config (then nothing is done). ``--dataset folder``
splits the classes by sorted name: the first half trains, the second half tests.

The command line is ``timm-gsp generate`` (``cli.generate``)::

    timm-gsp generate --family fashion --seed 0 --out data/fashion_s0
    timm-gsp generate --family scenes --seed 1 --out data/scenes_s1 --preview scenes.png
    timm-gsp generate --family collage --seed 0 --out data/collage_s0 --num-classes 20

Each family's 200 classes x 20 images of 96 px take about 30 s on one core.
"""
from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from ...errors import ConfigError
from ...utils import PathLike
# the layout every family shares, handed on here (where the benchmarks and tests import it from)
from .folder_family import FAMILIES, Box, FolderConfig, read_boxes, read_meta, write_generated_folder

__all__ = ["FAMILIES", "Box", "FolderConfig", "default_config", "read_boxes", "read_meta", "write_family",
           "write_generated_folder", "write_preview"]


def write_preview(root: PathLike, path: PathLike, classes: int = 6, per_class: int = 8, boxes: bool = True) -> Path:
    """A PNG contact sheet of a generated folder: one row per class (the first ``classes / 2`` of the
    train half, then of the test half), ``per_class`` images each, optionally with each object's box
    drawn in red."""
    from PIL import ImageDraw

    root, path = Path(root), Path(path)
    all_boxes = read_boxes(root)
    names = sorted({name.split("/")[0] for name in all_boxes})
    half = len(names) // 2
    picked = names[:half][:classes - classes // 2] + names[half:][:classes // 2]
    rows = []
    for cls in picked:
        files = sorted(n for n in all_boxes if n.startswith(cls + "/"))[:per_class]
        tiles = []
        for name in files:
            image = Image.open(root / name).convert("RGB")
            if boxes:
                x0, y0, x1, y1 = all_boxes[name]
                ImageDraw.Draw(image).rectangle((x0 - 1, y0 - 1, x1, y1), outline=(255, 0, 0))
            tiles.append(np.pad(np.asarray(image), ((2, 2), (2, 2), (0, 0)), constant_values=255))
        rows.append(np.concatenate(tiles, axis=1))
    width = max(r.shape[1] for r in rows)
    sheet = np.concatenate([np.pad(r, ((0, 0), (0, width - r.shape[1]), (0, 0)), constant_values=255) for r in rows])
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(sheet).save(path)
    return path


def default_config(family: str, seed: int = 0, **overrides: Any):
    """The benchmark config of ``family`` (200 classes x 20 images, 96 px) with ``seed`` and ``overrides``
    (``num_classes``, ``images_per_class``, ``image_size``; other fields by their own names).

    Raises:
        ConfigError: an unknown family, or a value its config rejects.
    """
    try:
        if family == "scenes":
            from .scenes import ScenesConfig
            return replace(ScenesConfig(seed=seed), **overrides)
        if family == "fashion":
            from .fashion import FashionConfig
            return replace(FashionConfig(seed=seed), **overrides)
        if family == "collage":
            from .collage import collage_folder_config
            return collage_folder_config(seed=seed, **overrides)
    except (TypeError, ValueError) as error:  # the configs' own checks (and unknown field names)
        raise ConfigError(f"{family}: {error}") from error
    raise ConfigError(f"unknown generated family {family!r}; expected one of {', '.join(FAMILIES)}")


def write_family(family: str, root: PathLike, config: Any, *, progress: bool = True) -> Path:
    """Write ``config`` (from :func:`default_config`) of ``family`` to ``root``."""
    if family == "scenes":
        from .scenes import write_scenes
        return write_scenes(root, config, progress=progress)
    if family == "fashion":
        from .fashion import write_fashion
        return write_fashion(root, config, progress=progress)
    from .collage import write_collage_folder
    return write_collage_folder(root, config, progress=progress)

