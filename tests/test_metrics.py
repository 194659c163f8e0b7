"""Tests for timm_gsp.metrics.retrieval.RetrievalMetrics.

The reference is pytorch-metric-learning's AccuracyCalculator. Without faiss it needs an explicit
``knn_func``; ``_StableKNN`` below computes the full distance matrix with pml's own distance
classes and sorts it stably, i.e. it breaks exact ties by gallery index like RetrievalMetrics.
Self-exclusion for the same-set protocol is done by pml's own ``return_results``. Recall@K is not
an AccuracyCalculator metric, so ``_Reference`` adds it through pml's documented extension point
(``calculate_<name>`` methods get the same knn labels and lone-query mask as the built-ins).
"""

import json
import math
import socket

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from pytorch_metric_learning.distances import CosineSimilarity, LpDistance
from pytorch_metric_learning.utils.accuracy_calculator import AccuracyCalculator
from pytorch_metric_learning.utils.inference import CustomKNN, return_results

from timm_gsp.metrics.knn import exact_knn
from timm_gsp.metrics.retrieval import RetrievalMetrics, relevant_counts

K_VALUES = (1, 2, 4, 8)
PML_METRICS = ("precision_at_1", "r_precision", "mean_average_precision_at_r")


def _pml_distance(distance):
    return CosineSimilarity() if distance == "cosine" else LpDistance(normalize_embeddings=False)


class _StableKNN:
    """AccuracyCalculator knn_func: exact k-NN, ties broken by lower reference index."""

    def __init__(self, distance):
        self.distance = _pml_distance(distance)

    def __call__(self, query, k, reference, ref_includes_query=False):
        if ref_includes_query:
            k += 1  # pml asks for k neighbours besides the query itself
        # AccuracyCalculator casts to float32; the tests' data is float32-exact, so float64 here
        # only removes rounding noise from the ranking.
        mat = self.distance(query.double(), reference.double())
        d, i = torch.sort(mat, dim=1, descending=self.distance.is_inverted, stable=True)
        return return_results(d[:, :k], i[:, :k], ref_includes_query)


def _recall_at(k):
    def calculate(self, knn_labels, query_labels, not_lone_query_mask, **kwargs):
        hits = knn_labels[not_lone_query_mask][:, :k] == query_labels[not_lone_query_mask][:, None]
        return hits.any(1).double().mean().item()

    return calculate


class _Reference(AccuracyCalculator):
    pass


for _k in K_VALUES:
    setattr(_Reference, f"calculate_recall_at_{_k}", _recall_at(_k))


def _reference(emb, labels, distance, is_query=None, knn_func=None):
    calc = _Reference(
        include=PML_METRICS + tuple(f"recall_at_{k}" for k in K_VALUES),
        knn_func=knn_func or _StableKNN(distance),
        device=torch.device("cpu"),
    )
    if is_query is None:
        out = calc.get_accuracy(emb, labels)
    else:
        out = calc.get_accuracy(emb[is_query], labels[is_query], emb[~is_query], labels[~is_query])
    out["map_at_r"] = out.pop("mean_average_precision_at_r")
    return out


def _ours(emb, labels, distance, is_query=None, chunk_size=64, batch=50, **kwargs):
    protocol = "same_set" if is_query is None else "query_gallery"
    metric = RetrievalMetrics(K_VALUES, distance=distance, chunk_size=chunk_size, protocol=protocol, **kwargs)
    for s in range(0, len(labels), batch):  # several update() calls, as in an eval loop
        extra = () if is_query is None else (is_query[s : s + batch],)
        metric.update(emb[s : s + batch], labels[s : s + batch], *extra)
    return metric.compute()


def _assert_close(ours, ref, tol=1e-6):
    assert set(ours) == set(ref)
    for key in ref:
        assert isinstance(ours[key], float)
        assert abs(ours[key] - ref[key]) <= tol, (key, ours[key], ref[key])


def _random_data(seed, n=300, dim=16):
    """Classes of size 1..9 (many singletons), shuffled, with some exact duplicate embeddings.

    Embeddings are float32 values stored as float64 (see _StableKNN). Duplicates here share their
    label: which of two bit-identical embeddings with different labels ranks first depends on
    floating-point rounding of the matmul (its blocking), in any GEMM-based k-NN, so it is not
    well defined on random data. Cross-label exact ties are covered by _lattice_data, where the
    arithmetic is exact.
    """
    g = torch.Generator().manual_seed(seed)
    sizes = torch.randint(1, 10, (n,), generator=g)
    labels = torch.repeat_interleave(torch.arange(n), sizes)[:n]
    labels = labels[torch.randperm(n, generator=g)]
    emb = torch.randn(n, dim, generator=g)
    src, dst = torch.randint(0, n, (2, n // 5), generator=g)
    emb[dst], labels[dst] = emb[src], labels[src]
    return emb.double(), labels


def _lattice_data(seed, n=300, dim=16):
    """Entries +-1/4 in 16-D: exactly unit norm, exact dot products and distances, hence many
    exact ties (distinct vectors at equal distance, plus duplicates across labels)."""
    g = torch.Generator().manual_seed(seed)
    emb = (torch.randint(0, 2, (n, dim), generator=g) * 2 - 1) / 4.0
    labels = torch.randint(0, 40, (n,), generator=g)
    src, dst = torch.randint(0, n, (2, n // 10), generator=g)
    emb[dst] = emb[src]
    return emb.double(), labels


def _split(seed, n):
    g = torch.Generator().manual_seed(seed + 1000)
    return torch.rand(n, generator=g) < 0.4


# ---------------------------------------------------------------------------------- values


@pytest.mark.parametrize("distance", ["cosine", "euclidean"])
@pytest.mark.parametrize("make_data", [_random_data, _lattice_data])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_same_set_matches_accuracy_calculator(seed, make_data, distance):
    emb, labels = make_data(seed)
    ref = _reference(emb, labels, distance)
    assert ref["recall_at_1"] == ref["precision_at_1"]  # the reference recall is wired correctly
    _assert_close(_ours(emb, labels, distance), ref)


@pytest.mark.parametrize("distance", ["cosine", "euclidean"])
@pytest.mark.parametrize("make_data", [_random_data, _lattice_data])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_query_gallery_matches_accuracy_calculator(seed, make_data, distance):
    emb, labels = make_data(seed)
    is_query = _split(seed, len(labels))
    _assert_close(_ours(emb, labels, distance, is_query), _reference(emb, labels, distance, is_query))


@pytest.mark.parametrize("distance", ["cosine", "euclidean"])
def test_float32_matches_accuracy_calculator_with_stock_torch_knn(distance):
    # pml's own CustomKNN (torch.topk, float32); no exact ties in this data, so order is defined.
    g = torch.Generator().manual_seed(5)
    emb, labels = torch.randn(400, 32, generator=g), torch.randint(0, 60, (400,), generator=g)
    knn = CustomKNN(_pml_distance(distance))
    ref = _reference(emb, labels, distance, knn_func=knn)
    _assert_close(_ours(emb, labels, distance), ref)
    is_query = _split(5, 400)
    _assert_close(_ours(emb, labels, distance, is_query), _reference(emb, labels, distance, is_query, knn_func=knn))


@pytest.mark.parametrize("chunk_size", [1, 2, 100])
def test_hand_computed_same_set(chunk_size):
    # 1-D points; the singleton at 100 is a lone query and is ignored.
    # q=0 (a): 1a 2b 5a 6b, R=2 -> P@1 1, RP 1/2, AP@R 1/2
    # q=1 (a): 0a,2b tied at distance 1 -> lower index (0) first; 5a 6b, R=2 -> 1, 1/2, 1/2
    # q=2 (b): 1a 0a 5a 6b, R=1 -> 0, 0, 0 (recall@2 0, recall@4 1)
    # q=5 (a): 6b 2b 1a 0a, R=2 -> 0, 0, 0 (recall@2 0, recall@4 1)
    # q=6 (b): 5a 2b 1a 0a, R=1 -> 0, 0, 0 (recall@2 1)
    emb = torch.tensor([[0.0], [1.0], [2.0], [5.0], [6.0], [100.0]])
    labels = torch.tensor([0, 0, 1, 0, 1, 7])
    metric = RetrievalMetrics(k_values=(1, 2, 4), distance="euclidean", chunk_size=chunk_size)
    metric.update(emb, labels)
    expected = {"precision_at_1": 0.4, "recall_at_1": 0.4, "recall_at_2": 0.6, "recall_at_4": 1.0}
    expected.update(r_precision=0.2, map_at_r=0.2)
    _assert_close(metric.compute(), expected, tol=1e-12)


def test_hand_computed_query_gallery():
    # gallery 0a 2b 5a. q=1 (a): 0a,2b tied -> 0 first, R=2 -> P@1 1, RP 1/2, AP@R 1/2.
    # q=4 (b): 5a 2b 0a, R=1 -> 0, 0, 0, recall@2 1. q=9 (label 3) has no gallery match: ignored.
    emb = torch.tensor([[0.0], [2.0], [5.0], [1.0], [4.0], [9.0]])
    labels = torch.tensor([0, 1, 0, 0, 1, 3])
    is_query = torch.tensor([False, False, False, True, True, True])
    metric = RetrievalMetrics(k_values=(1, 2), distance="euclidean", protocol="query_gallery")
    metric.update(emb, labels, is_query)
    expected = {"precision_at_1": 0.5, "recall_at_1": 0.5, "recall_at_2": 1.0, "r_precision": 0.25, "map_at_r": 0.25}
    _assert_close(metric.compute(), expected, tol=1e-12)


@pytest.mark.parametrize("distance", ["cosine", "euclidean"])
@pytest.mark.parametrize("protocol", ["same_set", "query_gallery"])
def test_chunked_equals_unchunked(distance, protocol):
    for emb, labels in (_lattice_data(3), _random_data(3)):
        is_query = None if protocol == "same_set" else _split(3, len(labels))
        full = _ours(emb, labels, distance, is_query, chunk_size=10_000, batch=10_000)
        for chunk_size in (3, 17, 299):  # 3 < k: blocks narrower than the neighbour count
            assert _ours(emb, labels, distance, is_query, chunk_size=chunk_size) == full


def test_float32_and_half_inputs():
    emb, labels = _lattice_data(4)  # exactly representable in float16
    ref = _ours(emb, labels, "cosine")
    assert _ours(emb.float(), labels, "cosine") == ref
    assert _ours(emb.half(), labels, "cosine") == ref
    assert _ours(emb.bfloat16(), labels, "cosine") == ref


def test_k_larger_than_gallery_and_unsorted_k_values():
    emb, labels = _random_data(6, n=20)
    metric = RetrievalMetrics(k_values=(50, 1, 3))
    metric.update(emb, labels)
    out = metric.compute()
    assert list(out) == ["precision_at_1", "recall_at_1", "recall_at_3", "recall_at_50", "r_precision", "map_at_r"]
    assert out["recall_at_50"] == 1.0  # every non-lone query finds its class among all items
    assert out["recall_at_1"] == out["precision_at_1"] < 1.0


def test_all_lone_queries_give_nan():
    metric = RetrievalMetrics()
    metric.update(torch.randn(5, 4), torch.arange(5))  # only singleton classes
    with pytest.warns(UserWarning, match="no query"):
        out = metric.compute()
    assert len(out) == 7 and all(math.isnan(v) for v in out.values())


@pytest.mark.filterwarnings("ignore:The ``compute`` method")  # torchmetrics' own warning
def test_reset():
    emb, labels = _random_data(7)
    metric = RetrievalMetrics()
    metric.update(torch.randn(10, 16), torch.zeros(10, dtype=torch.long))
    metric.reset()
    with pytest.raises(ValueError, match="before any update"):
        metric.compute()
    metric.update(emb, labels)
    assert metric.compute() == _ours(emb, labels, "cosine")


# ---------------------------------------------------------------------------------- errors


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"distance": "manhattan"}, "Unknown distance"),
        ({"protocol": "gallery"}, "Unknown protocol"),
        ({"k_values": ()}, "k_values"),
        ({"k_values": (1, 0)}, "k_values"),
        ({"k_values": (-2,)}, "k_values"),
        ({"k_values": (1.5,)}, "k_values"),
        ({"k_values": (True,)}, "k_values"),
        ({"chunk_size": 0}, "chunk_size"),
    ],
)
def test_constructor_errors(kwargs, match):
    with pytest.raises(ValueError, match=match):
        RetrievalMetrics(**kwargs)


@pytest.mark.filterwarnings("ignore:The ``compute`` method")
def test_update_errors():
    metric = RetrievalMetrics()
    with pytest.raises(ValueError, match="2-D"):
        metric.update(torch.randn(4), torch.arange(4))
    with pytest.raises(ValueError, match="2-D"):
        metric.update(torch.randn(4, 2, 2), torch.arange(4))
    with pytest.raises(ValueError, match="floating point"):
        metric.update(torch.ones(4, 2, dtype=torch.long), torch.arange(4))
    with pytest.raises(ValueError, match="matching embeddings"):
        metric.update(torch.randn(4, 3), torch.arange(5))
    with pytest.raises(ValueError, match="matching embeddings"):
        metric.update(torch.randn(4, 3), torch.arange(4)[:, None])
    with pytest.raises(ValueError, match="integer"):
        metric.update(torch.randn(4, 3), torch.arange(4.0))
    with pytest.raises(ValueError, match="only valid"):
        metric.update(torch.randn(4, 3), torch.arange(4), torch.ones(4, dtype=torch.bool))
    with pytest.raises(ValueError, match="before any update"):
        metric.compute()

    qg = RetrievalMetrics(protocol="query_gallery")
    with pytest.raises(ValueError, match="needs is_query"):
        qg.update(torch.randn(4, 3), torch.arange(4))
    with pytest.raises(ValueError, match="bool"):
        qg.update(torch.randn(4, 3), torch.arange(4), torch.ones(4))
    with pytest.raises(ValueError, match="bool"):
        qg.update(torch.randn(4, 3), torch.arange(4), torch.ones(3, dtype=torch.bool))


def test_compute_errors():
    qg = RetrievalMetrics(protocol="query_gallery")
    qg.update(torch.randn(4, 3), torch.arange(4), torch.ones(4, dtype=torch.bool))
    with pytest.raises(ValueError, match="0 gallery"):
        qg.compute()
    metric = RetrievalMetrics()
    metric.update(torch.tensor([[0.0, float("nan")], [1.0, 1.0]]), torch.tensor([0, 0]))
    with pytest.raises(ValueError, match="NaN"):
        metric.compute()


# ---------------------------------------------------------------------------------- DDP


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _ddp_worker(rank, world_size, port, out_path):
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world_size)
    try:
        results = {}
        for name, make_data in (("random", _random_data), ("lattice", _lattice_data)):
            emb, labels = make_data(8)
            is_query = _split(8, len(labels))
            # Uneven halves: rank 0 takes the first 130 samples, rank 1 the rest, so the gathered
            # (rank-major) order equals the single-process order, ties included.
            part = slice(0, 130) if rank == 0 else slice(130, None)
            for protocol in ("same_set", "query_gallery"):
                metric = RetrievalMetrics(k_values=K_VALUES, protocol=protocol, chunk_size=50)
                e, l, q = emb[part], labels[part], is_query[part]
                for s in range(0, len(l), 40):
                    extra = () if protocol == "same_set" else (q[s : s + 40],)
                    metric.update(e[s : s + 40], l[s : s + 40], *extra)
                results[f"{name}/{protocol}"] = metric.compute()
                # compute() restores the local (unsynced) state afterwards
                results[f"{name}/{protocol}/local_n"] = sum(len(x) for x in metric.labels)
        with open(f"{out_path}.{rank}", "w") as f:
            json.dump(results, f)
    finally:
        dist.destroy_process_group()


def test_ddp_two_processes_match_single_process(tmp_path):
    out_path = str(tmp_path / "ddp")
    mp.spawn(_ddp_worker, args=(2, _free_port(), out_path), nprocs=2, join=True)
    for rank in range(2):
        with open(f"{out_path}.{rank}") as f:
            results = json.load(f)
        for name, make_data in (("random", _random_data), ("lattice", _lattice_data)):
            emb, labels = make_data(8)
            is_query = _split(8, len(labels))
            for protocol, q in (("same_set", None), ("query_gallery", is_query)):
                single = _ours(emb, labels, "cosine", q, chunk_size=50)
                _assert_close(results[f"{name}/{protocol}"], single, tol=1e-12)
                # each rank really held only its own share before the gather
                assert results[f"{name}/{protocol}/local_n"] == (130 if rank == 0 else 170)


# ---------------------------------------------------------------------------------- the k-NN


def _oracle_knn(query, gallery, k, distance, same_set):
    """Full float64 score matrix, sorted stably: (score desc, index asc), the query itself excluded."""
    if distance == "cosine":
        scores = torch.nn.functional.normalize(query, dim=1) @ torch.nn.functional.normalize(gallery, dim=1).T
    else:
        scores = 2 * query @ gallery.T - query.square().sum(1)[:, None] - gallery.square().sum(1)  # -|q - g|^2, exact here
    if same_set:
        scores.fill_diagonal_(float("-inf"))
    return torch.sort(scores, dim=1, descending=True, stable=True)[1][:, :k]


@pytest.mark.parametrize("distance", ["cosine", "euclidean"])
@pytest.mark.parametrize("same_set", [True, False], ids=["same-set", "query-gallery"])
def test_exact_knn_is_the_tie_aware_oracle_for_any_blocking(distance, same_set):
    # Lattice data: exact arithmetic, so many exact ties, which must go to the lower index.
    emb, _ = _lattice_data(9)
    query, gallery = (emb, None) if same_set else (emb[:90], emb[90:])
    expected = _oracle_knn(query, emb if same_set else gallery, 12, distance, same_set)
    blockings = [{}, {"query_block": 1}, {"query_block": 7}, {"block_bytes": 64 * 300 * 8}]
    if not same_set:
        blockings += [{"gallery_block": 5, "query_block": 13}, {"gallery_block": 1000}]
    for blocking in blockings:
        scores, indices = exact_knn(query, 12, gallery, distance=distance, **blocking)
        assert torch.equal(indices, expected), blocking
        assert scores.dtype == torch.float64 and (scores[:, :-1] >= scores[:, 1:]).all()


def test_exact_knn_clips_k_to_the_candidates_and_checks_its_arguments():
    emb = torch.randn(5, 3)
    assert exact_knn(emb, 10)[1].shape == (5, 4)  # same set: the 4 others
    assert exact_knn(emb, 10, emb[:2])[1].shape == (5, 2)
    scores, indices = exact_knn(emb[:1], 3)  # alone: nothing to retrieve
    assert scores.shape == indices.shape == (1, 0)
    with pytest.raises(ValueError, match="k must be >= 1"):
        exact_knn(emb, 0)
    with pytest.raises(ValueError, match="Unknown distance"):
        exact_knn(emb, 2, distance="manhattan")


@pytest.mark.parametrize("same_set", [True, False])
def test_relevant_counts_equal_the_dense_mask(same_set):
    g = torch.Generator().manual_seed(0)
    gallery_labels = torch.randint(-3, 40, (500,), generator=g)  # -1 is "unlabelled", still a label
    query_labels = gallery_labels if same_set else torch.randint(-5, 50, (123,), generator=g)[::2]  # strided
    dense = (query_labels[:, None] == gallery_labels[None, :]).sum(1) - int(same_set)
    assert torch.equal(relevant_counts(query_labels, gallery_labels, same_set), dense)
    assert relevant_counts(torch.tensor([1, 2]), torch.tensor([], dtype=torch.long), False).tolist() == [0, 0]
