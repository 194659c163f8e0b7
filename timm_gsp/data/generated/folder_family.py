"""What every generated image-folder family shares, below the families and their registry.

The folder layout (``root/class_NNN/NN.png`` plus ``root/<family>.json`` holding ``{"generator",
"version", "config", "boxes", ...}``), its one writer (:func:`write_generated_folder`: a temporary
sibling renamed into place, a non-empty ``root`` refused unless it holds the very same config), its
readers (:func:`read_meta`, :func:`read_boxes`) and the config fields and checks every family's config
starts with (:class:`FolderConfig`, :func:`check_size_share`).

The families (:mod:`.scenes`, :mod:`.fashion`, :mod:`.collage`) import from here; the registry
(:mod:`timm_gsp.data.generated`: ``default_config``, ``write_family``, ``write_preview``) sits above
them and hands these names on. This module imports no family.
"""
from __future__ import annotations

import json
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Dict, Iterable, List, Tuple

from PIL import Image

from ...errors import ConfigError, DatasetLayoutError, OutputExistsError
from ...utils import PathLike

__all__ = ["FAMILIES", "Box", "ClassRenderer", "FolderConfig", "check_size_share", "meta_name", "read_boxes", "read_meta",
           "write_generated_folder"]

# The families' names: the metadata file a folder can hold (``<family>.json``). The registry
# (timm_gsp.data.generated) maps each to its module.
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
