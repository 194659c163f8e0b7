"""The "fashion" benchmark: find one specific real Fashion-MNIST item among others, on photo clutter.

A generated image folder (``root/class_NNN/NN.png`` + ``root/fashion.json``, written like every family
in :mod:`timm_gsp.data.generated`) whose classes are *instances*: class ``k`` is one particular
Fashion-MNIST item (a 28 x 28 greyscale photo of one garment), chosen by the seed. Many classes
share a clothing category (dozens of different sneakers), so they are fine-grained: the class is
the item's exact outline and texture. Each image (default 96 px RGB) is

* clutter: the scenes benchmark's patchwork of real-photo crops, dulled towards grey so the items
  on it stay legible;
* 2-4 distractors: other Fashion-MNIST items (never any class's item), random per image, each
  tinted with a random colour, rotated and placed anywhere, sometimes overlapping;
* the class item on top, small (about 27-38 px across on 96 px), in its class's colour (drawn per
  class, jittered per image; with 200 classes many share a similar colour, so colour narrows the
  class down and the item's outline and print decide it), rotated by up to 15 degrees, anywhere, brightness
  jittered.

``class_colour=False`` tints the class item with a random colour per image instead: only the item's
outline and print then tell the class.

The item pool is Fashion-MNIST's 60 000 training images, read from the folder that ``fashion_dir``
names, else ``$TIMM_GSP_FASHION_MNIST`` (``FASHION_DIR_ENV``), else ``DEFAULT_FASHION_DIR``, where
Debian's package ``dataset-fashion-mnist`` installs it (:func:`fashion_mnist_dir`). Class items are
drawn without replacement, so the train classes (the first half by sorted name) and the test classes
are different items of the same categories. Generation is a pure function of :class:`FashionConfig`
(numpy generators seeded by ``(seed, stream, ...)``).

    from timm_gsp.data.generated.fashion import FashionConfig, write_fashion
    root = write_fashion("data/fashion", FashionConfig())   # 200 classes x 20 images, ~30 s

Needs scikit-image and scipy (``pip install timm-gsp[bench]``): the photographs, the items' silhouettes.
"""
from __future__ import annotations

import gzip
import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Iterator, List, Optional, Tuple

import numpy as np
from PIL import Image
from scipy.ndimage import binary_fill_holes

from ...errors import ConfigError, DatasetLayoutError
from ...utils import PathLike
from .folder_family import Box, FolderConfig, check_size_share, write_generated_folder
from .scenes import photo_clutter, photo_pool

__all__ = ["CATEGORIES", "DEFAULT_FASHION_DIR", "FASHION_DIR_ENV", "FashionConfig", "FashionItems", "class_items",
           "distractor_scene", "fashion_mnist_dir", "load_fashion_mnist", "class_tint", "random_tint", "render_fashion",
           "write_fashion"]

# Where Debian's package dataset-fashion-mnist installs Fashion-MNIST; FASHION_DIR_ENV names another folder.
DEFAULT_FASHION_DIR = Path("/usr/share/datasets/fashion-mnist")
FASHION_DIR_ENV = "TIMM_GSP_FASHION_MNIST"
_IMAGES, _LABELS = "train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz"
CATEGORIES = ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot")
# The name fashion.json records as "generator": a stable name, not the module's path.
GENERATOR = "timm_gsp.data.fashion"
GENERATOR_VERSION = 2
_STREAM_ITEMS, _STREAM_IMAGE, _STREAM_COLOUR = 0, 1, 2


@dataclass(frozen=True)
class FashionConfig(FolderConfig):
    """Everything that determines the generated folder."""

    object_size: Tuple[float, float] = (0.28, 0.4)       # class item side range, share of the image side
    distractor_size: Tuple[float, float] = (0.2, 0.35)   # distractor side range, share of the image side
    num_distractors: Tuple[int, int] = (2, 4)            # inclusive range
    class_colour: bool = True                            # the class item keeps its class's colour (False: random)
    colour_jitter: float = 0.1                           # per-image factor on each channel of the class colour: 1 +- this
    clutter_crops: Tuple[int, int] = (5, 9)              # photo crops over the first, full-image one
    clutter_contrast: float = 0.55                       # clutter blended towards its mean grey by 1 - this
    max_rotation: float = 15.0                           # degrees, either way
    seed: int = 0

    def __post_init__(self) -> None:
        super().__post_init__()
        for field in ("object_size", "distractor_size"):
            check_size_share("FashionConfig", field, getattr(self, field))
        low, high = self.num_distractors
        if not 0 <= low <= high:
            raise ConfigError(f"FashionConfig: num_distractors must satisfy 0 <= low <= high, got {self.num_distractors}")
        if not 0.0 <= self.colour_jitter < 1.0:
            raise ConfigError(f"FashionConfig: colour_jitter must be in [0, 1), got {self.colour_jitter}")
        if not 0.0 <= self.clutter_contrast <= 1.0:
            raise ConfigError(f"FashionConfig: clutter_contrast must be in [0, 1], got {self.clutter_contrast}")


@dataclass(frozen=True)
class FashionItems:
    """Fashion-MNIST items: ``images`` uint8 (N, 28, 28), bright item on black; ``labels`` int64 (N,)."""

    images: np.ndarray
    labels: np.ndarray


def _read_idx(path: Path) -> np.ndarray:
    """An IDX file (gzip): big-endian header ``0, 0, dtype 0x08 (uint8), ndim``, ndim int32 sizes, data."""
    with gzip.open(path, "rb") as f:
        data = f.read()
    if data[:3] != b"\x00\x00\x08":
        raise DatasetLayoutError(f"fashion: {path} is not an IDX file of uint8 (header {data[:4]!r})")
    ndim = data[3]
    shape = tuple(int(v) for v in np.frombuffer(data, ">i4", count=ndim, offset=4))
    return np.frombuffer(data, np.uint8, offset=4 + 4 * ndim).reshape(shape)


def fashion_mnist_dir(directory: Optional[PathLike] = None) -> Path:
    """The folder holding Fashion-MNIST: ``directory``, else ``$TIMM_GSP_FASHION_MNIST`` when set, else
    :data:`DEFAULT_FASHION_DIR`."""
    if directory is not None:
        return Path(directory)
    return Path(os.environ.get(FASHION_DIR_ENV) or DEFAULT_FASHION_DIR)


def load_fashion_mnist(directory: Optional[PathLike] = None) -> FashionItems:
    """Fashion-MNIST's training items from ``fashion_mnist_dir(directory)``."""
    directory = fashion_mnist_dir(directory)
    for name in (_IMAGES, _LABELS):
        if not (directory / name).is_file():
            raise DatasetLayoutError(f"fashion: Fashion-MNIST file {directory / name} not found; install it with "
                                     "`apt-get install dataset-fashion-mnist` (or pass the folder holding it)")
    images, labels = _read_idx(directory / _IMAGES), _read_idx(directory / _LABELS)
    if images.ndim != 3 or labels.shape != images.shape[:1]:
        raise DatasetLayoutError(f"fashion: {directory} holds {images.shape} images and {labels.shape} labels; "
                                 "expected (N, 28, 28) and (N,)")
    return FashionItems(images, labels.astype(np.int64))


def random_tint(rng: np.random.Generator) -> np.ndarray:
    """A colour (3,) in [0.35, 1] with at least one full channel, so the item stays bright."""
    hue_rgb = rng.uniform(0.0, 1.0, size=3)
    return 0.35 + 0.65 * hue_rgb / max(float(hue_rgb.max()), 1e-3)


def class_tint(config: FashionConfig, class_id: int) -> np.ndarray:
    """The colour (3,) of class ``class_id``'s item, drawn from the seed and the class alone."""
    return random_tint(np.random.default_rng([config.seed, _STREAM_COLOUR, class_id]))


def _item_sticker(item: np.ndarray, side: int, rng: np.random.Generator, max_rotation: float,
                  tint: Optional[np.ndarray] = None) -> Image.Image:
    """One item as an RGBA sticker about ``side`` px across: ``tint`` (default a random colour) over the
    item's own luminance (texture kept), its filled silhouette as alpha, rotated."""
    gray = item.astype(np.float32) / 255.0
    # The silhouette: every pixel of the item, dark print inside it included (holes filled).
    mask = binary_fill_holes(gray > 0.04)
    tint = random_tint(rng) if tint is None else tint
    shade = 0.3 + 0.7 * gray                                          # dark print stays visible, not black
    rgb = (shade[..., None] * tint * 255.0).clip(0, 255).astype(np.uint8)
    sticker = Image.fromarray(np.dstack([rgb, (mask * 255).astype(np.uint8)]), "RGBA")
    sticker = sticker.resize((side, side), Image.LANCZOS)
    return sticker.rotate(float(rng.uniform(-max_rotation, max_rotation)), resample=Image.BICUBIC, expand=True)


def _paste(canvas: Image.Image, sticker: Image.Image, rng: np.random.Generator, gain: float) -> Box:
    """Paste ``sticker`` at a random place wholly inside ``canvas``; return its alpha's box."""
    side = canvas.size[0]
    w, h = sticker.size
    x, y = int(rng.integers(0, max(side - w, 0) + 1)), int(rng.integers(0, max(side - h, 0) + 1))
    rgb = Image.eval(sticker.convert("RGB"), lambda v: min(255, int(v * gain)))
    alpha = sticker.getchannel("A")
    canvas.paste(rgb, (x, y), alpha)
    ys, xs = np.nonzero(np.asarray(alpha) > 32)
    return (x + int(xs.min()), y + int(ys.min()), min(side, x + int(xs.max()) + 1), min(side, y + int(ys.max()) + 1))


def distractor_scene(config: FashionConfig, photos: List[np.ndarray], items: FashionItems,
                     distractor_pool: np.ndarray, rng: np.random.Generator) -> Image.Image:
    """The image before the class item goes on: dulled clutter and the distractor items (RGB)."""
    side = config.image_size
    clutter = np.asarray(photo_clutter(side, photos, rng, config.clutter_crops), np.float32)
    grey = clutter.mean()
    canvas = Image.fromarray((grey + config.clutter_contrast * (clutter - grey)).clip(0, 255).astype(np.uint8))
    count = int(rng.integers(config.num_distractors[0], config.num_distractors[1] + 1))
    for other in rng.choice(distractor_pool, size=count):
        size = max(8, int(round(side * rng.uniform(*config.distractor_size))))
        _paste(canvas, _item_sticker(items.images[other], size, rng, config.max_rotation), rng, float(rng.uniform(0.8, 1.15)))
    return canvas


def render_fashion(config: FashionConfig, photos: List[np.ndarray], items: FashionItems, item: int,
                   distractor_pool: np.ndarray, rng: np.random.Generator,
                   tint: Optional[np.ndarray] = None) -> Tuple[Image.Image, Box]:
    """One image (RGB, image_size square) of class item ``items.images[item]`` and its box; the
    class item goes on last, so distractors never hide it. ``tint``: its class colour (3,), jittered
    here by ``config.colour_jitter``; None draws a random colour (``class_colour=False``)."""
    canvas = distractor_scene(config, photos, items, distractor_pool, rng)
    size = max(8, int(round(config.image_size * rng.uniform(*config.object_size))))
    if tint is not None:
        tint = np.clip(tint * rng.uniform(1 - config.colour_jitter, 1 + config.colour_jitter, size=3), 0.0, 1.0)
    sticker = _item_sticker(items.images[item], size, rng, config.max_rotation, tint)
    box = _paste(canvas, sticker, rng, float(rng.uniform(0.8, 1.15)))
    return canvas, box


def class_items(config: FashionConfig, num_items: int) -> Tuple[np.ndarray, np.ndarray]:
    """(class item index per class (num_classes,), the distractor pool: every other item)."""
    if config.num_classes >= num_items:
        raise ConfigError(f"FashionConfig: {config.num_classes} classes need more than the {num_items} Fashion-MNIST items")
    order = np.random.default_rng([config.seed, _STREAM_ITEMS]).permutation(num_items)
    return order[:config.num_classes], np.sort(order[config.num_classes:])


def write_fashion(root: PathLike, config: FashionConfig = FashionConfig(), *, progress: bool = True,
                  fashion_dir: Optional[PathLike] = None) -> Path:
    """Write ``root/class_NNN/NN.png`` and ``root/fashion.json`` (config, boxes of the class item, and
    ``classes``: each class's Fashion-MNIST training index and category); return ``root``.

    ``fashion_dir``: the folder holding ``train-images-idx3-ubyte.gz`` (default: :func:`fashion_mnist_dir`).
    Refuses a non-empty ``root`` unless it already holds this very config (then nothing is done).
    """
    items = load_fashion_mnist(fashion_dir)
    chosen, distractor_pool = class_items(config, len(items.images))

    def make_renderer():
        photos = photo_pool()

        def render_class(class_id: int) -> Iterator[Tuple[Image.Image, Box]]:
            for index in range(config.images_per_class):
                rng = np.random.default_rng([config.seed, _STREAM_IMAGE, class_id, index])
                tint = class_tint(config, class_id) if config.class_colour else None
                yield render_fashion(config, photos, items, int(chosen[class_id]), distractor_pool, rng, tint)
        return render_class

    meta = {"generator": GENERATOR, "version": GENERATOR_VERSION, "config": asdict(config),
            "classes": {f"class_{k:03d}": {"item": int(i), "category": CATEGORIES[int(items.labels[i])]}
                        for k, i in enumerate(chosen)}}
    return write_generated_folder(root, "fashion", meta, config.num_classes, make_renderer, progress=progress)
