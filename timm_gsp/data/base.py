"""The common shape of every timm_gsp retrieval dataset.

A split holds ``samples`` (file paths or ids), integer ``labels`` contiguous in
``0..num_classes-1`` and ``classes`` (names, indexed by label). Labels are kept as a tensor so
samplers and evaluators never decode an image to learn a label.
"""
from __future__ import annotations

import copy
import warnings
from typing import Any, Callable, Dict, Hashable, List, Optional, Sequence, Tuple

import torch
from PIL import Image
from torch.utils.data import Dataset

from .images import find_unreadable_images, load_rgb

__all__ = ["RetrievalDataset", "ImageFileDataset", "Transform", "contiguous_labels"]

Transform = Callable[[Image.Image], Any]


def contiguous_labels(raw: Sequence[Hashable], order: Optional[Sequence[Hashable]] = None) -> Tuple[List[int], List[Hashable]]:
    """Map raw class keys to ``0..C-1``.

    Args:
        raw: one raw class key per sample (int ids, item strings, ...).
        order: the class keys defining the label order (default: sorted unique ``raw``). Passing the
            same ``order`` to two splits gives them the same label space (In-Shop query/gallery).

    Returns:
        ``(labels, keys)``: ``labels[i]`` is the index of ``raw[i]`` in ``keys``.
    """
    keys = list(order) if order is not None else sorted(set(raw))
    index = {k: i for i, k in enumerate(keys)}
    return [index[r] for r in raw], keys


class RetrievalDataset(Dataset):
    """Base class: ``dataset[i] -> (transform(PIL RGB image), int label)``.

    Attributes:
        samples: ``list[str]`` of length N -- image paths, or ids for generated data.
        labels: ``LongTensor`` of shape ``(N,)`` with values in ``0..num_classes-1``.
        classes: ``list[str]`` of length ``num_classes``; ``classes[label]`` is the class name.
        object_boxes: optional ``LongTensor (N, 4)`` of ground-truth object regions
            ``(x0, y0, x1, y1)`` in pixels of the untransformed image, x1/y1 exclusive.
        skipped: ``[(path, reason)]`` left out by ``skip_corrupt=True``.
        name, split: dataset name and split for messages.
    """

    def __init__(
        self,
        samples: Sequence[str],
        labels: Sequence[int],
        classes: Sequence[str],
        transform: Optional[Transform] = None,
        *,
        name: str = "dataset",
        split: str = "train",
        object_boxes: Optional[torch.Tensor] = None,
    ) -> None:
        self.samples: List[str] = list(samples)
        self.labels: torch.Tensor = torch.as_tensor(list(labels), dtype=torch.long)
        self.classes: List[str] = [str(c) for c in classes]
        self.transform = transform
        self.name = name
        self.split = split
        self.object_boxes = object_boxes
        self.skipped: List[Tuple[str, str]] = []
        if len(self.samples) != len(self.labels):
            raise ValueError(f"{name}/{split}: {len(self.samples)} samples but {len(self.labels)} labels")
        if len(self.labels) and (int(self.labels.min()) < 0 or int(self.labels.max()) >= len(self.classes)):
            raise ValueError(f"{name}/{split}: labels out of range 0..{len(self.classes) - 1}")

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    def __len__(self) -> int:
        return len(self.samples)

    def load_image(self, index: int) -> Image.Image:
        """Untransformed RGB image of sample ``index``; subclasses implement."""
        raise NotImplementedError

    def __getitem__(self, index: int) -> Tuple[Any, int]:
        img = self.load_image(index)
        if self.transform is not None:
            img = self.transform(img)
        return img, int(self.labels[index])

    def select_classes(self, class_labels: Sequence[int], split: Optional[str] = None) -> "RetrievalDataset":
        """A copy holding only the samples of ``class_labels`` (current label values), relabelled
        contiguously in increasing order of the old labels. Used to carve class-disjoint splits."""
        keep_classes = sorted({int(c) for c in class_labels})
        if any(c < 0 or c >= self.num_classes for c in keep_classes):
            raise ValueError(f"{self.name}: class labels must be in 0..{self.num_classes - 1}")
        remap = torch.full((self.num_classes,), -1, dtype=torch.long)
        remap[keep_classes] = torch.arange(len(keep_classes))
        mask = remap[self.labels] >= 0
        idx = mask.nonzero().flatten()
        out = copy.copy(self)
        out.samples = [self.samples[i] for i in idx.tolist()]
        out.labels = remap[self.labels[idx]]
        out.classes = [self.classes[c] for c in keep_classes]
        if self.object_boxes is not None:
            out.object_boxes = self.object_boxes[idx]
        out._on_select(idx)
        if split is not None:
            out.split = split
        return out

    def _on_select(self, index: torch.Tensor) -> None:
        """Hook for subclasses holding more per-sample arrays (``index``: kept rows, LongTensor)."""

    def __repr__(self) -> str:
        return (f"{type(self).__name__}(name={self.name!r}, split={self.split!r}, "
                f"samples={len(self)}, classes={self.num_classes})")


class ImageFileDataset(RetrievalDataset):
    """A retrieval split whose samples are image file paths.

    Built from ``(path, raw_class_key, class_name)`` records; labels are made contiguous here so
    every layout reader only has to parse its index files.
    """

    def __init__(
        self,
        records: Sequence[Tuple[str, Hashable]],
        class_names: Optional[Dict[Hashable, str]] = None,
        transform: Optional[Transform] = None,
        *,
        name: str,
        split: str,
        skip_corrupt: bool = False,
        class_order: Optional[Sequence[Hashable]] = None,
    ) -> None:
        """
        Args:
            records: ``[(path, raw_class_key)]`` in sample order.
            class_names: ``raw_key -> name``; default ``str(raw_key)``.
            skip_corrupt: fully decode every image now and drop unreadable ones with a warning.
            class_order: fixed label order (keeps query/gallery label spaces identical even if a
                class loses all its images to ``skip_corrupt``).
        """
        skipped: List[Tuple[str, str]] = []
        if skip_corrupt:
            skipped = find_unreadable_images([p for p, _ in records])
            if skipped:
                bad = {p for p, _ in skipped}
                records = [r for r in records if r[0] not in bad]
                shown = "; ".join(f"{p} ({why})" for p, why in skipped[:5])
                more = f"; ... and {len(skipped) - 5} more" if len(skipped) > 5 else ""
                warnings.warn(f"{name}/{split}: skipped {len(skipped)} corrupt images: {shown}{more}", RuntimeWarning, stacklevel=3)
        labels, keys = contiguous_labels([k for _, k in records], class_order)
        names = [class_names.get(k, str(k)) if class_names else str(k) for k in keys]
        super().__init__([p for p, _ in records], labels, names, transform, name=name, split=split)
        self.skipped = skipped

    def load_image(self, index: int) -> Image.Image:
        return load_rgb(self.samples[index], layout=f"{self.name}/{self.split}")
