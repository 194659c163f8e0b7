"""Retrieval evaluation of a model on held-out classes, on one process or under DDP, and the
pictures that show it: a retrieval sheet (queries with their top-k) and a GSP weight-map sheet.

    check_evaluation_split({"test": dataset})                         # refuses a split that measures nothing
    metrics = evaluate_retrieval(model, {"test": dataset})            # {"precision_at_1": ..., ...}

    embedded = embed_splits(model, splits)                            # the same, in two steps,
    metrics = score_embeddings(embedded)                              # keeping the embeddings
    write_sheets(folder, model, splits, embedded, mean=..., std=...)  # for the pictures
    write_weight_maps(path, model, dataset, mean=..., std=...)        # GSP's weights over a few images
"""
from __future__ import annotations

import contextlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, Optional, Sequence, Tuple

import torch
from torch.utils.data import DataLoader, Dataset, Subset
from tqdm import tqdm

from ..errors import ConfigError
from ..metrics.knn import exact_knn
from ..metrics.retrieval import RetrievalMetrics, average_precision_at_r, relevant_counts
from ..utils import PathLike, eval_mode, evenly_spaced, world_size_and_rank, write_file_atomic

__all__ = [
    "SHEET_FILES",
    "RetrievalExamples",
    "chance_precision_at_1",
    "check_evaluation_split",
    "embed_dataset",
    "embed_splits",
    "evaluate_retrieval",
    "pick_queries",
    "retrieval_examples",
    "save_picture",
    "score_embeddings",
    "shard_indices",
    "write_sheets",
    "write_weight_maps",
]

# The pictures of a model's retrieval, as written into a report or a published model folder.
SHEET_FILES = {"retrieval": "retrieval.png", "weights": "gsp_weights.png"}
Embedded = Dict[str, Tuple[torch.Tensor, torch.Tensor]]  # split -> (embeddings (M, D), labels (M,))


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
    """Embeddings (M, D) float32 and labels (M,) of this rank's shard of ``dataset``
    (``dataset[i] -> (model input, label)``; labels may be None, then they are -1)."""
    world_size, rank = world_size_and_rank()
    device = device or next(model.parameters()).device
    shard = Subset(dataset, list(shard_indices(len(dataset), world_size, rank)))
    loader = DataLoader(shard, batch_size=batch_size, shuffle=False, num_workers=num_workers)
    embeddings, labels = [], []
    autocast = torch.autocast(device.type, dtype=amp_dtype) if amp_dtype else contextlib.nullcontext()
    with eval_mode(model):
        for images, targets in tqdm(loader, desc="embed", leave=False, disable=not progress or rank != 0):
            with autocast:
                out = model(images.to(device, non_blocking=True))
            embeddings.append(out.float())
            labels.append(torch.as_tensor(targets, device=device))
    width = embeddings[0].shape[1] if embeddings else 0
    if not embeddings:
        return torch.empty(0, width, device=device), torch.empty(0, dtype=torch.long, device=device)
    return torch.cat(embeddings), torch.cat(labels)


def _check_splits(splits: Dict[str, Dataset]) -> bool:
    """Whether ``splits`` is a query/gallery pair (else it is one same-set split)."""
    query_gallery = set(splits) == {"query", "gallery"}
    if not query_gallery and len(splits) != 1:
        raise ConfigError(f"evaluate one split, or query and gallery; got {sorted(splits)}")
    return query_gallery


def _relevant(splits: Dict[str, Any]) -> Tuple[torch.Tensor, int]:
    """R of each query (``metrics.retrieval.relevant_counts``) and the number of candidates each query is ranked
    against, from the splits' ``labels`` alone (nothing is decoded)."""
    same_set = not _check_splits(splits)
    if same_set:
        (split,) = splits.values()
        queries = gallery = split.labels
    else:
        queries, gallery = splits["query"].labels, splits["gallery"].labels
    return relevant_counts(queries, gallery, same_set), len(gallery) - int(same_set)


def chance_precision_at_1(splits: Dict[str, Any]) -> Optional[float]:
    """P@1 of a random ranking of ``{"test": ds}`` or ``{"query": q, "gallery": g}`` (datasets with
    ``labels``): the mean, over the queries the metrics count (those with an item of their class to
    find), of the share of same-class items among their candidates: ``(n_c - 1) / (N - 1)`` within one
    split, ``n_c / N`` of the gallery for a query / gallery pair. None when no query counts."""
    return _chance(*_relevant(splits))


def _chance(relevant: torch.Tensor, candidates: int) -> Optional[float]:
    counted = relevant[relevant > 0]
    return float(counted.double().mean()) / candidates if len(counted) else None


def check_evaluation_split(splits: Dict[str, Any], hint: str = "") -> float:
    """Refuse a split whose retrieval metrics would measure nothing; return its ``chance_precision_at_1``.

    The one check of ``timm-gsp eval`` and ``examples/train.py`` (both refuse such a split, exit status 1,
    before any model runs). ``hint`` is appended to the advice (a tool's own flags).

    Raises:
        ConfigError: no query has another item of its class (every metric is undefined), or every query
            that counts has only items of its class to rank (one class in the split, or a gallery of the
            query's class only): P@1, Recall@K and MAP@R would be 1 for any model. The message names
            the split (``<dataset>/<split>``) and the class.
    """
    relevant, candidates = _relevant(splits)
    counted = relevant > 0
    name = "+".join(f"{getattr(s, 'name', 'dataset')}/{getattr(s, 'split', key)}" for key, s in splits.items())
    if not counted.any():
        raise ConfigError(f"{name}: no class has two or more images to retrieve each other, so retrieval metrics are "
                          f"undefined; add images{hint}")
    if bool((relevant[counted] == candidates).all()):
        query_split = next(iter(splits.values())) if len(splits) == 1 else splits["query"]
        label = int(query_split.labels[counted.nonzero()[0, 0]])
        classes = getattr(query_split, "classes", None)
        which = classes[label] if classes is not None and 0 <= label < len(classes) else label
        raise ConfigError(f"{name}: every query's candidates are of its own class (the only class to find: {which}), "
                          "so P@1 and Recall@K would be 100 % and MAP@R 1 whatever the model: the split measures "
                          f"nothing; evaluate images of two or more classes{hint}")
    return _chance(relevant, candidates)


def embed_splits(model: torch.nn.Module, splits: Dict[str, Dataset], **embed_kwargs) -> Embedded:
    """``{split: (embeddings, labels)}`` of ``{"test": ds}`` or ``{"query": q, "gallery": g}``
    (this rank's shard of each under DDP); ``embed_kwargs`` as ``embed_dataset`` takes them."""
    _check_splits(splits)
    return {name: embed_dataset(model, dataset, **embed_kwargs) for name, dataset in splits.items()}


def score_embeddings(embedded: Embedded, k_values: Sequence[int] = (1, 2, 4, 8),
                     distance: str = "cosine") -> Dict[str, float]:
    """Retrieval metrics of ``embed_splits`` output; under DDP the metric gathers every rank's
    shard, so every rank returns the metrics of the whole set. NaN where no query has a
    same-class item (``RunResults`` stores those as null)."""
    query_gallery = _check_splits(embedded)
    device = next(iter(embedded.values()))[0].device
    metric = RetrievalMetrics(k_values=k_values, distance=distance,
                              protocol="query_gallery" if query_gallery else "same_set").to(device)
    for name, (embeddings, labels) in embedded.items():
        if query_gallery:
            metric.update(embeddings, labels, torch.full_like(labels, name == "query", dtype=torch.bool))
        else:
            metric.update(embeddings, labels)
    return metric.compute()


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
    return score_embeddings(embed_splits(model, splits, **embed_kwargs), k_values, distance)


# --- examples: which queries to show, and what they retrieve -------------------------------------

@dataclass
class RetrievalExamples:
    """Queries picked to show a model's retrieval (one process; cosine similarity).

    Attributes:
        query_split, gallery_split: split names (the same for a same-set split).
        queries: (Q,) indices into the query split: a seeded random sample, then the worst queries.
        neighbors: (Q, k) gallery indices, best first (the query itself excluded in a same-set split).
        scores: (Q, k) cosine similarities.
        average_precision: (Q,) AP@R of each query (NaN: no other item of its class).
        worst: (Q,) True for the queries picked as the worst by average precision.
    """

    query_split: str
    gallery_split: str
    queries: torch.Tensor
    neighbors: torch.Tensor
    scores: torch.Tensor
    average_precision: torch.Tensor
    worst: torch.Tensor


def retrieval_examples(embedded: Embedded, k: int = 5, num_sample: int = 4, num_worst: int = 4,
                       seed: int = 0) -> RetrievalExamples:
    """The queries to show: ``num_sample`` picked at random (seeded: the same every run) and the
    ``num_worst`` others with the lowest average precision, each with its top ``k``."""
    same_set = not _check_splits(embedded)
    query_split, gallery_split = (next(iter(embedded)),) * 2 if same_set else ("query", "gallery")
    (query, query_labels), (gallery, gallery_labels) = embedded[query_split], embedded[gallery_split]
    query, query_labels = query.cpu(), query_labels.cpu()
    gallery, gallery_labels = gallery.cpu(), gallery_labels.cpu()
    r = relevant_counts(query_labels, gallery_labels, same_set)
    depth = min(max(k, int(r.max()) if r.numel() else 0), gallery.shape[0] - int(same_set))
    if depth < 1:
        raise ConfigError(f"the {gallery_split} split has no item to retrieve")
    # Ranked exactly as the metrics rank them: cosine, ties by the lower gallery index.
    scores, neighbors = exact_knn(query.float(), depth, None if same_set else gallery)
    ap = average_precision_at_r(gallery_labels[neighbors] == query_labels[:, None], r).float()
    picked, worst = pick_queries(ap, num_sample, num_worst, seed)
    k = min(k, depth)
    return RetrievalExamples(query_split, gallery_split, picked, neighbors[picked, :k], scores[picked, :k], ap[picked],
                             worst)


def pick_queries(average_precision: torch.Tensor, num_sample: int, num_worst: int,
                 seed: int) -> Tuple[torch.Tensor, torch.Tensor]:
    """(P,) query indices: ``num_sample`` at random (seeded), then the ``num_worst`` others with the
    lowest of the (Q,) ``average_precision`` (NaN: never picked as worst; equal values: lower index
    first); and (P,) bools, True for the worst."""
    order = torch.randperm(average_precision.shape[0], generator=torch.Generator().manual_seed(seed))
    sample = order[:num_sample]
    rest = torch.ones(average_precision.shape[0], dtype=torch.bool)
    rest[sample] = False
    candidates = (rest & ~average_precision.isnan()).nonzero().flatten()
    worst = candidates[average_precision[candidates].argsort(stable=True)[:num_worst]]
    return torch.cat([sample, worst]), torch.arange(len(sample) + len(worst)) >= len(sample)


# --- pictures -----------------------------------------------------------------------------------

def _label(dataset: Dataset, label: int) -> str:
    classes = getattr(dataset, "classes", None)
    return str(classes[label]) if classes is not None and 0 <= label < len(classes) else str(label)


def write_sheets(
        folder: PathLike,
        model: torch.nn.Module,
        splits: Dict[str, Dataset],
        embedded: Embedded,
        *,
        mean: Sequence[float],
        std: Sequence[float],
        k: int = 5,
        num_sample: int = 4,
        num_worst: int = 4,
        seed: int = 0,
        thumb: int = 112,
) -> Dict[str, Path]:
    """Write ``SHEET_FILES`` into ``folder``: the retrieval sheet of ``retrieval_examples`` (each
    query with its top ``k``, scores, green / red frames for right / wrong class) and, for a GSP
    model, the weight maps of the same queries.

    Args:
        splits: the datasets ``embedded`` was computed from (``ds[i] -> (model input, label)``).
        mean, std: the normalisation of the model inputs (to draw them).

    Returns:
        ``{"retrieval": path, "weights": path}`` (no "weights" for a model without GSP).
    """
    from ..layers.gsp_pool import gsp_modules
    from .viz import Hit, denormalize, retrieval_sheet, to_pil, weight_map_sheet

    examples = retrieval_examples(embedded, k, num_sample, num_worst, seed)
    queries, galleries = splits[examples.query_split], splits[examples.gallery_split]

    def picture(dataset: Dataset, index: int):
        image, label = dataset[int(index)]
        return image, int(label)

    shown = [picture(queries, i) for i in examples.queries]
    hits = []
    for row, (_, query_label) in enumerate(shown):
        row_hits = []
        for index, score in zip(examples.neighbors[row].tolist(), examples.scores[row].tolist()):
            image, label = picture(galleries, index)
            row_hits.append(Hit(to_pil(denormalize(image[None].float(), mean, std)[0]), score,
                                _label(galleries, label), label == query_label))
        hits.append(row_hits)
    captions = [f"{_label(queries, label)}\nAP@R {ap:.2f}" + (" (worst)" if worst else "")
                for (_, label), ap, worst in zip(shown, examples.average_precision.tolist(), examples.worst.tolist())]
    images = torch.stack([image for image, _ in shown])
    folder = Path(folder)
    written = {"retrieval": folder / SHEET_FILES["retrieval"]}
    save_picture(retrieval_sheet([to_pil(x) for x in denormalize(images.float(), mean, std)], hits, query_labels=captions,
                                 thumb=thumb, title=f"top-{examples.neighbors.shape[1]} of {len(galleries)} "
                                                    f"({examples.gallery_split})"), written["retrieval"])
    if gsp_modules(model):
        device = next(model.parameters()).device
        written["weights"] = folder / SHEET_FILES["weights"]
        save_picture(weight_map_sheet(model, images.to(device), mean, std, captions=captions, thumb=thumb),
                     written["weights"])
    return written


def write_weight_maps(
        path: PathLike,
        model: torch.nn.Module,
        dataset: Dataset,
        *,
        mean: Sequence[float],
        std: Sequence[float],
        count: int = 8,
        thumb: int = 112,
) -> Path:
    """Write one row of ``viz.weight_map_sheet`` to ``path`` (``save_picture``): ``count`` evenly spaced
    images of ``dataset`` (``ds[i] -> (model input, label)``), each above the selection of the GSP
    model over it, captioned with its class. ``mean`` / ``std``: the inputs' normalisation. Returns ``path``."""
    from .viz import weight_map_sheet

    samples = [dataset[i] for i in evenly_spaced(len(dataset), count)]
    images = torch.stack([image for image, _ in samples]).to(next(model.parameters()).device)
    captions = [_label(dataset, int(label)) for _, label in samples]
    return save_picture(weight_map_sheet(model, images, mean, std, captions=captions, columns=count, thumb=thumb), path)


def save_picture(image: Any, path: PathLike) -> Path:
    """Write a PIL image to ``path`` in the format its extension names (.png, .jpg, ...), atomically
    (``utils.write_file_atomic``: a failed write, e.g. a full disk, leaves no partial picture and is an
    ``OutputWriteError`` naming ``path`` and the cause); the folder is created. Returns ``path``."""
    from PIL import Image

    path = Path(path)
    file_format = Image.registered_extensions().get(path.suffix.lower())
    if file_format is None:
        raise ConfigError(f"{path}: not a picture file name (extension {path.suffix or 'none'!r}): name it .png or .jpg")
    return write_file_atomic(path, lambda tmp: image.save(tmp, format=file_format))

