"""Reading image files so that every failure names the file and the dataset layout.

Truncated JPEGs are the classic silent failure: Pillow decodes them "successfully" (grey bottom
rows) when ``PIL.ImageFile.LOAD_TRUNCATED_IMAGES`` is True. We never set it, force a full decode
(``load()``), and warn once if another library switched it on globally.

The other silent failure is ``convert("RGB")`` on pixels that are not 8-bit: it clips 16-bit
greyscale (PNG, TIFF, PGM: Pillow's modes ``I;16*`` and ``I``) to 255, nearly all white, and
truncates float (``F``) images in [0, 1] to 0, black. Those are scaled by their format's full range
instead (65535, or 1 for floats); pixels outside it, and integer images of more than 16 bits, have
no mapping we can trust and are refused. (Pillow already reads 16-bit RGB(A) PNG / PPM files as
8-bit ``RGB`` / ``RGBA``, keeping the high byte.)
"""
from __future__ import annotations

import os
import warnings
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import List, Optional, Sequence, Tuple

import numpy as np
from PIL import Image, ImageFile

from ..errors import CorruptImageError, DatasetLayoutError
from ..utils import PathLike

__all__ = [
    "CorruptImageError",
    "DatasetLayoutError",
    "IMG_EXTENSIONS",
    "find_unreadable_images",
    "is_image_file",
    "load_rgb",
]


IMG_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff", ".ppm", ".pgm")

_warned_truncated_flag = False


def _check_truncated_flag() -> None:
    global _warned_truncated_flag
    if ImageFile.LOAD_TRUNCATED_IMAGES and not _warned_truncated_flag:
        _warned_truncated_flag = True
        warnings.warn(
            "PIL.ImageFile.LOAD_TRUNCATED_IMAGES was set to True by some other code; truncated "
            "images will then decode silently with grey rows instead of raising. timm_gsp.data "
            "never sets it; set it back to False to detect truncated files.",
            RuntimeWarning,
            stacklevel=3,
        )


def load_rgb(path: PathLike, layout: str = "image") -> Image.Image:
    """Open ``path`` and fully decode it into an 8-bit RGB ``PIL.Image`` (H x W x 3).

    Raises:
        DatasetLayoutError: the file does not exist (message names path and ``layout``).
        CorruptImageError: the file is not a decodable image, is truncated, or holds pixels with
            no faithful 8-bit mapping (the message names the value range).
    """
    _check_truncated_flag()
    try:
        return _decode_rgb(path)
    except FileNotFoundError as exc:
        raise DatasetLayoutError(f"{layout}: image file not found: {path}") from exc
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as exc:
        # SyntaxError/ValueError: some Pillow plugins raise these for malformed headers.
        raise CorruptImageError(f"{layout}: corrupt, truncated or unconvertible image {path}: {exc}") from exc


def _decode_rgb(path: PathLike) -> Image.Image:
    """8-bit RGB image of ``path``; Pillow's errors, or ``ValueError`` for pixels that do not map."""
    with Image.open(path) as img:
        img.load()  # a lazy open reads only the header and would pass truncated files
        if img.mode != "F" and not img.mode.startswith("I"):
            return img.convert("RGB")
        full_scale = _full_scale(img)
        values = np.asarray(img)
    low, high = float(values.min()), float(values.max())
    if not 0 <= low <= high <= full_scale:  # also refuses NaN
        raise ValueError(f"{img.mode} pixel values span [{low:g}, {high:g}], outside the [0, {full_scale:g}] "
                         f"that maps to 8 bits")
    grey = np.rint(values * (255 / full_scale)).astype(np.uint8)
    return Image.fromarray(grey).convert("RGB")  # uint8 (H, W): mode L


def _full_scale(img: Image.Image) -> float:
    """The value of white in a float (``F``) or integer (``I;16*``, ``I``) image."""
    if img.mode == "F":
        return 1.0
    # Pillow gives mode I to 16-bit PGM (rescaled to 0..65535), to 16-bit PNG in older releases, and
    # to 32-bit integer TIFF, which has no standard white.
    bits = int(np.max(getattr(img, "tag_v2", {}).get(258, 16)))  # TIFF BitsPerSample, one per channel
    if bits > 16:
        raise ValueError(f"{bits}-bit integer pixels have no standard 8-bit mapping")
    return 65535.0


def _check_one(path: str) -> Optional[str]:
    """Return ``None`` if ``path`` decodes completely into RGB, else a short reason."""
    if not os.path.isfile(path):
        return "missing"
    try:
        _decode_rgb(path)
    except Exception as exc:  # any decode failure counts as unreadable; the reason is reported
        return f"{type(exc).__name__}: {exc}"
    return None


def find_unreadable_images(paths: Sequence[PathLike], num_threads: Optional[int] = None) -> List[Tuple[str, str]]:
    """Fully decode every image in ``paths``; return ``[(path, reason), ...]`` for the bad ones.

    Decoding runs in threads (Pillow releases the GIL while decoding), in the order given, so the
    result is deterministic. Used by ``skip_corrupt=True``; a full pass over a large dataset
    (SOP: 120k images) takes minutes, hence opt-in.
    """
    _check_truncated_flag()
    paths = [os.fspath(p) for p in paths]
    if num_threads is None:
        num_threads = min(8, os.cpu_count() or 1)
    if num_threads <= 1 or len(paths) < 64:
        reasons = [_check_one(p) for p in paths]
    else:
        with ThreadPoolExecutor(max_workers=num_threads) as pool:
            reasons = list(pool.map(_check_one, paths, chunksize=64))
    return [(p, r) for p, r in zip(paths, reasons) if r is not None]


def is_image_file(path: PathLike) -> bool:
    return Path(path).suffix.lower() in IMG_EXTENSIONS
