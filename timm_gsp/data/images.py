"""Reading image files so that every failure names the file and the dataset layout.

Truncated JPEGs are the classic silent failure: Pillow decodes them "successfully" (grey bottom
rows) when ``PIL.ImageFile.LOAD_TRUNCATED_IMAGES`` is True. We never set it, force a full decode
(``convert("RGB")`` calls ``load()``), and warn once if another library switched it on globally.
"""
from __future__ import annotations

import os
import warnings
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import List, Optional, Sequence, Tuple

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
    """Open ``path`` and fully decode it into an RGB ``PIL.Image`` (H x W x 3 once converted).

    Raises:
        DatasetLayoutError: the file does not exist (message names path and ``layout``).
        CorruptImageError: the file is not a decodable image or is truncated.
    """
    _check_truncated_flag()
    try:
        with Image.open(path) as img:
            # convert() forces load(): a lazy open would only read the header and pass truncated files.
            return img.convert("RGB")
    except FileNotFoundError as exc:
        raise DatasetLayoutError(f"{layout}: image file not found: {path}") from exc
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as exc:
        # SyntaxError/ValueError: some Pillow plugins raise these for malformed headers.
        raise CorruptImageError(f"{layout}: corrupt or truncated image {path}: {exc}") from exc


def _check_one(path: str) -> Optional[str]:
    """Return ``None`` if ``path`` decodes completely, else a short reason."""
    if not os.path.isfile(path):
        return "missing"
    try:
        with Image.open(path) as img:
            img.load()
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
