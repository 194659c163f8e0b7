"""Exact nearest neighbours, blockwise, ranked by (score, index): the one k-NN that the retrieval
metrics, the evaluation pictures and the embedding search share.

    scores, indices = exact_knn(queries, k, gallery)   # (Q, D) x (M, D) -> (Q, k), (Q, k)
    scores, indices = exact_knn(embeddings, k)         # same set: each item's k nearest *other* items

Scores are "higher is better": cosine similarity, or for Euclidean distance q.g - |g|^2 / 2 (which
orders candidates as -|q - g|^2 does). Among equal scores the item with the lower index ranks first,
so results never depend on how the work was split into blocks or how ``torch.topk`` breaks ties.

Memory is bounded whatever the number of queries: scores are computed one (query block, gallery
block) tile at a time into one reused buffer and merged into a running (Q, k) top-k; no
(Q, M) matrix is ever formed.
"""
from __future__ import annotations

from typing import Any, Optional, Tuple

import torch
from torch import Tensor

__all__ = ["BLOCK_BYTES", "DISTANCES", "exact_knn", "merge_topk", "topk", "sort_by_score_then_index"]

DISTANCES = ("cosine", "euclidean")
BLOCK_BYTES = 256 * 2**20  # default size of one tile of scores (about 1,100 x 60,502 float32)


def exact_knn(
    queries: Tensor,
    k: int,
    gallery: Optional[Any] = None,
    *,
    distance: str = "cosine",
    query_block: Optional[int] = None,
    gallery_block: Optional[int] = None,
    block_bytes: int = BLOCK_BYTES,
) -> Tuple[Tensor, Tensor]:
    """The k best gallery items of each query under (score desc, index asc).

    Args:
        queries: (Q, D) floating point. Scores are computed in float64 if it is float64, else float32.
        k: neighbours per query; more than there are candidates gives all of them.
        gallery: (M, D) rows: a tensor, a memory map or anything with ``.shape`` and row slices
            ``gallery[a:b]`` (each row is read once, a block at a time, and moved to the queries'
            device). None: the same-set protocol, the queries are the gallery and a query is never
            its own neighbour.
        distance: ``"cosine"`` (rows L2-normalised, as each block is read) or ``"euclidean"``.
        query_block: queries scored at once; None: as many as keep one tile of scores
            (query_block, gallery_block) within ``block_bytes``.
        gallery_block: gallery rows read and scored at once; None: the whole gallery. In the
            same-set protocol the rows are in memory already and every block is a strip
            ``queries[a:b]`` x ``queries[a:]`` (the upper triangle; see ``_knn_same_set``).

    Returns:
        scores (Q, k) and gallery indices (Q, k) int64, best first (k clipped to the candidates).
    """
    if distance not in DISTANCES:
        raise ValueError(f"Unknown distance {distance!r}; expected one of {DISTANCES}")
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    queries = queries.to(torch.float64 if queries.dtype == torch.float64 else torch.float32)
    same_set = gallery is None
    num_items = queries.shape[0] if same_set else gallery.shape[0]
    k = min(k, num_items - int(same_set))
    columns = num_items if same_set or gallery_block is None else min(gallery_block, num_items)
    if query_block is None:
        query_block = max(1, block_bytes // (max(columns, 1) * queries.element_size()))
    if k < 1 or queries.shape[0] == 0:  # nothing to retrieve (a lone item, an empty gallery) or no query
        k = max(k, 0)
        return queries.new_empty(queries.shape[0], k), queries.new_empty(queries.shape[0], k, dtype=torch.long)
    if same_set:
        return _knn_same_set(queries, k, distance, query_block)
    return _knn_gallery(queries, gallery, k, distance, query_block, columns)


def _prepare(x: Tensor, distance: str) -> Tuple[Tensor, Optional[Tensor]]:
    """Return (x', bias) such that the ranking score of candidate g for query q is q'.g' - bias[g]."""
    if distance == "cosine":
        return torch.nn.functional.normalize(x, dim=1), None
    # ||q - g||^2 = ||q||^2 - 2 (q.g - ||g||^2 / 2). ||q||^2 is constant per query, so ranking by
    # q.g - ||g||^2/2 is equivalent; leaving it out (and not clamping at 0) avoids manufacturing
    # ties. Halving is exact in floating point, so exact ties stay exact.
    return x, x.square().sum(1) / 2


def _knn_gallery(queries: Tensor, gallery: Any, k: int, distance: str, query_block: int,
                 gallery_block: int) -> Tuple[Tensor, Tensor]:
    """(Q, k) scores and indices of each query's k best of ``gallery`` (M, D); see ``exact_knn``."""
    q, _ = _prepare(queries, distance)
    num_queries, num_items = q.shape[0], gallery.shape[0]
    best_scores = q.new_full((num_queries, k), float("-inf"))
    best_index = torch.full((num_queries, k), num_items, dtype=torch.long, device=q.device)  # ranks after real items
    buf = _ScoreBuffer(min(query_block, num_queries) * gallery_block, q)
    # Gallery blocks outside, query blocks inside: each gallery row is read and prepared once.
    for start in range(0, num_items, gallery_block):
        rows = torch.as_tensor(gallery[start:start + gallery_block]).to(q.device, q.dtype)  # (c, D)
        rows, bias = _prepare(rows, distance)
        for a in range(0, num_queries, query_block):
            block = q[a:a + query_block]
            scores = torch.mm(block, rows.T, out=buf(block.shape[0], rows.shape[0]))  # (b, c)
            if bias is not None:
                scores -= bias
            merge_topk(best_scores, best_index, slice(a, a + query_block), scores, start, k)
    return sort_by_score_then_index(best_scores, best_index)


def _knn_same_set(emb: Tensor, k: int, distance: str, query_block: int) -> Tuple[Tensor, Tensor]:
    """(N, k) scores and indices of each item's k best *other* items, ranked by (score, index).

    The score matrix is symmetric up to a per-candidate bias, so only its upper triangle is
    computed: strip ``emb[a:b] @ emb[a:].T`` serves queries a:b against candidates a: (row-wise)
    and queries b: against candidates a:b (column-wise). That halves the matmul work; a running
    top-k per query merges the contributions.
    """
    x, bias = _prepare(emb, distance)
    n = x.shape[0]
    best_scores = x.new_full((n, k), float("-inf"))
    best_index = torch.full((n, k), n, dtype=torch.long, device=x.device)  # n: ranks after real items
    buf = _ScoreBuffer(min(query_block, n) * n, x)
    col_buf = _ScoreBuffer(min(query_block, n) * n, x) if bias is not None else None
    for a in range(0, n, query_block):
        b = min(a + query_block, n)
        dots = torch.mm(x[a:b], x[a:].T, out=buf(b - a, n - a))
        if b < n:  # column-wise: candidates a:b for queries b:, the same dot products transposed
            cols = dots[:, b - a :]
            if bias is not None:
                cols = torch.sub(cols, bias[a:b, None], out=col_buf(b - a, n - b))
            merge_topk(best_scores, best_index, slice(b, n), cols.T, a, k)
        # Row-wise part: queries a:b against candidates a:.
        rows = dots if bias is None else dots.sub_(bias[a:])
        rows[:, : b - a].fill_diagonal_(float("-inf"))  # a query is not its own neighbour
        merge_topk(best_scores, best_index, slice(a, b), rows, a, k)
    return sort_by_score_then_index(best_scores, best_index)


class _ScoreBuffer:
    """One preallocated flat buffer handing out (rows, cols) views.

    A fresh score matrix per block (248 MB at SOP size) is a fresh mmap for the allocator, so every
    block would pay page faults for it again; reusing one buffer avoids that.
    """

    def __init__(self, numel: int, like: Tensor) -> None:
        self.data = like.new_empty(numel)

    def __call__(self, rows: int, cols: int) -> Tensor:
        return self.data[: rows * cols].view(rows, cols)


def merge_topk(best_scores: Tensor, best_index: Tensor, rows: slice, scores: Tensor, offset: int, k: int) -> None:
    """Merge the k best of ``scores`` (candidates offset, offset+1, ...) into the running k best of ``rows``."""
    s, i = topk(scores, k)
    s, i = torch.cat([best_scores[rows], s], 1), torch.cat([best_index[rows], i + offset], 1)
    s, pos = topk(s, k, i)
    best_scores[rows], best_index[rows] = s, i.gather(1, pos)


def topk(scores: Tensor, k: int, index: Optional[Tensor] = None) -> Tuple[Tensor, Tensor]:
    """The k best entries of each row of ``scores`` under (score desc, index asc).

    Args:
        scores: (R, C), higher is better.
        k: entries to keep (at most C are returned).
        index: (R, C) item index of each entry; None means the column number.

    Returns:
        (R, k) scores, best first, and their (R, k) column positions; the order *among equal
        scores* is unspecified (callers sort with sort_by_score_then_index when it matters).

    torch.topk picks arbitrarily among equal values, so only the *set* needs care: if the
    (k+1)-th best value equals the k-th, the boundary is tied and that (rare) row is resolved by
    a full (score, index) sort.
    """
    k = min(k, scores.shape[1])
    s, pos = scores.topk(min(k + 1, scores.shape[1]), dim=1)
    if s.shape[1] == k:
        return s, pos
    tied = torch.nonzero(s[:, k] == s[:, k - 1]).squeeze(1)
    s, pos = s[:, :k], pos[:, :k]
    if len(tied):
        s, pos = s.clone(), pos.clone()
        cols = torch.arange(scores.shape[1], device=scores.device).expand(len(tied), -1)
        if index is None:
            ts, tpos = sort_by_score_then_index(scores[tied], cols)
        else:  # sort the column positions along with their item indices
            ts, order = sort_by_score_then_index(scores[tied], index[tied], return_order=True)
            tpos = cols.gather(1, order)
        s[tied], pos[tied] = ts[:, :k], tpos[:, :k]
    return s, pos


def sort_by_score_then_index(s: Tensor, i: Tensor, return_order: bool = False) -> Tuple[Tensor, Tensor]:
    """Sort each row by score (descending), equal scores by index i (ascending): two stable passes."""
    i, order = i.sort(dim=1)
    s, second = s.gather(1, order).sort(dim=1, descending=True, stable=True)
    order = order.gather(1, second)
    return s, (order if return_order else i.gather(1, second))
