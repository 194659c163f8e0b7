"""Generated image-folder benchmarks: the registry of the families, and a command line.

Three structurally different families, each a pure function of its frozen config:

* ``scenes`` (:mod:`timm_gsp.data.scenes`): one class-specific blob sticker (duotone photo fill) on
  real-photo clutter, anywhere, 26-40 px across on 96 px;
* ``fashion`` (:mod:`timm_gsp.data.fashion`): one specific real Fashion-MNIST item per class (an
  instance, so classes are fine-grained), small (27-38 px), in its class's colour, among 2-4 other
  randomly tinted Fashion-MNIST items on dulled photo clutter;
* ``collage`` (:mod:`timm_gsp.data.collage`): a 3 x 3 mosaic of 32 px tiles, one holding the class
  glyph, the other eight textured nuisance.

Every family is written the same way, by :mod:`timm_gsp.data.folder_family` (the writer and readers they
all import; this module, which imports the families, sits above them and re-exports those names):
``root/class_NNN/NN.png`` (RGB, square) plus ``root/<family>.json`` holding ``{"generator", "version",
"config", "boxes": {"class_NNN/NN.png": [x0, y0, x1, y1]}}`` (the box of the class object in pixels,
x1/y1 exclusive), and extra per-family keys. The folder is written into a
temporary sibling and renamed into place (a kill leaves no half folder), and a non-empty ``root`` is
refused unless it already holds the very same config (then nothing is done). ``--dataset folder``
splits the classes by sorted name: the first half trains, the second half tests.

Command line (prints the folder; ``--preview`` also saves a contact sheet, one row per class)::

    python -m timm_gsp.data.generated --family fashion --seed 0 --out data/fashion_s0
    python -m timm_gsp.data.generated --family scenes --seed 1 --out data/scenes_s1 --preview scenes.png
    python -m timm_gsp.data.generated --family collage --seed 0 --out data/collage_s0 --num-classes 20

Each family's 200 classes x 20 images of 96 px take about 30 s on one core.
"""
from __future__ import annotations

import sys
from dataclasses import replace
from pathlib import Path
from typing import Any, Optional, Sequence

import numpy as np
from PIL import Image

from ..errors import ConfigError
from ..utils import PathLike
# the layout every family shares, re-exported here (where the benchmarks and tests import it from)
from .folder_family import (FAMILIES, Box, ClassRenderer, FolderConfig, check_size_share, meta_name, read_boxes,  # noqa: F401
                            read_meta, write_generated_folder)

__all__ = ["FAMILIES", "Box", "FolderConfig", "default_config", "read_boxes", "read_meta", "write_family", "write_generated_folder",
           "write_preview"]


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


def main(argv: Optional[Sequence[str]] = None) -> int:
    from ..cli_support import OneLineArgumentParser, one_line
    from ..errors import TimmGSPError

    p = OneLineArgumentParser(prog="python -m timm_gsp.data.generated", description=__doc__.split("\n\n")[0])
    p.add_argument("--family", required=True, choices=FAMILIES)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", required=True, type=Path, help="the folder to write (must be empty or absent)")
    p.add_argument("--num-classes", type=int, default=None, help="default 200 (half train, half test)")
    p.add_argument("--images-per-class", type=int, default=None, help="default 20")
    p.add_argument("--image-size", type=int, default=None, help="default 96")
    p.add_argument("--preview", type=Path, default=None, help="also save a PNG contact sheet of a few classes here")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    a = p.parse_args(argv)
    overrides = {k: v for k, v in (("num_classes", a.num_classes), ("images_per_class", a.images_per_class),
                                   ("image_size", a.image_size)) if v is not None}
    try:
        root = write_family(a.family, a.out, default_config(a.family, a.seed, **overrides), progress=not a.quiet)
        if a.preview is not None:
            write_preview(root, a.preview)
    except TimmGSPError as error:  # config and layout mistakes: one line, no traceback
        print(f"{p.prog}: error: {one_line(error)}", file=sys.stderr)
        return 2
    print(root)
    return 0


if __name__ == "__main__":
    sys.exit(main())
