"""The "scenes" benchmark: a generated image folder of small objects on real-photo clutter.

Unlike the collage (a 2 x 2 mosaic held in memory), this benchmark is written to disk as a plain
``root/<class>/<image>.png`` folder and read back by ``--dataset folder``, so it exercises the path
a user's own images take. Each image (default 96 px) is

* clutter: a patchwork of crops of real photographs and textures (the images that scikit-image
  ships: astronaut, coffee, rocket, the Hubble deep field, brick, grass, gravel, ...), at random
  positions, scales and flips, different in every image;
* one object that defines the class: a class-specific silhouette (a smooth radial-harmonic
  blob/star) filled with a class-specific duotone of a real-photo patch (two class colours mapped
  over the patch's luminance), with a thin outline. Per image it is scaled (about 26-40 px across
  on a 96 px image, ~10 % of the area), rotated, shifted anywhere (never aligned to a feature grid)
  and jittered in brightness.

The object's box of every image is written to ``<root>/scenes.json`` (with the generator
settings), so a benchmark can measure how much pooling weight lands on the object. Generation is a
pure function of :class:`ScenesConfig` (numpy generators seeded by ``(seed, stream, class, image)``).

    from timm_gsp.data.generated.scenes import ScenesConfig, write_scenes
    root = write_scenes("data/scenes", ScenesConfig())      # 200 classes x 20 images, ~30 s

Needs scikit-image (``pip install timm-gsp[bench]``) for the photographs.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import List, Tuple

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

from ...errors import ConfigError
from ...utils import PathLike
from .folder_family import FolderConfig, check_size_share, write_generated_folder

__all__ = ["ScenesConfig", "photo_clutter", "photo_pool", "render_scene", "write_scenes"]

# The name scenes.json records as "generator": a stable name, not the module's path.
GENERATOR = "timm_gsp.data.scenes"
GENERATOR_VERSION = 1
# scikit-image's bundled photographs (colour and grey) and textures: the clutter, and the patches
# the object fills are cut from. All ship inside the scikit-image wheel (no download).
_PHOTOS = ("astronaut", "chelsea", "coffee", "hubble_deep_field", "immunohistochemistry", "retina", "rocket",
           "colorwheel", "camera", "moon", "coins", "clock", "cell", "page", "text", "brick", "grass", "gravel")
_STREAM_CLASS, _STREAM_IMAGE = 0, 1


@dataclass(frozen=True)
class ScenesConfig(FolderConfig):
    """Everything that determines the generated folder."""

    object_size: Tuple[float, float] = (0.27, 0.42)  # object diameter range, as a share of the image side
    clutter_crops: Tuple[int, int] = (5, 9)           # crops pasted over the first, full-image one
    layout: str = "free"  # "free": anywhere at any scale; "grid": fills one random cell of a 3 x 3 grid
    seed: int = 0

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.layout not in ("free", "grid"):
            raise ConfigError(f"ScenesConfig: layout must be 'free' or 'grid', got {self.layout!r}")
        check_size_share("ScenesConfig", "object_size", self.object_size)


def photo_pool() -> List[np.ndarray]:
    """The clutter and fill sources: uint8 RGB arrays (H, W, 3), grey ones expanded to RGB."""
    try:
        import skimage.data
    except ImportError as error:
        raise ImportError("the scenes benchmark cuts its clutter from scikit-image's bundled photographs: "
                          "pip install 'timm-gsp[bench]' (or scikit-image)") from error
    photos = []
    for name in _PHOTOS:
        image = np.asarray(getattr(skimage.data, name)())
        if image.ndim == 2:
            image = np.repeat(image[:, :, None], 3, axis=2)
        photos.append(np.ascontiguousarray(image[:, :, :3].astype(np.uint8)))
    return photos


def _random_crop(photo: np.ndarray, size: Tuple[int, int], rng: np.random.Generator, zoom: float) -> Image.Image:
    """A crop of ``photo`` covering ``zoom`` x the output size in source pixels, resized to ``size`` (w, h)."""
    h, w = photo.shape[:2]
    cw, ch = min(w, max(8, int(size[0] * zoom))), min(h, max(8, int(size[1] * zoom)))
    x, y = int(rng.integers(0, w - cw + 1)), int(rng.integers(0, h - ch + 1))
    crop = Image.fromarray(photo[y:y + ch, x:x + cw]).resize(size, Image.BILINEAR)
    if rng.random() < 0.5:
        crop = crop.transpose(Image.FLIP_LEFT_RIGHT)
    return crop


def photo_clutter(side: int, photos: List[np.ndarray], rng: np.random.Generator,
                  crops: Tuple[int, int] = (5, 9), layout: str = "free") -> Image.Image:
    """A patchwork of photo crops covering a ``side`` square (RGB): one full-image crop and
    ``crops`` (inclusive range) more at random places; layout "grid": one crop per 3 x 3 cell."""
    if layout == "grid":
        canvas = Image.new("RGB", (side, side))
        cell = side // 3
        for row in range(3):
            for col in range(3):
                crop = _random_crop(photos[rng.integers(len(photos))], (cell, cell), rng, zoom=rng.uniform(0.7, 3.0))
                canvas.paste(crop, (col * cell, row * cell))
        return canvas
    canvas = _random_crop(photos[rng.integers(len(photos))], (side, side), rng, zoom=rng.uniform(1.0, 3.0))
    for _ in range(int(rng.integers(crops[0], crops[1] + 1))):
        w, h = (int(v) for v in rng.integers(side // 5, side // 2 + 1, size=2))
        crop = _random_crop(photos[rng.integers(len(photos))], (w, h), rng, zoom=rng.uniform(0.7, 3.0))
        canvas.paste(crop, (int(rng.integers(-w // 3, side - w // 2)), int(rng.integers(-h // 3, side - h // 2))))
    return canvas


@dataclass(frozen=True)
class _ClassObject:
    """One class's look at a reference resolution: an RGBA sticker (S, S, 4)."""

    sticker: Image.Image


def _silhouette(rng: np.random.Generator, size: int) -> Image.Image:
    """A smooth radial-harmonic blob/star mask ('L', size x size), filling most of the square."""
    freqs = rng.choice(np.arange(2, 7), size=int(rng.integers(1, 4)), replace=False)
    amps = rng.uniform(0.08, 0.3, size=len(freqs))
    phases = rng.uniform(0, 2 * math.pi, size=len(freqs))
    aspect = rng.uniform(0.6, 1.0)
    angles = np.linspace(0, 2 * math.pi, 180, endpoint=False)
    radius = 1 + (amps[:, None] * np.cos(freqs[:, None] * angles + phases[:, None])).sum(0)
    radius = radius / radius.max() * 0.48 * size
    points = [(size / 2 + r * math.cos(a), size / 2 + aspect * r * math.sin(a)) for r, a in zip(radius, angles)]
    mask = Image.new("L", (size, size), 0)
    ImageDraw.Draw(mask).polygon(points, fill=255)
    return mask


def _class_object(config: ScenesConfig, photos: List[np.ndarray], class_id: int, size: int = 128) -> _ClassObject:
    rng = np.random.default_rng([config.seed, _STREAM_CLASS, class_id])
    mask = _silhouette(rng, size)
    patch = np.asarray(_random_crop(photos[rng.integers(len(photos))], (size, size), rng, zoom=rng.uniform(0.5, 1.5)))
    luminance = patch.astype(np.float32).mean(axis=2, keepdims=True) / 255.0
    dark, light = rng.uniform(0, 0.45, size=3), rng.uniform(0.55, 1.0, size=3)
    # two class colours, far enough apart in each channel for the patch's structure to show
    fill = (dark + (light - dark) * luminance) * 255.0
    sticker = Image.fromarray(fill.clip(0, 255).astype(np.uint8)).convert("RGBA")
    edge = mask.filter(ImageFilter.MaxFilter(5))  # a thin outline around the silhouette
    outline = Image.new("RGBA", (size, size), tuple(int(c) for c in rng.integers(0, 256, size=3)) + (255,))
    base = Image.new("RGBA", (size, size), (0, 0, 0, 0))
    base.paste(outline, (0, 0), edge)
    base.paste(sticker, (0, 0), mask)
    return _ClassObject(base)


def render_scene(config: ScenesConfig, photos: List[np.ndarray], obj: _ClassObject,
                 rng: np.random.Generator) -> Tuple[Image.Image, Tuple[int, int, int, int]]:
    """One image (RGB, image_size square) and its object box (x0, y0, x1, y1), x1/y1 exclusive."""
    side = config.image_size
    canvas = photo_clutter(side, photos, rng, config.clutter_crops, config.layout)
    if config.layout == "grid":  # the object fills one cell, on that cell's crop
        diameter = side // 3
        cell = int(rng.integers(9))
        x, y = (cell % 3) * diameter, (cell // 3) * diameter
    else:
        diameter = max(8, int(round(side * rng.uniform(*config.object_size))))
        x, y = int(rng.integers(0, side - diameter + 1)), int(rng.integers(0, side - diameter + 1))
    sticker = obj.sticker.rotate(float(rng.uniform(-35, 35)), resample=Image.BICUBIC, expand=False)
    sticker = sticker.resize((diameter, diameter), Image.LANCZOS)
    gain = float(rng.uniform(0.8, 1.15))
    rgb = Image.eval(sticker.convert("RGB"), lambda v: min(255, int(v * gain)))
    canvas.paste(rgb, (x, y), sticker.getchannel("A"))
    alpha = np.asarray(sticker.getchannel("A")) > 32
    ys, xs = np.nonzero(alpha)
    box = (x + int(xs.min()), y + int(ys.min()), x + int(xs.max()) + 1, y + int(ys.max()) + 1)
    return canvas, box


def write_scenes(root: PathLike, config: ScenesConfig = ScenesConfig(), *, progress: bool = True) -> Path:
    """Write the folder ``root/class_NNN/NN.png`` and ``root/scenes.json``; return ``root``.

    Refuses a non-empty ``root`` unless it already holds this very config (then nothing is done).
    Written into a temporary sibling and renamed into place, so a kill leaves no half folder
    (:func:`.folder_family.write_generated_folder`).
    """
    def make_renderer():
        photos = photo_pool()

        def render_class(class_id: int):
            obj = _class_object(config, photos, class_id)
            for index in range(config.images_per_class):
                yield render_scene(config, photos, obj, np.random.default_rng([config.seed, _STREAM_IMAGE, class_id, index]))
        return render_class

    meta = {"generator": GENERATOR, "version": GENERATOR_VERSION, "config": asdict(config)}
    return write_generated_folder(root, "scenes", meta, config.num_classes, make_renderer, progress=progress)

