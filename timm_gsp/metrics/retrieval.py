"""Retrieval metrics for deep metric learning, as a DDP-ready ``torchmetrics.Metric``.

Definitions follow MLRC (Musgrave et al., "A Metric Learning Reality Check", ECCV 2020) and
match ``pytorch_metric_learning.utils.accuracy_calculator.AccuracyCalculator`` (default
``avg_of_avgs=False``):

* ``R`` of a query = number of *other* gallery items with the query's label (the query itself
  is excluded in the same-set protocol, like ``ref_includes_query=True``).
* Queries with ``R == 0`` ("lone" queries, e.g. singleton classes) are excluded from every
  metric, exactly as AccuracyCalculator does. Hence ``recall_at_1 == precision_at_1``.
* ``precision_at_1``: fraction of queries whose nearest neighbour has the same label.
* ``recall_at_{k}``: fraction of queries with at least one same-label item in the top k
  (the standard DML "Recall@K", not the IR recall).
* ``r_precision``: mean over queries of (# same-label items in the top R) / R.
* ``map_at_r``: mean over queries of (1/R) * sum_{i<=R} P(i) * rel(i).
* Every metric is a plain mean over queries (no per-class averaging).

Ties: neighbours are ranked by (distance, position in the gallery), i.e. among equally distant
items the one that was added earlier (lower index in the concatenated gallery; under DDP rank 0's
items come first) ranks first. AccuracyCalculator's ranking among exact ties is whatever its
k-NN backend returns (unspecified for ``torch.topk``/faiss); its metrics equal ours whenever its
k-NN breaks ties the same way. "Equal" means equal computed scores: the matmul's rounding can
depend on its blocking (``chunk_size``), so two bit-identical embeddings are not guaranteed to
tie exactly unless the arithmetic is exact.
"""

from typing import Dict, List, Literal, Optional, Sequence

import torch
from torch import Tensor
from torchmetrics import Metric
from torchmetrics.utilities import rank_zero_warn
from torchmetrics.utilities.data import dim_zero_cat

from .knn import DISTANCES, exact_knn

__all__ = ["RetrievalMetrics", "average_precision_at_r", "relevant_counts", "retrieval_metrics"]

_PROTOCOLS = ("same_set", "query_gallery")


class RetrievalMetrics(Metric):
    """Precision@1, Recall@K, R-Precision and MAP@R with exact, chunked k-NN.

    Args:
        k_values: the K of each ``recall_at_{K}`` key; positive ints (sorted, duplicates dropped).
        distance: ``"cosine"`` (embeddings are L2-normalised, ranked by dot product) or
            ``"euclidean"`` (ranked by squared L2 distance).
        chunk_size: queries per k-NN chunk: the score matrix is computed ``chunk_size`` rows
            (x all gallery items) at a time into one reused float32 ``(chunk_size, num_gallery)``
            buffer (248 MB for 1024 x 60,502; two for same-set Euclidean), besides a couple of
            copies of the embeddings. Memory is therefore bounded independently of the number of
            queries; the (num_queries, k) neighbour table is the only other O(N) allocation.
        protocol: ``"same_set"`` (queries = gallery, each query's own sample excluded:
            CUB-200, Cars-196, SOP) or ``"query_gallery"`` (disjoint query and gallery sets,
            marked per sample by ``is_query`` in :meth:`update`: In-Shop).
        **kwargs: forwarded to :class:`torchmetrics.Metric` (``compute_on_cpu``,
            ``sync_on_compute``, ``process_group``, ...).

    Usage::

        metric = RetrievalMetrics()                        # same-set (SOP, CUB, Cars)
        metric.update(embeddings, labels)                  # (B, D) float, (B,) int
        metric.compute()  # {"precision_at_1": ..., "recall_at_1": ..., "recall_at_2": ...,
                          #  "recall_at_4": ..., "recall_at_8": ..., "r_precision": ...,
                          #  "map_at_r": ...}

        metric = RetrievalMetrics(protocol="query_gallery")  # In-Shop
        metric.update(embeddings, labels, is_query)          # is_query: (B,) bool

    Values are Python floats; they are NaN (with a warning) when no query has a same-label
    gallery item. Under DDP every rank's samples are gathered before ``compute()`` (each rank
    must have called ``update()`` at least once); note that a ``DistributedSampler`` pads with
    duplicated samples, which then count twice.
    Computation runs in float32, or float64 if float64 embeddings are given.
    """

    is_differentiable = False
    higher_is_better = True
    full_state_update = False

    def __init__(
        self,
        k_values: Sequence[int] = (1, 2, 4, 8),
        distance: Literal["cosine", "euclidean"] = "cosine",
        chunk_size: int = 1024,
        protocol: Literal["same_set", "query_gallery"] = "same_set",
        **kwargs,
    ) -> None:
        super().__init__(**kwargs)
        k_values = tuple(k_values)
        if not k_values or not all(isinstance(k, int) and not isinstance(k, bool) and k > 0 for k in k_values):
            raise ValueError(f"k_values must be a non-empty sequence of positive ints, got {k_values!r}")
        if distance not in DISTANCES:
            raise ValueError(f"Unknown distance {distance!r}; expected one of {DISTANCES}")
        if not isinstance(chunk_size, int) or isinstance(chunk_size, bool) or chunk_size <= 0:
            raise ValueError(f"chunk_size must be a positive int, got {chunk_size!r}")
        if protocol not in _PROTOCOLS:
            raise ValueError(f"Unknown protocol {protocol!r}; expected one of {_PROTOCOLS}")
        self.k_values = tuple(sorted(set(k_values)))
        self.distance = distance
        self.chunk_size = chunk_size
        self.protocol = protocol

        # List states + "cat": each rank keeps its own samples; torchmetrics all-gathers and
        # concatenates them (in rank order) before compute().
        self.add_state("embeddings", default=[], dist_reduce_fx="cat")
        self.add_state("labels", default=[], dist_reduce_fx="cat")
        if protocol == "query_gallery":
            self.add_state("is_query", default=[], dist_reduce_fx="cat")

    def update(self, embeddings: Tensor, labels: Tensor, is_query: Optional[Tensor] = None) -> None:
        """Add a batch.

        Args:
            embeddings: (B, D) floating point.
            labels: (B,) integer class ids.
            is_query: (B,) bool, only for ``protocol="query_gallery"``: True for query samples,
                False for gallery samples. Must be omitted for ``protocol="same_set"``.
        """
        if not isinstance(embeddings, Tensor) or embeddings.ndim != 2:
            shape = tuple(getattr(embeddings, "shape", ()))
            raise ValueError(f"embeddings must be a 2-D (B, D) tensor, got shape {shape}")
        if not embeddings.is_floating_point():
            raise ValueError(f"embeddings must be floating point, got {embeddings.dtype}")
        if not isinstance(labels, Tensor) or labels.ndim != 1 or labels.shape[0] != embeddings.shape[0]:
            raise ValueError(
                f"labels must be a 1-D (B,) tensor matching embeddings (B={embeddings.shape[0]}), "
                f"got shape {tuple(getattr(labels, 'shape', ()))}"
            )
        if labels.is_floating_point() or labels.is_complex() or labels.dtype == torch.bool:
            raise ValueError(f"labels must be an integer tensor, got {labels.dtype}")
        if self.protocol == "query_gallery":
            if is_query is None:
                raise ValueError('protocol="query_gallery" needs is_query: a (B,) bool tensor')
            if not isinstance(is_query, Tensor) or is_query.dtype != torch.bool or is_query.shape != labels.shape:
                raise ValueError(
                    f"is_query must be a (B,) bool tensor with B={labels.shape[0]}, got "
                    f"{getattr(is_query, 'dtype', type(is_query))} of shape {tuple(getattr(is_query, 'shape', ()))}"
                )
            self.is_query.append(is_query.detach())
        elif is_query is not None:
            raise ValueError('is_query is only valid with protocol="query_gallery"')
        # Uniform dtypes keep the cross-rank gather and the concatenation well defined.
        dtype = torch.float64 if embeddings.dtype == torch.float64 else torch.float32
        self.embeddings.append(embeddings.detach().to(dtype))
        self.labels.append(labels.detach().long())

    def compute(self) -> Dict[str, float]:
        """Return ``{"precision_at_1", "recall_at_{k}" for each k, "r_precision", "map_at_r"}``."""
        if isinstance(self.embeddings, list) and len(self.embeddings) == 0:
            raise ValueError("RetrievalMetrics.compute() called before any update()")
        is_query = dim_zero_cat(self.is_query) if self.protocol == "query_gallery" else None
        return retrieval_metrics(dim_zero_cat(self.embeddings), dim_zero_cat(self.labels), is_query=is_query,
                                 k_values=self.k_values, distance=self.distance, chunk_size=self.chunk_size)



def _keys(k_values: Sequence[int]) -> List[str]:
    return ["precision_at_1", *(f"recall_at_{k}" for k in k_values), "r_precision", "map_at_r"]


def retrieval_metrics(
    embeddings: Tensor,
    labels: Tensor,
    is_query: Optional[Tensor] = None,
    k_values: Sequence[int] = (1, 2, 4, 8),
    distance: Literal["cosine", "euclidean"] = "cosine",
    chunk_size: int = 1024,
) -> Dict[str, float]:
    """The functional twin of :class:`RetrievalMetrics`: the same metrics of one set of embeddings.

    Args:
        embeddings: (N, D) floating point.
        labels: (N,) integer class ids.
        is_query: None for the same-set protocol (every sample queries all the others), or (N,) bool
            marking queries (True) and gallery items (False) for the query/gallery protocol.
        k_values, distance, chunk_size: as for :class:`RetrievalMetrics`.

    Returns:
        ``{"precision_at_1", "recall_at_{k}" for each k, "r_precision", "map_at_r"}`` as floats; NaN
        (with a warning) when no query has a same-label gallery item.
    """
    k_values = tuple(sorted(set(k_values)))
    if not k_values or not all(isinstance(k, int) and not isinstance(k, bool) and k > 0 for k in k_values):
        raise ValueError(f"k_values must be a non-empty sequence of positive ints, got {k_values!r}")
    if distance not in DISTANCES:
        raise ValueError(f"Unknown distance {distance!r}; expected one of {DISTANCES}")
    if embeddings.ndim != 2 or not embeddings.is_floating_point():
        raise ValueError(f"embeddings must be a 2-D floating point (N, D) tensor, got {embeddings.dtype} {tuple(embeddings.shape)}")
    if labels.shape != embeddings.shape[:1]:
        raise ValueError(f"labels must be (N,) with N={embeddings.shape[0]}, got shape {tuple(labels.shape)}")
    emb = embeddings.detach().to(torch.float64 if embeddings.dtype == torch.float64 else torch.float32)
    labels = labels.detach().long()
    if emb.shape[0] == 0:
        raise ValueError("retrieval metrics of an empty set of embeddings")
    if not torch.isfinite(emb).all():
        raise ValueError("embeddings contain NaN or Inf")
    same_set = is_query is None
    if same_set:
        query, query_labels, gallery, gallery_labels = emb, labels, emb, labels
    else:
        if is_query.shape != labels.shape or is_query.dtype != torch.bool:
            raise ValueError(f"is_query must be a (N,) bool tensor with N={labels.shape[0]}")
        query, query_labels = emb[is_query], labels[is_query]
        gallery, gallery_labels = emb[~is_query], labels[~is_query]
        if query.shape[0] == 0 or gallery.shape[0] == 0:
            raise ValueError(
                f"query_gallery protocol needs queries and gallery items, got {query.shape[0]} "
                f"queries and {gallery.shape[0]} gallery items"
            )

    r = relevant_counts(query_labels, gallery_labels, same_set)
    valid = r > 0  # lone queries are dropped, as in AccuracyCalculator
    if not valid.any():
        rank_zero_warn("RetrievalMetrics: no query has a same-label gallery item; returning NaN.")
        return {key: float("nan") for key in _keys(k_values)}

    num_candidates = gallery.shape[0] - int(same_set)
    # Enough neighbours for both Recall@max(K) and the largest R (MAP@R, R-precision).
    k = min(max(max(k_values), int(r.max())), num_candidates)
    if same_set:  # every item is a candidate for every other, so all rows are computed
        knn = exact_knn(emb, k, distance=distance, query_block=chunk_size)[1][valid]
    else:
        knn = exact_knn(query[valid], k, gallery, distance=distance, query_block=chunk_size)[1]
    return _metrics_from_knn(gallery_labels[knn], query_labels[valid], r[valid], k_values)


def _metrics_from_knn(
    knn_labels: Tensor, query_labels: Tensor, r: Tensor, k_values: Sequence[int]
) -> Dict[str, float]:
    """knn_labels: (Q, k) labels of ranked neighbours; query_labels, r: (Q,), with 1 <= r <= k."""
    hits = knn_labels == query_labels[:, None]  # (Q, k)
    ranks = torch.arange(1, hits.shape[1] + 1, device=hits.device)
    hits_at_r = hits & (ranks <= r[:, None])  # only the first R positions count for MAP@R / R-prec
    out = {"precision_at_1": hits[:, 0].double().mean().item()}
    for k in k_values:
        out[f"recall_at_{k}"] = hits[:, :k].any(1).double().mean().item()
    out["r_precision"] = (hits_at_r.sum(1).double() / r.double()).mean().item()
    out["map_at_r"] = average_precision_at_r(hits, r).mean().item()
    return out


def relevant_counts(query_labels: Tensor, gallery_labels: Tensor, same_set: bool) -> Tensor:
    """R of each query, (Q,) int64: the gallery items with its label, less the query itself in the
    same-set protocol. Counted from the gallery's label counts (O(Q + G) memory, no (Q, G) mask)."""
    uniq, counts = torch.unique(gallery_labels, return_counts=True)
    query_labels = query_labels.to(uniq.dtype).contiguous()  # searchsorted warns on strided input (labels[::2])
    if uniq.numel() == 0:  # an empty gallery
        return torch.zeros(query_labels.shape, dtype=torch.long, device=query_labels.device) - int(same_set)
    pos = torch.searchsorted(uniq, query_labels).clamp_(max=len(uniq) - 1)
    return torch.where(uniq[pos] == query_labels, counts[pos], 0) - int(same_set)


def average_precision_at_r(hits: Tensor, r: Tensor) -> Tensor:
    """AP@R of each query (float64; the mean over queries is MAP@R): ``hits`` (Q, K) bools of the
    ranked results (K >= max r), ``r`` (Q,) the number of items of the query's class; NaN where r == 0."""
    ranks = torch.arange(1, hits.shape[1] + 1, device=hits.device)
    hits_at_r = hits & (ranks <= r[:, None])
    precision_at_i = hits_at_r.cumsum(1).double() / ranks
    ap = (precision_at_i * hits_at_r).sum(1) / r.double()
    return torch.where(r > 0, ap, torch.nan)
