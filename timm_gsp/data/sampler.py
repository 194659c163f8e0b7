"""Training batches for metric learning, DDP-sharded and resumable mid-epoch.

* ``MPerClassBatchSampler``: class-balanced, ``m`` images of each of ``batch_size / m`` classes.
* ``RandomBatchSampler``: plain random batches (no class balancing), the baseline composition.

pytorch-metric-learning's ``MPerClassSampler`` yields a flat index stream, knows nothing of DDP and
cannot resume mid-epoch, and torch's ``DistributedSampler`` cannot resume mid-epoch either, hence
these small batch samplers. Pass one as ``DataLoader(dataset, batch_sampler=sampler)``; it YIELDS
BATCHES (``list[int]`` of dataset indices, length ``batch_size``). Both share one interface and one
epoch / rank / resume logic (``_ShardedBatchSampler``); they differ only in how an epoch's global
batches are drawn.
"""
from __future__ import annotations

from typing import Any, Dict, Iterator, List, Optional, Sequence, Union

import numpy as np
import torch
from torch.utils.data import Sampler

from ..errors import ConfigError
from ..utils import world_size_and_rank

__all__ = ["MPerClassBatchSampler", "RandomBatchSampler"]


def _dist_defaults(num_replicas: Optional[int], rank: Optional[int]) -> tuple:
    world_size, world_rank = world_size_and_rank()
    num_replicas = world_size if num_replicas is None else num_replicas
    rank = world_rank if rank is None else rank
    if not 0 <= rank < num_replicas:
        raise ConfigError(f"rank {rank} must be in [0, {num_replicas})")
    return num_replicas, rank


def _labels_array(labels: Union[Sequence[int], np.ndarray, torch.Tensor, Any]) -> np.ndarray:
    """Per-sample labels ``(N,)`` as a numpy array, from a sequence, array, tensor or a dataset's ``labels``."""
    if hasattr(labels, "labels"):
        labels = labels.labels
    return np.asarray(labels.cpu() if isinstance(labels, torch.Tensor) else labels).reshape(-1)


class _ShardedBatchSampler(Sampler[List[int]]):
    """Epochs, DDP shards and mid-epoch resume; a subclass says how one epoch's batches are drawn.

    An epoch is a global sequence of ``num_batches`` batches, a pure function of ``(seed, epoch)``
    (``_epoch_batches``) and identical on every rank; rank ``r`` of ``R`` takes batches ``r, r + R,
    r + 2R, ...``, so ranks see disjoint batches and all get ``num_batches // R`` of them (the
    remainder is dropped so that collective ops stay in step).

    Resuming: ``state_dict()`` records ``epoch`` and ``position`` (batches this rank has consumed
    in the epoch); after ``load_state_dict`` the next iteration continues with exactly the batches
    that would have followed. A ``DataLoader`` with workers pulls batches ahead of the training loop,
    so pass the true count: ``sampler.state_dict(position=steps_done_this_epoch)``.
    """

    # settings that fix the batch sequence: a checkpoint made with other values is refused
    _LAYOUT_KEYS = ("seed", "num_replicas", "batch_size", "num_batches", "num_samples")

    def __init__(self, num_samples: int, batch_size: int, *, num_batches: Optional[int], num_replicas: Optional[int],
                 rank: Optional[int], seed: int) -> None:
        self.batch_size = int(batch_size)
        self.num_samples = int(num_samples)
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

    def _epoch_batches(self) -> np.ndarray:
        """All global batches of ``self.epoch``: ``int64 (num_batches, batch_size)``."""
        raise NotImplementedError

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
        return {"epoch": self.epoch, "position": self._consumed if position is None else int(position),
                **{key: getattr(self, key) for key in self._LAYOUT_KEYS}}

    def load_state_dict(self, state: Dict[str, int]) -> None:
        """Restore epoch and position; the batch layout settings must match (a different world
        size or batch size would give different batches, so it is refused rather than approximated)."""
        for key in self._LAYOUT_KEYS:
            if key in state and int(state[key]) != getattr(self, key):
                raise ConfigError(f"{type(self).__name__}.load_state_dict: {key}={state[key]} in the checkpoint but "
                                 f"{getattr(self, key)} now; cannot resume the same batch sequence")
        position = int(state["position"])
        if not 0 <= position <= len(self):
            raise ConfigError(f"position {position} outside 0..{len(self)}")
        self.epoch = int(state["epoch"])
        self._resume_at = position
        self._consumed = position


class MPerClassBatchSampler(_ShardedBatchSampler):
    """Yields batches with exactly ``m`` samples of each of ``batch_size // m`` distinct classes.

    Epochs, ranks and resuming as in ``_ShardedBatchSampler``: a pure function of ``(seed, epoch)``,
    rank ``r`` of ``R`` takes global batches ``r, r + R, ...``; ``state_dict`` / ``load_state_dict``
    continue mid-epoch.

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
    """

    _LAYOUT_KEYS = _ShardedBatchSampler._LAYOUT_KEYS + ("m",)

    def __init__(self, labels: Union[Sequence[int], np.ndarray, torch.Tensor, Any], m: int, batch_size: int, *,
                 num_batches: Optional[int] = None, num_replicas: Optional[int] = None,
                 rank: Optional[int] = None, seed: int = 0) -> None:
        labels = _labels_array(labels)
        if m < 1 or batch_size < m or batch_size % m:
            raise ConfigError(f"batch_size ({batch_size}) must be a positive multiple of m ({m})")
        self.m = int(m)
        self.classes_per_batch = batch_size // m
        classes, inverse = np.unique(labels, return_inverse=True)
        if len(classes) < self.classes_per_batch:
            raise ConfigError(f"batch_size / m = {self.classes_per_batch} classes per batch, but the labels "
                             f"hold only {len(classes)} classes")
        order = np.argsort(inverse, kind="stable")
        bounds = np.cumsum(np.bincount(inverse, minlength=len(classes)))[:-1]
        self._by_class: List[np.ndarray] = np.split(order, bounds)  # sample indices of each class
        super().__init__(len(labels), batch_size, num_batches=num_batches, num_replicas=num_replicas, rank=rank,
                         seed=seed)

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


class RandomBatchSampler(_ShardedBatchSampler):
    """Yields plain random batches of ``batch_size`` samples: no class balancing, so a batch holds
    whatever classes the draw gives (often one image per class when there are many classes).

    The same interface, epochs, ranks and resuming as ``MPerClassBatchSampler`` (without ``m``). An
    epoch walks reshuffled passes over all ``N`` samples, ``batch_size`` at a time; with the default
    ``num_batches`` that is one pass, so no sample appears twice in an epoch (a batch that spans two
    passes, when ``num_batches`` asks for more, may repeat one).

    Args:
        labels: per-sample class labels ``(N,)`` or a dataset with ``labels`` (only ``N`` is used:
            the argument is the other sampler's, so the two are interchangeable).
        batch_size: samples per batch on each rank.
        num_batches, num_replicas, rank, seed: as in ``MPerClassBatchSampler``.
    """

    _LAYOUT_KEYS = _ShardedBatchSampler._LAYOUT_KEYS + ("m",)
    m = 0  # no fixed number of samples per class (train.py's --m-per-class 0): an m-per-class checkpoint is refused

    def __init__(self, labels: Union[Sequence[int], np.ndarray, torch.Tensor, Any], batch_size: int, *,
                 num_batches: Optional[int] = None, num_replicas: Optional[int] = None,
                 rank: Optional[int] = None, seed: int = 0) -> None:
        num_samples = len(_labels_array(labels))
        if batch_size < 1 or batch_size > num_samples:
            raise ConfigError(f"batch_size ({batch_size}) must be in [1, {num_samples}] (the number of samples)")
        super().__init__(num_samples, batch_size, num_batches=num_batches, num_replicas=num_replicas, rank=rank,
                         seed=seed)

    def _epoch_batches(self) -> np.ndarray:
        """All global batches of ``self.epoch``: ``int64 (num_batches, batch_size)``."""
        rng = np.random.default_rng([self.seed, self.epoch])
        needed = self.num_batches * self.batch_size
        passes = -(-needed // self.num_samples)
        order = np.concatenate([rng.permutation(self.num_samples) for _ in range(passes)])
        return order[:needed].reshape(self.num_batches, self.batch_size)
