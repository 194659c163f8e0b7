"""Class-disjoint validation splits carved from the TRAIN classes.

Hyper-parameter search must never look at test classes; in the zero-shot protocol a validation set
must also be class-disjoint from what is trained on, so a fraction of the train *classes* (not
images) is held out.
"""
from __future__ import annotations

from typing import List, Sequence, Tuple, Union

import numpy as np

from ..errors import ConfigError
from .base import RetrievalDataset

__all__ = ["split_classes", "carve_validation"]


def split_classes(classes: Union[int, Sequence], val_fraction: float, seed: int = 0) -> Tuple[List[int], List[int]]:
    """Deterministically split class labels ``0..C-1`` into (train, val) label lists.

    Args:
        classes: the number of classes ``C``, or a sequence of length ``C`` (e.g. ``dataset.classes``).
        val_fraction: share of classes held out, in (0, 1); at least one class lands on each side.
        seed: the same (C, val_fraction, seed) always gives the same split, on every machine.

    Returns:
        ``(train_labels, val_labels)``: sorted, disjoint, together ``0..C-1``.
    """
    num = classes if isinstance(classes, int) else len(classes)
    if not 0.0 < val_fraction < 1.0:
        raise ConfigError(f"val_fraction must be in (0, 1), got {val_fraction}")
    if num < 2:
        raise ConfigError(f"need at least 2 classes to carve a class-disjoint validation split, got {num}")
    n_val = min(max(int(round(num * val_fraction)), 1), num - 1)
    # A seeded permutation rather than "last k classes": class ids often encode order (e.g. CUB
    # families are contiguous), and a contiguous block would make validation unrepresentative.
    perm = np.random.default_rng(seed).permutation(num)
    val = sorted(int(c) for c in perm[:n_val])
    train = sorted(int(c) for c in perm[n_val:])
    return train, val


def carve_validation(train_set: RetrievalDataset, split: str, val_fraction: float, seed: int = 0) -> RetrievalDataset:
    """``split="train"``: ``train_set`` minus the held-out classes; ``split="val"``: only those.
    Labels are re-made contiguous in both."""
    train_labels, val_labels = split_classes(train_set.num_classes, val_fraction, seed)
    if split == "train":
        return train_set.select_classes(train_labels, split="train")
    if split == "val":
        return train_set.select_classes(val_labels, split="val")
    raise ConfigError(f"carve_validation: split must be 'train' or 'val', got {split!r}")
