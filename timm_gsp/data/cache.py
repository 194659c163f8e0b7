"""Decoded-image cache: decode a small dataset once, serve every epoch from memory.

For runs whose speed is set by image decoding rather than by the model (small images, a small
model, few CPU cores). :class:`CachedDataset` decodes every image of a split once, in the calling
process, with a progress bar. Build it before the ``DataLoader`` starts its workers: with the fork
start method (Linux) the workers then share the decoded pixels copy-on-write, and since nothing
writes to them, no page is ever copied. With spawn (macOS, Windows) each worker gets its own copy.

    train_set = build_dataset("folder", root, "train", transform=train_transform)
    train_set = CachedDataset(train_set)     # ConfigError when the pixels would exceed max_bytes
    loader = DataLoader(train_set, batch_sampler=sampler, num_workers=2, persistent_workers=True)

Wrap a split after carving it (train / val), so that only its own images are decoded;
``select_classes`` on a cached split works too and keeps the selected images cached.
"""
from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor
from typing import List, Optional

import numpy as np
import torch
from PIL import Image
from tqdm import tqdm

from ..errors import ConfigError
from .base import RetrievalDataset

__all__ = ["CachedDataset", "DEFAULT_MAX_CACHE_BYTES"]

DEFAULT_MAX_CACHE_BYTES = 4 * 2**30
_PROBE_IMAGES = 32  # images decoded first to estimate the whole split's size


class CachedDataset(RetrievalDataset):
    """``dataset`` with every image decoded once and kept in memory (read-only uint8 arrays).

    ``cached[i]`` is ``dataset[i]``: ``(transform(PIL image), label)``, the image a fresh copy of
    the cached pixels, so a transform may modify it. Carries ``samples``, ``labels``, ``classes``,
    ``object_boxes``, ``skipped``, ``name``, ``split`` and ``transform`` (the dataset's, settable);
    other attributes of the wrapped class are not carried.

    Args:
        dataset: any :class:`RetrievalDataset`, typically one training split.
        max_bytes: the most memory the decoded pixels may take. The size is estimated from
            ``_PROBE_IMAGES`` images spread over the split before the rest is decoded, and checked
            again while decoding.
        progress: show a tqdm progress bar.
        num_threads: decoding threads (Pillow releases the GIL while it decodes); default
            ``min(8, CPU count)``.

    Raises:
        ConfigError: the decoded pixels would exceed ``max_bytes``; the message names
            ``--cache-images`` (the training script's flag) and the estimated size.
    """

    def __init__(self, dataset: RetrievalDataset, *, max_bytes: int = DEFAULT_MAX_CACHE_BYTES,
                 progress: bool = True, num_threads: Optional[int] = None) -> None:
        super().__init__(dataset.samples, dataset.labels.tolist(), dataset.classes, dataset.transform,
                         name=dataset.name, split=dataset.split, object_boxes=dataset.object_boxes)
        self.skipped = list(dataset.skipped)
        self._pixels: List[Optional[np.ndarray]] = [None] * len(dataset)
        probe = sorted({int(i) for i in np.linspace(0, len(dataset) - 1, min(len(dataset), _PROBE_IMAGES))})
        for i in probe:
            self._pixels[i] = _decode(dataset, i)
        probe_bytes = sum(self._pixels[i].nbytes for i in probe)
        self._check_size(probe_bytes / max(len(probe), 1) * len(dataset), max_bytes, "about")
        rest = [i for i in range(len(dataset)) if self._pixels[i] is None]
        cached_bytes = probe_bytes
        pool = ThreadPoolExecutor(max_workers=num_threads or min(8, os.cpu_count() or 1))
        try:
            decoded = pool.map(lambda i: _decode(dataset, i), rest)
            for i, pixels in tqdm(zip(rest, decoded), total=len(dataset), initial=len(probe), unit="img",
                                  desc=f"caching {self.name}/{self.split}", disable=not progress):
                self._pixels[i] = pixels
                cached_bytes += pixels.nbytes
                self._check_size(cached_bytes, max_bytes, "more than")
        finally:
            pool.shutdown(cancel_futures=True)  # a refusal must not wait for the remaining decodes

    def _check_size(self, nbytes: float, max_bytes: int, qualifier: str) -> None:
        if nbytes > max_bytes:
            raise ConfigError(f"--cache-images: {self.name}/{self.split} ({len(self)} images) decodes to {qualifier} "
                              f"{_size(nbytes)}, over the {_size(max_bytes)} limit; train without --cache-images "
                              f"or raise the limit (max_bytes)")

    @property
    def nbytes(self) -> int:
        """Memory taken by the decoded pixels."""
        return sum(pixels.nbytes for pixels in self._pixels)

    def load_image(self, index: int) -> Image.Image:
        # never writes to the cache: Pillow copies RGB into its own layout, other modes on first write
        return Image.fromarray(self._pixels[index])

    def _on_select(self, index: torch.Tensor) -> None:
        self._pixels = [self._pixels[i] for i in index.tolist()]


def _decode(dataset: RetrievalDataset, index: int) -> np.ndarray:
    pixels = np.asarray(dataset.load_image(index))
    pixels.setflags(write=False)  # shared copy-on-write with the workers: must never be written
    return pixels


def _size(nbytes: float) -> str:
    return f"{nbytes / 2**30:.1f} GiB" if nbytes >= 2**30 else f"{nbytes / 2**20:.1f} MiB"
