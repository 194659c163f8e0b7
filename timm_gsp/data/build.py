"""``build_dataset(name, root, split)``: one entry point for every dataset and split."""
from __future__ import annotations

from typing import Any, Callable, Dict, Optional, Tuple

from ..errors import ConfigError
from ..utils import PathLike
from .base import RetrievalDataset, Transform
from .datasets import CUB200, Cars196, FolderDataset, InShop, StanfordOnlineProducts
from .generated.collage import CollageDataset
from .splits import carve_validation

__all__ = ["DATASETS", "build_dataset", "evaluation_splits"]

DATASETS: Dict[str, Callable[..., RetrievalDataset]] = {
    "cub": CUB200,
    "cars": Cars196,
    "sop": StanfordOnlineProducts,
    "inshop": InShop,
    "folder": FolderDataset,
    "collage": lambda root, split, transform=None, **kw: CollageDataset(split, transform, cache_dir=root, **kw),
}


def evaluation_splits(name: str) -> Tuple[str, ...]:
    """The held-out split(s) a benchmark is evaluated on: ``("test",)`` (retrieval within the
    set, leave-one-out) or ``("query", "gallery")`` for In-Shop."""
    _check_name(name)
    return ("query", "gallery") if name == "inshop" else ("test",)


def _check_name(name: str) -> None:
    if name not in DATASETS:
        raise ConfigError(f"unknown dataset {name!r}; expected one of {sorted(DATASETS)}")


def build_dataset(name: str, root: Optional[PathLike] = None, split: str = "train",
                  transform: Optional[Transform] = None, *, val_fraction: float = 0.0, val_seed: int = 0,
                  **kwargs: Any) -> RetrievalDataset:
    """Build one split of a dataset.

    Args:
        name: ``cub``, ``cars``, ``sop``, ``inshop``, ``folder`` or ``collage``.
        root: dataset folder (for ``collage``: the cache root, ``None`` = default cache).
        split: ``train``, ``test`` (``query``/``gallery`` for inshop, also ``all`` for folder), or
            ``val``: a class-disjoint part of the TRAIN classes (needs ``val_fraction``).
        transform: applied to each PIL RGB image.
        val_fraction: if > 0, this share of train classes is held out (seeded by ``val_seed``):
            ``split="train"`` then returns the remaining classes and ``split="val"`` the held-out
            ones, so the two never overlap and test classes are never touched.
        kwargs: dataset-specific (``skip_corrupt``, ``num_train_classes``, ``train_fraction``,
            ``train_classes``, ``test_classes``, ``layout``, collage config fields, ``cache``).

    Returns:
        A :class:`RetrievalDataset`: ``ds[i] -> (image, label)`` with ``labels``, ``num_classes``,
        ``classes``, ``samples``.
    """
    _check_name(name)
    make = DATASETS[name]
    if split == "val" or (split == "train" and val_fraction):
        if not val_fraction:
            raise ConfigError(f"{name}: split='val' needs val_fraction > 0 (the share of train classes held out)")
        return carve_validation(make(root, "train", transform, **kwargs), split, val_fraction, val_seed)
    return make(root, split, transform, **kwargs)
