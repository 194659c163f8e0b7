"""Embedding indexes and search (timm_gsp.retrieval.search): exactness, bounded reads, the file, the model record."""
import hashlib
import json
import os
import struct
import sys

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import save_file

from timm_gsp import ConfigError, OutputExistsError
from timm_gsp.retrieval.search import (INDEX_FORMAT, EmbeddingIndex, build_faiss_index, check_index_model, model_fingerprint,
                             read_index, search, search_faiss, write_index)

MODEL = {"source": "hf-hub:someone/gsp-sop", "fingerprint": "f" * 64}


def _cosine64(queries, gallery):
    return F.normalize(queries.double(), dim=1) @ F.normalize(gallery.double(), dim=1).T


def _assert_true_top_k(scores, indices, queries, gallery, k):
    """Our top-k are the float64 top-k: the items we return have the reference's k best scores, in
    order (robust to near-ties, where float32 may pick either item)."""
    reference = _cosine64(queries, gallery)
    best = reference.topk(k, dim=1).values
    assert scores.dtype == torch.float32 and indices.dtype == torch.int64
    assert scores.shape == indices.shape == (queries.shape[0], k)
    torch.testing.assert_close(reference.gather(1, indices), best, atol=1e-5, rtol=0)
    torch.testing.assert_close(scores.double(), best, atol=1e-5, rtol=0)


class _RecordingRows:
    """An (M, D) gallery that records every slice it is asked for."""

    def __init__(self, rows):
        self.rows, self.reads = rows, []

    @property
    def shape(self):
        return self.rows.shape

    def __getitem__(self, item):
        assert isinstance(item, slice), "search must read the gallery in row slices"
        start, stop, _ = item.indices(self.rows.shape[0])
        self.reads.append((start, stop))
        return self.rows[item]


# --- exact search -------------------------------------------------------------------------------

@pytest.mark.parametrize("stored", [False, True], ids=["tensor", "memory-mapped-index"])
def test_exact_search_is_the_float64_top_k(tmp_path, stored):
    torch.manual_seed(0)
    gallery, queries = 3 * torch.randn(1000, 24) + 1, torch.randn(37, 24)  # not normalised: search does it
    target = read_index(write_index(tmp_path / "g.safetensors", gallery, [str(i) for i in range(1000)], MODEL)) \
        if stored else gallery
    # 1000 rows in chunks of 96 (the last one partial), 37 queries in batches of 10.
    scores, indices = search(queries, target, 7, chunk_rows=96, query_batch=10)
    _assert_true_top_k(scores, indices, queries, gallery, 7)


def test_gallery_is_read_in_chunks_of_at_most_chunk_rows():
    torch.manual_seed(0)
    gallery, queries = torch.randn(1000, 16), torch.randn(5, 16)
    recording = _RecordingRows(gallery)
    scores, indices = search(queries, recording, 4, chunk_rows=96)
    assert max(stop - start for start, stop in recording.reads) <= 96
    # Every row read exactly once, in order: the chunks tile the gallery.
    assert [start for start, _ in recording.reads] == list(range(0, 1000, 96))
    assert recording.reads[-1][1] == 1000
    expected = search(queries, gallery, 4, chunk_rows=2000)
    torch.testing.assert_close((scores, indices), expected)


def test_ties_go_to_the_lower_gallery_index_across_chunks():
    # Rows are scaled axis vectors, so normalised they are exactly e_j and every score is exact:
    # the rows i % 4 == 1 tie exactly, and the chunks of 7 split them.
    gallery = torch.eye(4).repeat(13, 1) * torch.arange(1, 53).unsqueeze(1).float()
    query = torch.tensor([[0.1, 0.9, 0.3, 0.2]])
    scores, indices = search(query, gallery, 5, chunk_rows=7, query_batch=1)
    assert indices.tolist() == [[1, 5, 9, 13, 17]]
    assert len(set(scores[0].tolist())) == 1
    # Past the tied group: the next best axis (2), again by index.
    _, indices = search(query, gallery, 15, chunk_rows=7)
    assert indices[0, 13:].tolist() == [2, 6]


def test_k_larger_than_the_gallery_returns_the_whole_gallery():
    torch.manual_seed(0)
    gallery, queries = torch.randn(6, 8), torch.randn(2, 8)
    scores, indices = search(queries, gallery, 50, chunk_rows=4)
    assert indices.shape == scores.shape == (2, 6)
    assert sorted(indices[0].tolist()) == list(range(6))
    assert (scores[:, :-1] >= scores[:, 1:]).all()


@pytest.mark.parametrize("kwargs,message", [
    ({"k": 0}, "k must be >= 1, got 0"),
    ({"k": 3, "chunk_rows": 0}, "chunk_rows must be >= 1"),
    ({"k": 3, "backend": "annoy"}, "unknown backend 'annoy'"),
    ({"k": 3, "nprobe": 4}, "backend 'exact' takes no parameters"),
])
def test_bad_arguments_are_config_errors(kwargs, message):
    with pytest.raises(ConfigError, match=message):
        search(torch.randn(2, 8), torch.randn(10, 8), **kwargs)


def test_query_dimension_must_match_the_gallery():
    with pytest.raises(ConfigError, match=r"queries must be \(Q, 8\)"):
        search(torch.randn(2, 4), torch.randn(10, 8), 3)


# --- the index file -----------------------------------------------------------------------------

def _maps_file(tensor, path):
    """Whether the tensor's data lies in a memory mapping of ``path`` (Linux /proc/self/maps)."""
    address, target = tensor.data_ptr(), os.path.realpath(path)
    with open("/proc/self/maps") as maps:
        for line in maps:
            fields = line.split()
            if len(fields) >= 6 and fields[5] == target:
                low, high = (int(x, 16) for x in fields[0].split("-"))
                if low <= address < high:
                    return True
    return False


def test_index_round_trip(tmp_path):
    torch.manual_seed(0)
    embeddings = torch.randn(12, 5)
    paths = [f"gallery/cls{i % 3}/ïmage {i}.jpg" for i in range(12)]  # non-ASCII, spaces
    labels = [f"cls{i % 3}" for i in range(12)]
    out = write_index(tmp_path / "sub" / "g.safetensors", embeddings, paths, {**MODEL, "extra": [1, 2]}, labels)
    assert out == tmp_path / "sub" / "g.safetensors"
    assert os.listdir(out.parent) == ["g.safetensors"]  # no temporary file left behind
    (out.parent / "plain").touch()
    assert out.stat().st_mode == (out.parent / "plain").stat().st_mode  # readable like any new file
    index = read_index(out)
    assert isinstance(index, EmbeddingIndex) and index.path == out
    assert len(index) == 12 and index.dim == 5
    torch.testing.assert_close(index.embeddings, embeddings)
    assert index.paths == paths and index.labels == labels and index.model == {**MODEL, "extra": [1, 2]}
    if os.path.exists("/proc/self/maps"):
        assert _maps_file(index.embeddings, out), "embeddings must be a view of the memory-mapped file"
    no_labels = read_index(write_index(tmp_path / "n.safetensors", embeddings, paths, MODEL))
    assert no_labels.labels is None


def test_write_refuses_to_replace_unless_asked(tmp_path):
    out = write_index(tmp_path / "g.safetensors", torch.zeros(2, 3), ["a", "b"], MODEL)
    with pytest.raises(OutputExistsError, match=rf"{tmp_path / 'g.safetensors'}.*overwrite=True"):
        write_index(out, torch.ones(3, 3), ["a", "b", "c"], MODEL)
    assert len(read_index(out)) == 2
    write_index(out, torch.ones(3, 3), ["a", "b", "c"], MODEL, overwrite=True)
    assert len(read_index(out)) == 3


def test_a_failed_write_leaves_the_old_index_and_no_temporary_file(tmp_path, monkeypatch):
    import safetensors.torch

    out = write_index(tmp_path / "g.safetensors", torch.zeros(2, 3), ["a", "b"], MODEL)

    def crash(tensors, filename, metadata=None):
        with open(filename, "wb") as f:
            f.write(b"half a file")
        raise OSError("disk full")

    monkeypatch.setattr(safetensors.torch, "save_file", crash)
    with pytest.raises(OSError, match="disk full"):
        write_index(out, torch.ones(3, 3), ["a", "b", "c"], MODEL, overwrite=True)
    assert os.listdir(tmp_path) == ["g.safetensors"]
    assert read_index(out).paths == ["a", "b"]


@pytest.mark.parametrize("kwargs,message", [
    ({"paths": ["a"]}, "1 paths for 2 embeddings"),
    ({"labels": ["x", "y", "z"]}, "3 labels for 2 embeddings"),
    ({"model": {"source": "x"}}, "'source' and 'fingerprint'"),
    ({"embeddings": torch.zeros(2)}, r"must be \(M, D\)"),
])
def test_write_checks_its_arguments(tmp_path, kwargs, message):
    arguments = {"embeddings": torch.zeros(2, 3), "paths": ["a", "b"], "model": MODEL, **kwargs}
    with pytest.raises(ConfigError, match=message):
        write_index(tmp_path / "g.safetensors", **arguments)
    assert not os.listdir(tmp_path)


def test_write_refuses_non_finite_embeddings_naming_the_image(tmp_path):
    embeddings = torch.randn(5, 3)
    embeddings[3, 1], embeddings[4, 0] = float("nan"), float("-inf")
    with pytest.raises(ConfigError, match=r"2 of 5 embeddings are not finite .* first: image d\.png") as error:
        write_index(tmp_path / "g.safetensors", embeddings, [f"{c}.png" for c in "abcde"], MODEL)
    assert str(tmp_path / "g.safetensors") in str(error.value)
    assert not os.listdir(tmp_path)


@pytest.mark.parametrize("chunk_rows", [2, 65536])
def test_read_refuses_non_finite_embeddings_counting_them(tmp_path, chunk_rows):
    from timm_gsp.retrieval.search import nonfinite_rows

    rows = torch.randn(7, 3)
    rows[0, 2], rows[5, 0], rows[6, :] = float("inf"), float("nan"), float("nan")
    assert nonfinite_rows(rows, chunk_rows=chunk_rows).tolist() == [0, 5, 6]
    bad = tmp_path / "nan.safetensors"
    save_file({"embeddings": rows, "paths": torch.tensor(list(json.dumps(list("abcdefg")).encode()), dtype=torch.uint8)},
              str(bad), metadata={"format": INDEX_FORMAT, "model": json.dumps(MODEL)})
    with pytest.raises(ConfigError, match=r"3 of 7 embeddings are not finite \(NaN or infinite\)") as error:
        read_index(bad)
    assert str(bad) in str(error.value) and "\n" not in str(error.value)


def _bad_index(tmp_path, kind):
    good = write_index(tmp_path / "good.safetensors", torch.randn(4, 3), list("abcd"), MODEL)
    data = good.read_bytes()
    bad = tmp_path / f"{kind}.safetensors"
    if kind == "missing":
        return bad
    if kind == "truncated":
        bad.write_bytes(data[:-7])
    elif kind == "truncated-header":
        bad.write_bytes(data[:20])
    elif kind == "empty":
        bad.write_bytes(b"")
    elif kind == "not-safetensors":
        bad.write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(range(256)) * 4)
    elif kind == "foreign":  # model weights, not an index
        save_file({"head.weight": torch.zeros(2, 2)}, str(bad))
    elif kind == "paths-count":
        save_file({"embeddings": torch.zeros(3, 2), "paths": torch.tensor(list(b'["a", "b"]'), dtype=torch.uint8)},
                  str(bad), metadata={"format": INDEX_FORMAT, "model": "{}"})
    elif kind == "paths-not-json":
        save_file({"embeddings": torch.zeros(1, 2), "paths": torch.tensor(list(b"[oops"), dtype=torch.uint8)},
                  str(bad), metadata={"format": INDEX_FORMAT, "model": "{}"})
    elif kind == "model-not-json":
        save_file({"embeddings": torch.zeros(1, 2), "paths": torch.tensor(list(b'["a"]'), dtype=torch.uint8)},
                  str(bad), metadata={"format": INDEX_FORMAT, "model": "{oops"})
    elif kind == "model-not-object":
        save_file({"embeddings": torch.zeros(1, 2), "paths": torch.tensor(list(b'["a"]'), dtype=torch.uint8)},
                  str(bad), metadata={"format": INDEX_FORMAT, "model": '["a list"]'})
    elif kind == "no-paths":
        save_file({"embeddings": torch.zeros(1, 2)}, str(bad), metadata={"format": INDEX_FORMAT})
    return bad


@pytest.mark.parametrize("kind,message", [
    ("missing", "no such index file"),
    ("truncated", "corrupt or truncated"),
    ("truncated-header", "corrupt or truncated"),
    ("empty", "corrupt or truncated"),
    ("not-safetensors", "corrupt or truncated"),
    ("foreign", "not a timm-gsp index"),
    ("paths-count", "2 paths for 3 embeddings"),
    ("paths-not-json", "paths are not a JSON list"),
    ("model-not-json", "model record is not JSON"),
    ("model-not-object", "model record is not a JSON object"),
    ("no-paths", r"lacks \['paths'\]"),
])
def test_unreadable_index_is_a_config_error_naming_the_file(tmp_path, kind, message):
    bad = _bad_index(tmp_path, kind)
    with pytest.raises(ConfigError, match=message) as error:
        read_index(bad)
    text = str(error.value)
    assert str(bad) in text and "\n" not in text


# --- the model that built it ----------------------------------------------------------------------

def _linear(seed=0):
    torch.manual_seed(seed)
    return torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.BatchNorm1d(3))


def test_fingerprint_is_a_function_of_the_weights():
    model = _linear()
    # The documented recipe, computed by hand: nothing process-specific (ids, addresses) enters it.
    fixed = torch.nn.Linear(2, 2)
    with torch.no_grad():
        fixed.weight.copy_(torch.arange(4.0).view(2, 2))
        fixed.bias.copy_(torch.tensor([0.5, -1.0]))
    recipe = hashlib.sha256()
    recipe.update(b"bias\0torch.float32\0(2,)\0" + struct.pack("<2f", 0.5, -1.0))
    recipe.update(b"weight\0torch.float32\0(2, 2)\0" + struct.pack("<4f", 0, 1, 2, 3))
    assert model_fingerprint(fixed) == recipe.hexdigest() == \
        "4dc0d01fc9c1355ebb9e6cb77e88bfc5985b37a92683e5fbb8e523015d32961d"
    assert model_fingerprint(model) == model_fingerprint(_linear())  # same weights, new instance
    assert len(model_fingerprint(model)) == 64
    assert model_fingerprint(model) != model_fingerprint(_linear(seed=1))
    changed = _linear()
    changed[1].running_mean += 1e-3  # buffers count: they change the embeddings
    assert model_fingerprint(changed) != model_fingerprint(model)
    assert model_fingerprint(_linear().half()) != model_fingerprint(model)


def test_check_index_model_refuses_another_model():
    index = EmbeddingIndex(torch.zeros(2, 3), ["a", "b"], model=MODEL)
    check_index_model(index, MODEL["fingerprint"], "anything")  # same weights: fine
    with pytest.raises(ConfigError, match=r"index \(in memory\) was built by hf-hub:someone/gsp-sop, the queries "
                                          r"would be embedded by resnet50 \+ ckpt.safetensors: .*rebuild the index"):
        check_index_model(index, "0" * 64, "resnet50 + ckpt.safetensors")


# --- faiss --------------------------------------------------------------------------------------

def _clustered(num_items=3000, num_queries=50, dim=32, seed=0):
    """Class-structured data, like a trained model's embeddings: approximate search has neighbours to find."""
    g = torch.Generator().manual_seed(seed)
    centres = torch.randn(60, dim, generator=g)

    def around(count):
        return centres[torch.randint(0, 60, (count,), generator=g)] + 0.3 * torch.randn(count, dim, generator=g)

    return around(num_items), around(num_queries)


def test_faiss_flat_equals_exact():
    pytest.importorskip("faiss")
    gallery, queries = _clustered()
    scores, indices = search(queries, gallery, 10, backend="faiss-flat", chunk_rows=700)
    _assert_true_top_k(scores, indices, queries, gallery, 10)
    exact_scores, exact_indices = search(queries, gallery, 10)
    torch.testing.assert_close(scores, exact_scores, atol=1e-5, rtol=0)
    assert (indices == exact_indices).float().mean() > 0.99  # float32 near-ties aside


@pytest.mark.parametrize("backend,params", [
    ("faiss-ivf", {"nlist": 16, "nprobe": 4}),
    ("faiss-ivf", {}),
    ("faiss-hnsw", {"M": 16, "efConstruction": 40, "efSearch": 32}),
])
def test_approximate_faiss_backends_find_most_neighbours(backend, params):
    pytest.importorskip("faiss")
    gallery, queries = _clustered()
    scores, indices = search(queries, gallery, 10, backend=backend, chunk_rows=700, **params)
    assert scores.shape == indices.shape == (50, 10) and indices.dtype == torch.int64
    _, exact = search(queries, gallery, 10)
    recall = sum(len(set(a) & set(b)) for a, b in zip(indices.tolist(), exact.tolist())) / exact.numel()
    assert recall > 0.8
    found = indices >= 0  # the scores are the cosines of the items found
    reference = _cosine64(queries, gallery).gather(1, indices.clamp_min(0))
    torch.testing.assert_close(scores[found].double(), reference[found], atol=1e-5, rtol=0)


def test_a_built_faiss_index_is_reused_and_tuned():
    pytest.importorskip("faiss")
    gallery, queries = _clustered()
    index = build_faiss_index(EmbeddingIndex(gallery, [str(i) for i in range(len(gallery))]), "faiss-ivf", nlist=16)
    index.nprobe = 16  # every list: exhaustive, hence exact
    _, indices = search_faiss(index, queries, 5, query_batch=7)
    _, exact = search(queries, gallery, 5)
    assert (indices == exact).float().mean() > 0.99


def test_faiss_argument_errors():
    pytest.importorskip("faiss")
    with pytest.raises(ConfigError, match=r"nlist must be in 1\.\.10"):
        search(torch.randn(2, 4), torch.randn(10, 4), 3, backend="faiss-ivf", nlist=50)
    with pytest.raises(ConfigError, match=r"backend 'faiss-hnsw' takes \['M', 'efConstruction', 'efSearch'\], "
                                          r"got \['nprobe'\]"):
        search(torch.randn(2, 4), torch.randn(10, 4), 3, backend="faiss-hnsw", nprobe=3)


def test_missing_faiss_is_a_config_error(monkeypatch):
    monkeypatch.setitem(sys.modules, "faiss", None)  # makes `import faiss` raise ImportError
    with pytest.raises(ConfigError, match=r"backend 'faiss-flat' needs faiss: pip install 'timm-gsp\[faiss\]'"):
        search(torch.randn(2, 4), torch.randn(10, 4), 3, backend="faiss-flat")
