"""Retrieval evaluation of a model on held-out classes, on one process or under DDP."""
from __future__ import annotations

import contextlib
from typing import Dict, Optional, Sequence, Tuple

import torch
import torch.distributed as dist
from torch.utils.data import DataLoader, Dataset, Subset
from tqdm import tqdm

from .metrics import RetrievalMetrics

__all__ = ["embed_dataset", "evaluate_retrieval", "shard_indices"]


def _world() -> Tuple[int, int]:
    if dist.is_available() and dist.is_initialized():
        return dist.get_world_size(), dist.get_rank()
    return 1, 0


def shard_indices(length: int, world_size: int, rank: int) -> range:
    """Contiguous block ``rank`` of ``world_size`` (no padding): gathered in rank order, the
    blocks give back ``range(length)`` exactly, so distributed metrics equal single-process ones."""
    per_rank, extra = divmod(length, world_size)
    start = rank * per_rank + min(rank, extra)
    return range(start, start + per_rank + (rank < extra))


@torch.no_grad()
def embed_dataset(
        model: torch.nn.Module,
        dataset: Dataset,
        batch_size: int = 64,
        num_workers: int = 0,
        device: Optional[torch.device] = None,
        amp_dtype: Optional[torch.dtype] = None,
        progress: bool = True,
) -> Tuple[torch.Tensor, torch.Tensor]:
    """Embeddings (M, D) float32 and labels (M,) of this rank's shard of ``dataset``."""
    world_size, rank = _world()
    device = device or next(model.parameters()).device
    shard = Subset(dataset, list(shard_indices(len(dataset), world_size, rank)))
    loader = DataLoader(shard, batch_size=batch_size, shuffle=False, num_workers=num_workers)
    was_training = model.training
    model.eval()
    embeddings, labels = [], []
    autocast = torch.autocast(device.type, dtype=amp_dtype) if amp_dtype else contextlib.nullcontext()
    try:
        for images, targets in tqdm(loader, desc="embed", leave=False, disable=not progress or rank != 0):
            with autocast:
                out = model(images.to(device, non_blocking=True))
            embeddings.append(out.float())
            labels.append(torch.as_tensor(targets, device=device))
    finally:
        model.train(was_training)
    width = embeddings[0].shape[1] if embeddings else 0
    if not embeddings:
        return torch.empty(0, width, device=device), torch.empty(0, dtype=torch.long, device=device)
    return torch.cat(embeddings), torch.cat(labels)


def evaluate_retrieval(
        model: torch.nn.Module,
        splits: Dict[str, Dataset],
        k_values: Sequence[int] = (1, 2, 4, 8),
        distance: str = "cosine",
        **embed_kwargs,
) -> Dict[str, float]:
    """Retrieval metrics of ``model`` on ``{"test": ds}`` (same-set) or ``{"query": q, "gallery": g}``.

    Under DDP each rank embeds its shard; the metric gathers all of them, so every rank returns
    the metrics of the whole set.
    """
    query_gallery = set(splits) == {"query", "gallery"}
    if not query_gallery and len(splits) != 1:
        raise ValueError(f"expected one split or query + gallery, got {sorted(splits)}")
    device = embed_kwargs.get("device") or next(model.parameters()).device
    metric = RetrievalMetrics(k_values=k_values, distance=distance,
                              protocol="query_gallery" if query_gallery else "same_set").to(device)
    for name, dataset in splits.items():
        embeddings, labels = embed_dataset(model, dataset, **embed_kwargs)
        if query_gallery:
            metric.update(embeddings, labels, torch.full_like(labels, name == "query", dtype=torch.bool))
        else:
            metric.update(embeddings, labels)
    return metric.compute()
