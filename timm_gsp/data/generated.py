"""Generated image-folder benchmarks: the one writer and reader they share, and a command line.

Three structurally different families, each a pure function of its frozen config:

* ``scenes`` (:mod:`timm_gsp.data.scenes`): one class-specific blob sticker (duotone photo fill) on
  real-photo clutter, anywhere, 26-40 px across on 96 px;
* ``fashion`` (:mod:`timm_gsp.data.fashion`): one specific real Fashion-MNIST item per class (an
  instance, so classes are fine-grained), small (27-38 px), in its class's colour, among 2-4 other
  randomly tinted Fashion-MNIST items on dulled photo clutter;
* ``collage`` (:mod:`timm_gsp.data.collage`): a 3 x 3 mosaic of 32 px tiles, one holding the class
  glyph, the other eight textured nuisance.

Every family is written the same way: ``root/class_NNN/NN.png`` (RGB, square) plus ``root/<family>.json``
holding ``{"generator", "version", "config", "boxes": {"class_NNN/NN.png": [x0, y0, x1, y1]}}`` (the box of
the class object in pixels, x1/y1 exclusive), and extra per-family keys. The folder is written into a
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

import json
import os
import shutil
import sys
import tempfile
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Callable, Dict, Iterable, List, Optional, Sequence, Tuple

import numpy as np
from PIL import Image

from ..errors import ConfigError, DatasetLayoutError, OutputExistsError
from ..utils import PathLike

__all__ = ["FAMILIES", "Box", "FolderConfig", "default_config", "read_boxes", "read_meta", "write_family", "write_generated_folder",
           "write_preview"]

FAMILIES = ("scenes", "fashion", "collage")
Box = Tuple[int, int, int, int]  # (x0, y0, x1, y1) in pixels, x1/y1 exclusive
# Renders one class: its images in order, each with the class object's box.
ClassRenderer = Callable[[int], Iterable[Tuple[Image.Image, Box]]]


@dataclass(frozen=True)
class FolderConfig:
    """The fields every family's config starts with, and their checks (``ConfigError``)."""

    num_classes: int = 200
    images_per_class: int = 20
    image_size: int = 96

    def __post_init__(self) -> None:
        owner = type(self).__name__
        if self.num_classes < 2 or self.images_per_class < 2:
            raise ConfigError(f"{owner}: need >= 2 classes and >= 2 images per class, got "
                              f"{self.num_classes} and {self.images_per_class}")
        if self.image_size < 32:
            raise ConfigError(f"{owner}: image_size must be >= 32, got {self.image_size}")


def check_size_share(owner: str, field: str, value: Tuple[float, float]) -> None:
    """An object size range, as a share of the image side: ``0.05 <= low <= high <= 0.9``."""
    low, high = value
    if not 0.05 <= low <= high <= 0.9:
        raise ConfigError(f"{owner}: {field} must satisfy 0.05 <= low <= high <= 0.9, got {tuple(value)}")


def meta_name(family: str) -> str:
    """The file in a generated folder that holds its config and boxes, e.g. ``scenes.json``."""
    return f"{family}.json"


def write_generated_folder(root: PathLike, family: str, meta: Dict[str, Any], num_classes: int,
                           make_renderer: Callable[[], ClassRenderer], *, progress: bool = True) -> Path:
    """Write ``root/class_NNN/NN.png`` and ``root/<family>.json``; return ``root``.

    Args:
        meta: ``{"generator", "version", "config", ...}``; ``boxes`` is added. A folder already holding
            the same ``version`` and ``config`` is returned untouched.
        make_renderer: called once, only when something is to be written (it may load data), and
            returns the function that renders one class id.
    """
    root = Path(root).expanduser()
    meta_file = meta_name(family)
    if root.exists():
        if (root / meta_file).is_file():
            existing = read_meta(root)
            wanted = json.loads(json.dumps(meta))  # tuples -> lists, as they were read back
            if all(existing.get(k) == wanted[k] for k in ("version", "config")):
                return root
        if any(root.iterdir()):
            raise OutputExistsError(f"{root} is not empty and does not hold these {family}; choose another folder")
    from tqdm import tqdm

    render_class = make_renderer()
    root.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{root.name}.", dir=root.parent))
    umask = os.umask(0o022)  # reading the umask means setting it: put it straight back
    os.umask(umask)
    os.chmod(tmp, 0o777 & ~umask)  # mkdtemp makes it private; the finished folder is an ordinary one
    boxes: Dict[str, List[int]] = {}
    try:
        for class_id in tqdm(range(num_classes), desc=family, unit="class", disable=not progress):
            folder = tmp / f"class_{class_id:03d}"
            folder.mkdir()
            for index, (image, box) in enumerate(render_class(class_id)):
                name = f"{folder.name}/{index:02d}.png"
                image.save(tmp / name)
                boxes[name] = list(box)
        (tmp / meta_file).write_text(json.dumps({**meta, "boxes": boxes}), encoding="utf-8")
        if root.exists():
            root.rmdir()  # empty (checked above)
        os.replace(tmp, root)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return root


def read_meta(root: PathLike) -> Dict[str, Any]:
    """The ``<family>.json`` of a folder written by any family (config, version, boxes)."""
    root = Path(root)
    for family in FAMILIES:
        if (root / meta_name(family)).is_file():
            with open(root / meta_name(family), encoding="utf-8") as f:
                return json.load(f)
    raise DatasetLayoutError(f"{root} holds no generated-folder metadata (one of "
                             f"{', '.join(meta_name(f) for f in FAMILIES)}); write it with timm_gsp.data.generated")


def read_boxes(root: PathLike) -> Dict[str, Box]:
    """``{"class_NNN/NN.png": (x0, y0, x1, y1)}`` of a folder written by any family."""
    return {name: tuple(box) for name, box in read_meta(root)["boxes"].items()}


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
