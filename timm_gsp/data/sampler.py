"""Class-balanced batches for metric learning: ``m`` images of each of ``batch_size / m`` classes.

pytorch-metric-learning's ``MPerClassSampler`` yields a flat index stream, knows nothing of DDP and
cannot resume mid-epoch, hence this small batch sampler. Pass it as ``DataLoader(dataset,
batch_sampler=sampler)``; it YIELDS BATCHES (``list[int]`` of dataset indices, length ``batch_size``).
"""
from __future__ import annotations

from typing import Any, Dict, Iterator, List, Optional, Sequence, Union

import numpy as np
import torch
from torch.utils.data import Sampler

from ..errors import ConfigError
from ..utils import world_size_and_rank

__all__ = ["MPerClassBatchSampler"]


def _dist_defaults(num_replicas: Optional[int], rank: Optional[int]) -> tuple:
    world_size, world_rank = world_size_and_rank()
    num_replicas = world_size if num_replicas is None else num_replicas
    rank = world_rank if rank is None else rank
    if not 0 <= rank < num_replicas:
        raise ConfigError(f"rank {rank} must be in [0, {num_replicas})")
    return num_replicas, rank


class MPerClassBatchSampler(Sampler[List[int]]):
    """Yields batches with exactly ``m`` samples of each of ``batch_size // m`` distinct classes.

    An epoch is a global sequence of ``num_batches`` batches, a pure function of ``(seed, epoch)``
    and identical on every rank; rank ``r`` of ``R`` takes batches ``r, r + R, r + 2R, ...``, so
    ranks see disjoint batches and all get ``num_batches // R`` of them (the remainder is dropped so
    that collective ops stay in step).

    How a batch is filled: classes come from a reshuffled cycle over all classes (every class is
    used about equally often, and never twice in one batch); each class hands out its images from
    its own reshuffled cycle, ``m`` at a time. A class with fewer than ``m`` images repeats some.

    Args:
        labels: per-sample class labels, shape ``(N,)`` (list, array, tensor), or a dataset with a
            ``labels`` attribute.
        m: samples per class in a batch.
        batch_size: samples per batch on each rank; a multiple of ``m``.
        num_batches: global batches per epoch (over all ranks); default ``N // batch_size``, i.e.
            one pass over the data per epoch whatever the world size.
        num_replicas, rank: DDP world size and rank (default: from ``torch.distributed`` if
            initialised, else 1 and 0).
        seed: base seed; the same on every rank.

    Resuming: ``state_dict()`` records ``epoch`` and ``position`` (batches this rank has consumed
    in the epoch); after ``load_state_dict`` the next iteration continues with exactly the batches
    that would have followed. A ``DataLoader`` with workers pulls batches ahead of the training loop,
    so pass the true count: ``sampler.state_dict(position=steps_done_this_epoch)``.
    """

    def __init__(self, labels: Union[Sequence[int], np.ndarray, torch.Tensor, Any], m: int, batch_size: int, *,
                 num_batches: Optional[int] = None, num_replicas: Optional[int] = None,
                 rank: Optional[int] = None, seed: int = 0) -> None:
        if hasattr(labels, "labels"):
            labels = labels.labels
        labels = np.asarray(labels.cpu() if isinstance(labels, torch.Tensor) else labels).reshape(-1)
        if m < 1 or batch_size < m or batch_size % m:
            raise ConfigError(f"batch_size ({batch_size}) must be a positive multiple of m ({m})")
        self.m, self.batch_size = int(m), int(batch_size)
        self.classes_per_batch = batch_size // m
        classes, inverse = np.unique(labels, return_inverse=True)
        if len(classes) < self.classes_per_batch:
            raise ConfigError(f"batch_size / m = {self.classes_per_batch} classes per batch, but the labels "
                             f"hold only {len(classes)} classes")
        order = np.argsort(inverse, kind="stable")
        bounds = np.cumsum(np.bincount(inverse, minlength=len(classes)))[:-1]
        self._by_class: List[np.ndarray] = np.split(order, bounds)  # sample indices of each class
        self.num_samples = len(labels)
        self.num_replicas, self.rank = _dist_defaults(num_replicas, rank)
        total = num_batches if num_batches is not None else self.num_samples // self.batch_size
        if total < self.num_replicas:
            raise ConfigError(f"only {total} batches per epoch for {self.num_replicas} ranks; lower batch_size "
                             "or set num_batches")
        self.num_batches = int(total)
        self.seed = int(seed)
        self.epoch = 0
        self._resume_at = 0  # batch position where the next __iter__ starts (set by load_state_dict)
        self._consumed = 0   # batches handed out in the current epoch, this rank

    def __len__(self) -> int:
        """Batches per epoch on this rank (the full epoch, also right after resuming)."""
        return self.num_batches // self.num_replicas

    def set_epoch(self, epoch: int) -> None:
        """Select the epoch to iterate. A pending resume position is kept only for the same epoch,
        so the usual ``for epoch in range(start, E): sampler.set_epoch(epoch)`` resumes correctly."""
        if epoch != self.epoch:
            self._resume_at = 0
            self._consumed = 0
        self.epoch = int(epoch)

    def _epoch_batches(self) -> np.ndarray:
        """All global batches of ``self.epoch``: ``int64 (num_batches, batch_size)``."""
        rng = np.random.default_rng([self.seed, self.epoch])
        n_cls, k, m = len(self._by_class), self.classes_per_batch, self.m
        pools = [rng.permutation(ix) for ix in self._by_class]
        cursors = np.zeros(n_cls, np.int64)
        class_cycle, pos = rng.permutation(n_cls), 0
        out = np.empty((self.num_batches, self.batch_size), np.int64)
        for b in range(self.num_batches):
            if pos + k <= n_cls:
                chosen = class_cycle[pos:pos + k]
                pos += k
            else:  # finish the cycle, start a new one without repeating a class in this batch
                head = class_cycle[pos:]
                nxt = rng.permutation(n_cls)
                nxt = np.concatenate([nxt[~np.isin(nxt, head)], nxt[np.isin(nxt, head)]])
                chosen = np.concatenate([head, nxt[:k - len(head)]])
                class_cycle, pos = nxt, k - len(head)
            for j, c in enumerate(chosen):
                pool = pools[c]
                take = []
                while len(take) < m:
                    if cursors[c] >= len(pool):  # class exhausted: reshuffle and continue its cycle
                        pool = pools[c] = rng.permutation(self._by_class[c])
                        cursors[c] = 0
                    step = min(m - len(take), len(pool) - cursors[c])
                    take.extend(pool[cursors[c]:cursors[c] + step].tolist())
                    cursors[c] += step
                out[b, j * m:(j + 1) * m] = take
        return out

    def __iter__(self) -> Iterator[List[int]]:
        usable = len(self) * self.num_replicas
        mine = self._epoch_batches()[self.rank:usable:self.num_replicas]
        start, self._resume_at = self._resume_at, 0
        self._consumed = start
        for batch in mine[start:]:
            self._consumed += 1
            yield batch.tolist()

    def state_dict(self, position: Optional[int] = None) -> Dict[str, int]:
        """``{"epoch", "position", ...}``; ``position`` defaults to the batches yielded so far in
        this epoch (ahead of training when a DataLoader prefetches -- pass the step count)."""
        return {
            "epoch": self.epoch,
            "position": self._consumed if position is None else int(position),
            "seed": self.seed,
            "num_replicas": self.num_replicas,
            "batch_size": self.batch_size,
            "m": self.m,
            "num_batches": self.num_batches,
            "num_samples": self.num_samples,
        }

    def load_state_dict(self, state: Dict[str, int]) -> None:
        """Restore epoch and position; the batch layout settings must match (a different world
        size or batch size would give different batches, so it is refused rather than approximated)."""
        for key in ("seed", "num_replicas", "batch_size", "m", "num_batches", "num_samples"):
            if key in state and int(state[key]) != getattr(self, key):
                raise ConfigError(f"MPerClassBatchSampler.load_state_dict: {key}={state[key]} in the checkpoint but "
                                 f"{getattr(self, key)} now; cannot resume the same batch sequence")
        position = int(state["position"])
        if not 0 <= position <= len(self):
            raise ConfigError(f"position {position} outside 0..{len(self)}")
        self.epoch = int(state["epoch"])
        self._resume_at = position
        self._consumed = position
