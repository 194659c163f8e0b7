"""Exact nearest neighbours, ranked by (score, index): the running top-k that the retrieval metrics
and the embedding search share.

Scores are "higher is better" (cosine similarity, or a shifted negative squared distance). Among equal
scores the item with the lower index ranks first, so results never depend on how a gallery was split
into chunks or how ``torch.topk`` breaks ties.
"""
from __future__ import annotations

from typing import Optional, Tuple

import torch
from torch import Tensor

__all__ = ["merge_topk", "topk", "sort_by_score_then_index"]


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
