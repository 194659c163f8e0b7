"""The embedded, generated "collage" retrieval benchmark (no download; see ``collage_render`` for
what the images look like and why).

Each image is a ``grid x grid`` mosaic (default 2 x 2 tiles of 32 px -> 64 px); one random tile
holds the class glyph, the rest is varied nuisance. Train classes are ids ``0..num_train_classes-1``
and test classes the next ``num_test_classes`` ids, so the splits are class-disjoint by
construction. ``object_boxes`` gives the object tile of every image, to measure how much pooling
weight lands on it (its area share is ``1 / grid**2``).

:func:`write_collage_folder` writes the same images as an image folder (``root/class_NNN/NN.png`` +
``root/collage.json`` with the object tiles' boxes, as every family of :mod:`timm_gsp.data.generated`),
by default 3 x 3 tiles of 32 px (96 px), for ``--dataset folder``.

Generation is a pure function of :class:`CollageConfig`: every class's look comes from a generator
seeded by ``(seed, class id)`` and its images from ``(seed, class id, images per class)``. The
result is cached under ``<cache root>/collage-<hash of config>/`` as uncompressed ``.npy`` files so
they can be memory-mapped: DataLoader workers then share one copy through the page cache.
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any, Dict, Optional, Tuple

import numpy as np
import torch
from PIL import Image

from ...errors import ConfigError
from ...utils import PathLike
from ..base import RetrievalDataset, Transform
from .collage_render import make_distractor_pool, make_glyph, render_images
from .folder_family import write_generated_folder

__all__ = ["CollageConfig", "CollageDataset", "collage_folder_config", "default_cache_root", "ensure_collage",
           "generate_collage", "write_collage_folder"]

# Bump when the drawing code changes output: it is part of the cache key, so stale caches are not reused.
# The name collage.json records as "generator": a stable name, not the module's path.
GENERATOR = "timm_gsp.data.collage"
GENERATOR_VERSION = 2  # 2: colour jitter 0.2, 6 hue bins
_SPLITS = ("train", "test")
_STREAM_CLASS, _STREAM_IMAGES, _STREAM_POOL = 0, 1, 2


@dataclass(frozen=True)
class CollageConfig:
    """Everything that determines the generated images (and hence the cache key)."""

    num_train_classes: int = 100
    num_test_classes: int = 100
    train_per_class: int = 25
    test_per_class: int = 20
    image_size: int = 64
    grid_size: int = 2
    seed: int = 0

    def __post_init__(self) -> None:
        for field in ("num_train_classes", "num_test_classes", "train_per_class", "test_per_class"):
            if int(getattr(self, field)) < 1:
                raise ValueError(f"CollageConfig.{field} must be >= 1, got {getattr(self, field)}")
        if self.grid_size < 1 or self.image_size % self.grid_size:
            raise ValueError(f"CollageConfig: image_size ({self.image_size}) must be a multiple of grid_size ({self.grid_size})")
        if self.image_size // self.grid_size < 8:
            raise ValueError(f"CollageConfig: tiles of {self.image_size // self.grid_size} px are too small (min 8)")

    @property
    def tile_size(self) -> int:
        return self.image_size // self.grid_size

    def class_ids(self, split: str) -> range:
        """Global class ids of ``split``; train and test ranges never overlap."""
        if split == "train":
            return range(0, self.num_train_classes)
        if split == "test":
            return range(self.num_train_classes, self.num_train_classes + self.num_test_classes)
        raise ConfigError(f"collage: unknown split {split!r}; expected 'train' or 'test' (use val_fraction for 'val')")

    def per_class(self, split: str) -> int:
        return self.train_per_class if split == "train" else self.test_per_class

    def cache_key(self) -> str:
        """12 hex chars of SHA-1 over the config and the generator version."""
        blob = json.dumps({**asdict(self), "version": GENERATOR_VERSION}, sort_keys=True)
        return hashlib.sha1(blob.encode()).hexdigest()[:12]


def default_cache_root() -> Path:
    """``$TIMM_GSP_CACHE``, else ``$XDG_CACHE_HOME/timm_gsp``, else ``~/.cache/timm_gsp``."""
    if os.environ.get("TIMM_GSP_CACHE"):
        return Path(os.environ["TIMM_GSP_CACHE"]).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME")
    return (Path(xdg).expanduser() if xdg else Path.home() / ".cache") / "timm_gsp"


def generate_collage(config: CollageConfig, splits: Tuple[str, ...] = _SPLITS) -> Dict[str, Dict[str, np.ndarray]]:
    """Render the dataset in memory.

    Returns:
        ``{split: {"images": uint8 (N, S, S, 3), "class_ids": int64 (N,), "tiles": int64 (N,)}}``
        with images ordered class by class. ``tiles`` is the row-major object tile index.
    """
    pool = make_distractor_pool(np.random.default_rng([config.seed, _STREAM_POOL]))
    out: Dict[str, Dict[str, np.ndarray]] = {}
    for split in splits:
        n = config.per_class(split)
        ids = config.class_ids(split)
        images = np.empty((len(ids) * n, config.image_size, config.image_size, 3), np.uint8)
        tiles = np.empty(len(ids) * n, np.int64)
        for k, cid in enumerate(ids):
            images[k * n:(k + 1) * n], tiles[k * n:(k + 1) * n] = _render_class(config, pool, cid, n)
        out[split] = {"images": images, "class_ids": np.repeat(np.asarray(ids, np.int64), n), "tiles": tiles}
    return out


def _render_class(config: CollageConfig, pool, class_id: int, n: int) -> Tuple[np.ndarray, np.ndarray]:
    """``n`` images of global class ``class_id``: (uint8 (n, S, S, 3), object tile index (n,)); the
    seeds depend on ``n`` (the split's images per class), as they always have."""
    glyph = make_glyph(np.random.default_rng([config.seed, _STREAM_CLASS, class_id]))
    rng = np.random.default_rng([config.seed, _STREAM_IMAGES, class_id, n])
    return render_images(glyph, n, config.image_size, config.grid_size, pool, rng)


def _write_preview(path: Path, images: np.ndarray, per_class: int, classes: int = 8, per_row: int = 8) -> None:
    """A PNG contact sheet for humans: one row per class."""
    rows = [images[c * per_class:c * per_class + min(per_row, per_class)] for c in range(min(classes, len(images) // per_class))]
    rows = [np.concatenate(list(r), axis=1) for r in rows]
    width = max(r.shape[1] for r in rows)
    rows = [np.pad(r, ((0, 0), (0, width - r.shape[1]), (0, 0))) for r in rows]
    Image.fromarray(np.concatenate(rows, axis=0)).save(path)


def ensure_collage(config: CollageConfig, cache_root: Optional[PathLike] = None) -> Path:
    """Return the cache folder of ``config``, generating it first if absent.

    The folder is written under a temporary name and renamed into place, so a crash never leaves a
    half-written cache and concurrent processes (DDP ranks) at worst generate twice: the first
    rename wins and the others discard their copy.
    """
    root = Path(cache_root).expanduser() if cache_root is not None else default_cache_root()
    final = root / f"collage-{config.cache_key()}"
    if (final / "meta.json").is_file():
        return final
    try:
        root.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.tmp-", dir=root))
    except OSError as exc:
        raise OSError(f"collage: cannot write the dataset cache under {root} ({exc}); pass another cache_dir "
                      "(or set TIMM_GSP_CACHE), or cache=False to keep it in memory") from exc
    try:
        start = time.perf_counter()
        data = generate_collage(config)
        seconds = time.perf_counter() - start
        for split, arrays in data.items():
            np.save(tmp / f"{split}_images.npy", arrays["images"])
        np.savez(tmp / "index.npz", **{f"{s}_{k}": a[k] for s, a in data.items() for k in ("class_ids", "tiles")})
        _write_preview(tmp / "preview.png", data["train"]["images"], config.train_per_class)
        meta = {"config": asdict(config), "version": GENERATOR_VERSION, "generation_seconds": round(seconds, 3)}
        (tmp / "meta.json").write_text(json.dumps(meta, indent=2))  # written last: marks completeness
        try:
            os.rename(tmp, final)
        except OSError:
            if not (final / "meta.json").is_file():
                raise
            # Another process finished first; use its identical copy.
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return final


def collage_folder_config(seed: int = 0, num_classes: int = 200, images_per_class: int = 20, image_size: int = 96,
                          grid_size: int = 3) -> CollageConfig:
    """The folder benchmark's config: ``num_classes`` classes (the first half train, the rest test) of
    ``images_per_class`` images, ``grid_size x grid_size`` tiles (default 3 x 3 of 32 px)."""
    if num_classes < 2:
        raise ConfigError(f"collage folder: need >= 2 classes, got {num_classes}")
    return CollageConfig(num_train_classes=num_classes // 2, num_test_classes=num_classes - num_classes // 2,
                         train_per_class=images_per_class, test_per_class=images_per_class,
                         image_size=image_size, grid_size=grid_size, seed=seed)


def write_collage_folder(root: PathLike, config: Optional[CollageConfig] = None, *, progress: bool = True) -> Path:
    """Write ``config``'s train then test classes as ``root/class_NNN/NN.png`` (global class ids, so the
    folder's sorted-name split gives back the same train / test classes and the very images of
    :func:`generate_collage`) and ``root/collage.json`` (config, each object tile's box); return ``root``.

    Default config: :func:`collage_folder_config` (200 classes x 20 images, 3 x 3 tiles, 96 px).
    Refuses a non-empty ``root`` unless it already holds this very config (then nothing is done).
    """
    config = config or collage_folder_config()
    num_train = config.num_train_classes

    def make_renderer():
        pool = make_distractor_pool(np.random.default_rng([config.seed, _STREAM_POOL]))
        tile = config.tile_size

        def render_class(class_id: int):
            images, tiles = _render_class(config, pool, class_id, config.per_class("train" if class_id < num_train else "test"))
            for image, t in zip(images, tiles.tolist()):
                x0, y0 = (t % config.grid_size) * tile, (t // config.grid_size) * tile
                yield Image.fromarray(image), (x0, y0, x0 + tile, y0 + tile)
        return render_class

    meta = {"generator": GENERATOR, "version": GENERATOR_VERSION, "config": asdict(config)}
    return write_generated_folder(root, "collage", meta, num_train + config.num_test_classes, make_renderer,
                                  progress=progress)


class CollageDataset(RetrievalDataset):
    """The generated collage benchmark as a :class:`RetrievalDataset`.

    Args:
        split: ``"train"`` or ``"test"`` (class-disjoint). For validation use ``build_dataset(...,
            val_fraction=...)``, which carves classes out of train.
        transform: applied to the ``S x S`` RGB PIL image.
        config: a :class:`CollageConfig`; or pass its fields as keyword arguments
            (``num_train_classes=..., seed=...``).
        cache_dir: cache root (default :func:`default_cache_root`).
        cache: ``False`` generates into memory and writes nothing.

    Attributes (besides the base ones):
        object_boxes: ``LongTensor (N, 4)``, the object tile ``(x0, y0, x1, y1)`` in pixels of the
            untransformed image, x1/y1 exclusive.
        object_tiles: ``LongTensor (N,)``, its row-major tile index.
        class_ids: ``LongTensor (N,)``, global class id (disjoint between train and test).
        config, cache_path.
    """

    def __init__(self, split: str = "train", transform: Optional[Transform] = None, *,
                 config: Optional[CollageConfig] = None, cache_dir: Optional[PathLike] = None,
                 cache: bool = True, **config_kwargs: Any) -> None:
        config = replace(config or CollageConfig(), **config_kwargs)
        ids = config.class_ids(split)  # validates split
        self.config = config
        if cache:
            self.cache_path: Optional[Path] = ensure_collage(config, cache_dir)
            with np.load(self.cache_path / "index.npz") as index:
                class_ids, tiles = index[f"{split}_class_ids"], index[f"{split}_tiles"]
            self._images: Optional[np.ndarray] = None  # opened lazily (mmap) in each process
        else:
            self.cache_path = None
            data = generate_collage(config, (split,))[split]
            class_ids, tiles = data["class_ids"], data["tiles"]
            self._images = data["images"]
        self._rows = np.arange(len(class_ids))  # row of each sample in the image array
        t, g = config.tile_size, config.grid_size
        tiles_t = torch.as_tensor(tiles, dtype=torch.long)
        x0, y0 = (tiles_t % g) * t, (tiles_t // g) * t
        boxes = torch.stack([x0, y0, x0 + t, y0 + t], dim=1)
        first = ids.start
        counts = np.zeros(len(ids), np.int64)
        samples = []
        for cid in class_ids.tolist():
            samples.append(f"{split}/{cid:04d}/{counts[cid - first]:03d}")
            counts[cid - first] += 1
        super().__init__(samples, (class_ids - first).tolist(), [f"collage-{c:04d}" for c in ids], transform,
                         name="collage", split=split, object_boxes=boxes)
        self.object_tiles = tiles_t
        self.class_ids = torch.as_tensor(class_ids, dtype=torch.long)
        self._split_file = split

    @property
    def images(self) -> np.ndarray:
        """All images of the split, ``uint8 (N_all, S, S, 3)`` (memory-mapped when cached); index
        with :attr:`rows` after :meth:`select_classes`."""
        if self._images is None:
            assert self.cache_path is not None
            self._images = np.load(self.cache_path / f"{self._split_file}_images.npy", mmap_mode="r")
        return self._images

    @property
    def rows(self) -> np.ndarray:
        return self._rows

    def load_image(self, index: int) -> Image.Image:
        return Image.fromarray(np.ascontiguousarray(self.images[self._rows[index]]))

    def _on_select(self, index: torch.Tensor) -> None:
        idx = index.numpy()
        self._rows = self._rows[idx]
        self.object_tiles = self.object_tiles[index]
        self.class_ids = self.class_ids[index]

    def __getstate__(self) -> Dict[str, Any]:
        # Do not pickle the memory map into spawned DataLoader workers; they reopen the file.
        state = self.__dict__.copy()
        if self.cache_path is not None:
            state["_images"] = None
        return state
