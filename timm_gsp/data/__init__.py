"""Datasets, class-balanced sampling and transforms for deep metric learning with timm-gsp.

* :func:`build_dataset` -- ``cub``, ``cars``, ``sop``, ``inshop``, ``folder``, ``collage``; splits
  ``train`` / ``test`` (``query`` / ``gallery`` for In-Shop) and a class-disjoint ``val`` carved
  from the train classes.
* :class:`CollageDataset` -- the embedded, generated benchmark (no download).
* :class:`MPerClassBatchSampler` -- m-per-class batches, DDP-aware, resumable; :class:`RandomBatchSampler`
  -- plain random batches, the same interface.
* :func:`build_transforms` -- timm train/eval transforms from a model's data config.
* :class:`CachedDataset` -- a split decoded once and served from memory (small datasets).
* ``generated/`` -- the generated image-folder benchmarks (scenes, fashion, collage) and their registry.

This package sits above the core (it builds on ``errors``, ``utils`` and ``models.model_config``) and
below the tools; it imports no tool.
"""
from .base import ImageFileDataset, RetrievalDataset
from .build import DATASETS, build_dataset, evaluation_splits
from .cache import DEFAULT_MAX_CACHE_BYTES, CachedDataset
from .datasets import CUB200, Cars196, FolderDataset, InShop, StanfordOnlineProducts
from .generated.collage import CollageConfig, CollageDataset, default_cache_root, ensure_collage, generate_collage
from .images import CorruptImageError, DatasetLayoutError, find_unreadable_images, load_rgb
from .sampler import MPerClassBatchSampler, RandomBatchSampler
from .splits import carve_validation, split_classes
from .transforms import Augmentation, build_eval_transform, build_train_transform, build_transforms, resolve_input_config

__all__ = [
    "Augmentation", "CUB200", "CachedDataset", "Cars196", "CollageConfig", "CollageDataset", "CorruptImageError",
    "DATASETS", "DEFAULT_MAX_CACHE_BYTES", "DatasetLayoutError", "FolderDataset", "ImageFileDataset", "InShop", "MPerClassBatchSampler", "RandomBatchSampler",
    "RetrievalDataset", "StanfordOnlineProducts", "build_dataset", "build_eval_transform", "build_train_transform", "build_transforms", "carve_validation",
    "default_cache_root", "ensure_collage", "evaluation_splits", "find_unreadable_images", "generate_collage",
    "load_rgb", "resolve_input_config", "split_classes",
]
