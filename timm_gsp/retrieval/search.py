"""Embedding indexes on disk and cosine-similarity search over galleries of millions.

The index file
--------------
One ``.safetensors`` file (``write_index`` / ``read_index``) holding three tensors

* ``embeddings``: (M, D) float32, the model's raw outputs (search normalises them);
* ``paths``: uint8, the UTF-8 JSON list of the M image paths;
* ``labels`` (optional): uint8, the UTF-8 JSON list of the M class names;

and in the safetensors header's metadata ``format`` (``INDEX_FORMAT``) and ``model`` (JSON: at
least ``source``, how the model was given, and ``fingerprint``, ``model_fingerprint`` of its
weights). The paths are a tensor rather than metadata because safetensors caps its JSON header at
100 MB, about a million paths. Any safetensors reader can open the file.

``read_index`` memory-maps it (safetensors' ``get_tensor`` returns a view of a private map of the
file), so a 2 GB index is never copied into memory: opening it reads the rows once, in chunks, to
check that every embedding is finite (an index holding NaN or infinities is refused, naming the file
and how many rows are bad; ``write_index`` never writes such rows), and search pages them in again
as it reads them.

Search
------
``search`` ranks by cosine similarity, best first, ties by lower gallery index. The exact backend
(``metrics.knn.exact_knn``, the k-NN the retrieval metrics use too) streams the gallery in chunks of
``chunk_rows`` rows -- each normalised once, scored against every query batch, merged into a running
top-k -- so its memory is about
``chunk_rows * (D + query_batch) * 4`` bytes (0.4 GB at the defaults, D = 512) plus the (Q, k)
results, whatever M is. The faiss backends (``pip install 'timm-gsp[faiss]'``) copy the whole
gallery into a faiss index (M * D * 4 bytes and more), chunk by chunk:
``faiss-flat`` is exact, ``faiss-ivf`` and ``faiss-hnsw`` are approximate and much faster per
query once built (``build_faiss_index`` + ``search_faiss`` reuse one index across query batches).
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple, Union

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..errors import ConfigError, OutputExistsError
from ..metrics.knn import exact_knn
from ..utils import PathLike, write_file_atomic

__all__ = [
    "BACKENDS",
    "INDEX_FORMAT",
    "EmbeddingIndex",
    "build_faiss_index",
    "check_index_model",
    "model_fingerprint",
    "nonfinite_rows",
    "read_index",
    "search",
    "search_faiss",
    "write_index",
]

INDEX_FORMAT = "timm-gsp/index/1"
# backend -> the parameters it takes (faiss's own names) and their defaults (None: set from the
# gallery size, see build_faiss_index). HNSW's efConstruction is faiss's default; larger builds a
# better graph, proportionally slower (M=16 already took 8 to 18 minutes for 1,000,000 x 512 on
# one core of a shared machine in benchmarks/bench_search.py).
BACKENDS: Dict[str, Dict[str, Optional[int]]] = {
    "exact": {},
    "faiss-flat": {},
    "faiss-ivf": {"nlist": None, "nprobe": 16, "train_size": None},
    "faiss-hnsw": {"M": 32, "efConstruction": 40, "efSearch": 64},
}

Gallery = Union["EmbeddingIndex", torch.Tensor]


@dataclass
class EmbeddingIndex:
    """A gallery: M embeddings with the image behind each and the model that made them.

    Attributes:
        embeddings: (M, D) float32; memory-mapped when read from disk (rows load as they are read).
        paths: the M image paths.
        labels: the M class names (e.g. class folders) when known.
        model: record of the model that built it: ``{"source": str, "fingerprint": str, ...}``.
        path: the file it was read from or written to; None when built in memory.
    """

    embeddings: torch.Tensor
    paths: List[str]
    labels: Optional[List[str]] = None
    model: Dict[str, Any] = field(default_factory=dict)
    path: Optional[Path] = None

    def __post_init__(self) -> None:
        where = self.path or "index"
        if self.embeddings.dim() != 2:
            raise ConfigError(f"{where}: embeddings must be (M, D), got shape {tuple(self.embeddings.shape)}")
        for name in ("paths", "labels"):
            items = getattr(self, name)
            if items is not None and len(items) != len(self):
                raise ConfigError(f"{where}: {len(items)} {name} for {len(self)} embeddings")

    def __len__(self) -> int:
        return self.embeddings.shape[0]

    @property
    def dim(self) -> int:
        return self.embeddings.shape[1]


# --- the file -----------------------------------------------------------------------------------

def write_index(
        path: PathLike,
        embeddings: torch.Tensor,
        paths: Sequence[str],
        model: Dict[str, Any],
        labels: Optional[Sequence[str]] = None,
        *,
        overwrite: bool = False,
) -> Path:
    """Write an index file (format in the module docstring) atomically; returns its path.

    Args:
        embeddings: (M, D) raw model outputs (stored as float32), all finite.
        paths: the M image paths.
        model: ``{"source": str, "fingerprint": str, ...}`` (JSON-serialisable).
        labels: the M class names, if known.
        overwrite: replace an existing file (else ``OutputExistsError``).

    Raises:
        ConfigError: the arguments do not fit together, or an embedding holds a NaN or an infinity
            (the message names the first such image); nothing is written.
        OutputWriteError: the file cannot be written (``utils.write_file_atomic``); no part of it is left.
    """
    out = Path(path)
    if out.exists() and not overwrite:
        raise OutputExistsError(f"{out} exists: pass overwrite=True to replace it")
    if not all(isinstance(model.get(key), str) for key in ("source", "fingerprint")):
        raise ConfigError(f"{out}: model must name its 'source' and 'fingerprint' as strings, got {sorted(model)}")
    index = EmbeddingIndex(embeddings.detach().to("cpu", torch.float32).contiguous(), [str(p) for p in paths],
                           None if labels is None else [str(label) for label in labels], model, out)
    bad = nonfinite_rows(index.embeddings)
    if len(bad):
        raise ConfigError(f"{out}: {_nonfinite(bad, len(index))}, the first: image {index.paths[bad[0]]}; "
                          "nothing was written")
    tensors = {"embeddings": index.embeddings, "paths": _json_bytes(index.paths)}
    if index.labels is not None:
        tensors["labels"] = _json_bytes(index.labels)
    metadata = {"format": INDEX_FORMAT, "model": json.dumps(index.model)}
    _atomic_save(tensors, metadata, out)  # creates the folder
    return out


def read_index(path: PathLike) -> EmbeddingIndex:
    """The index in ``path``, its embeddings memory-mapped.

    Raises:
        ConfigError: the file is missing, not a safetensors file, truncated, not a timm-gsp index,
            its parts do not fit together (rows, paths and labels of different lengths, a model
            record that is not a JSON object), or an embedding is not finite; the message names
            the path and the problem.
    """
    from safetensors import SafetensorError, safe_open

    file = Path(path)
    if not file.is_file():
        raise ConfigError(f"{file}: no such index file")
    try:
        with safe_open(str(file), framework="pt") as f:
            metadata = f.metadata() or {}
            if metadata.get("format") != INDEX_FORMAT:
                raise ConfigError(f"{file}: not a timm-gsp index (format {metadata.get('format')!r}, "
                                  f"expected {INDEX_FORMAT!r})")
            names = set(f.keys())
            if not {"embeddings", "paths"} <= names:
                raise ConfigError(f"{file}: index lacks {sorted({'embeddings', 'paths'} - names)}")
            embeddings = f.get_tensor("embeddings")  # a view of the memory map, not a copy
            paths = _json_list(f.get_tensor("paths"), file, "paths")
            labels = _json_list(f.get_tensor("labels"), file, "labels") if "labels" in names else None
    except (SafetensorError, OSError) as error:
        raise ConfigError(f"{file}: unreadable index (corrupt or truncated safetensors file: {error})") from error
    if embeddings.dtype != torch.float32:
        raise ConfigError(f"{file}: embeddings are {embeddings.dtype}, expected float32")
    try:
        model = json.loads(metadata.get("model", "{}"))
    except json.JSONDecodeError as error:
        raise ConfigError(f"{file}: the model record is not JSON ({error})") from error
    if not isinstance(model, dict):
        raise ConfigError(f"{file}: the model record is not a JSON object (got {type(model).__name__})")
    index = EmbeddingIndex(embeddings, paths, labels, model, file)
    bad = nonfinite_rows(embeddings)
    if len(bad):
        raise ConfigError(f"{file}: {_nonfinite(bad, len(index))}, the first: row {int(bad[0])} (image "
                          f"{paths[bad[0]]}); search would rank by NaN scores: rebuild the index with `timm-gsp embed`")
    return index


def nonfinite_rows(rows: torch.Tensor, chunk_rows: int = 65536) -> torch.Tensor:
    """(B,) int64 indices of the rows of (M, D) ``rows`` that hold a NaN or an infinity, read
    ``chunk_rows`` rows at a time (a memory-mapped gallery is paged through, never copied whole)."""
    bad = [(~torch.isfinite(torch.as_tensor(rows[start:start + chunk_rows])).all(dim=1)).nonzero().flatten() + start
           for start in range(0, rows.shape[0], chunk_rows)]
    return torch.cat(bad) if bad else torch.empty(0, dtype=torch.long)


def _nonfinite(bad: torch.Tensor, total: int) -> str:
    return f"{len(bad)} of {total} embeddings are not finite (NaN or infinite)"


def _json_bytes(items: List[str]) -> torch.Tensor:
    return torch.frombuffer(bytearray(json.dumps(items).encode("utf-8")), dtype=torch.uint8)


def _json_list(data: torch.Tensor, file: Path, name: str) -> List[str]:
    try:
        items = json.loads(data.numpy().tobytes().decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise ConfigError(f"{file}: the {name} are not a JSON list ({error})") from error
    if not isinstance(items, list) or not all(isinstance(item, str) for item in items):
        raise ConfigError(f"{file}: the {name} are not a list of strings")
    return items


def _atomic_save(tensors: Dict[str, torch.Tensor], metadata: Dict[str, str], out: Path) -> None:
    from safetensors.torch import save_file

    write_file_atomic(out, lambda tmp: save_file(tensors, str(tmp), metadata=metadata))


# --- which model built it -----------------------------------------------------------------------

def model_fingerprint(model: nn.Module) -> str:
    """sha256 (hex) of the model's state_dict: names (sorted), dtypes, shapes and bytes.

    The same weights give the same fingerprint in any process and on any device.
    """
    digest = hashlib.sha256()
    state = model.state_dict()
    for name in sorted(state):
        value = state[name]
        if not isinstance(value, torch.Tensor):  # extra state: its repr is all there is to compare
            digest.update(f"{name}\0{value!r}\0".encode())
            continue
        tensor = value.detach().to("cpu").contiguous()
        digest.update(f"{name}\0{tensor.dtype}\0{tuple(tensor.shape)}\0".encode())
        digest.update(tensor.reshape(-1).view(torch.uint8).numpy())  # raw bytes, any dtype
    return digest.hexdigest()


def check_index_model(index: EmbeddingIndex, fingerprint: str, source: str) -> None:
    """Refuse to search ``index`` with queries of the model ``fingerprint`` unless it built the index.

    Raises:
        ConfigError: the index was built by another model (or records none).
    """
    if index.model.get("fingerprint") != fingerprint:
        raise ConfigError(
            f"index {index.path or '(in memory)'} was built by {index.model.get('source', 'an unknown model')}, "
            f"the queries would be embedded by {source}: embeddings of different models cannot be compared; "
            "rebuild the index with `timm-gsp embed` or search without --model"
        )


# --- search -------------------------------------------------------------------------------------

@torch.no_grad()
def search(
        queries: torch.Tensor,
        gallery: Gallery,
        k: int,
        *,
        backend: str = "exact",
        query_batch: int = 1024,
        chunk_rows: int = 65536,
        **backend_params: int,
) -> Tuple[torch.Tensor, torch.Tensor]:
    """The ``k`` gallery items most cosine-similar to each query, best first.

    Args:
        queries: (Q, D) embeddings (normalised here).
        gallery: an ``EmbeddingIndex`` or (M, D) embeddings (normalised here, chunk by chunk).
        k: results per query; more than M gives M.
        backend: ``"exact"`` (chunked torch), ``"faiss-flat"`` (exact), ``"faiss-ivf"`` or
            ``"faiss-hnsw"`` (approximate).
        query_batch: queries scored at once.
        chunk_rows: gallery rows normalised (and, for faiss, added) at once.
        **backend_params: ``BACKENDS[backend]``: ``nlist``, ``nprobe``, ``train_size`` for IVF;
            ``M``, ``efConstruction``, ``efSearch`` for HNSW.

    Returns:
        scores (Q, k) float32 and gallery indices (Q, k) int64. The exact backend breaks ties by
        lower index (faiss orders equal scores its own way); the approximate ones may find fewer
        than k items for a query (index -1, score -inf).
    """
    if k < 1:
        raise ConfigError(f"k must be >= 1, got {k}")
    for name, value in (("query_batch", query_batch), ("chunk_rows", chunk_rows)):
        if value < 1:
            raise ConfigError(f"{name} must be >= 1, got {value}")
    if backend not in BACKENDS:
        raise ConfigError(f"unknown backend {backend!r}; choose from {list(BACKENDS)}")
    rows = _rows(gallery)
    queries = _check_queries(queries, rows.shape[1])
    if backend == "exact":
        _check_params(backend, backend_params)
        return exact_knn(queries, k, rows, query_block=query_batch, gallery_block=chunk_rows)
    index = build_faiss_index(gallery, backend, chunk_rows=chunk_rows, **backend_params)
    return search_faiss(index, queries, k, query_batch=query_batch)


# --- faiss --------------------------------------------------------------------------------------

@torch.no_grad()
def build_faiss_index(gallery: Gallery, backend: str, *, chunk_rows: int = 65536, **params: int):
    """A faiss inner-product index of the L2-normalised gallery, added ``chunk_rows`` rows at a time.

    Search-time settings can be changed on the result afterwards (``index.nprobe``,
    ``index.hnsw.efSearch``), as faiss documents.

    Args:
        backend: ``"faiss-flat"``, ``"faiss-ivf"`` or ``"faiss-hnsw"``.
        **params: ``BACKENDS[backend]``; IVF's ``nlist`` defaults to ``4 * sqrt(M)`` (at most
            M / 39, faiss's minimum of training points per list) and ``train_size`` (rows sampled
            to train it) to ``64 * nlist``.
    """
    if backend not in BACKENDS or backend == "exact":
        raise ConfigError(f"unknown faiss backend {backend!r}; choose from {[b for b in BACKENDS if b != 'exact']}")
    params = _check_params(backend, params)
    faiss = _import_faiss(backend)
    rows = _rows(gallery)
    num_items, dim = rows.shape
    if backend == "faiss-flat":
        index = faiss.IndexFlatIP(dim)
    elif backend == "faiss-hnsw":
        index = faiss.IndexHNSWFlat(dim, params["M"], faiss.METRIC_INNER_PRODUCT)
        index.hnsw.efConstruction, index.hnsw.efSearch = params["efConstruction"], params["efSearch"]
    else:
        nlist = params["nlist"] or max(1, min(int(4 * num_items ** 0.5), num_items // 39))
        if not 1 <= nlist <= num_items:
            raise ConfigError(f"nlist must be in 1..{num_items} (the gallery size), got {nlist}")
        index = faiss.IndexIVFFlat(faiss.IndexFlatIP(dim), dim, nlist, faiss.METRIC_INNER_PRODUCT)
        index.train(_training_sample(rows, params["train_size"] or 64 * nlist))
        index.nprobe = min(params["nprobe"], nlist)
    for start in range(0, num_items, chunk_rows):
        index.add(F.normalize(_float_rows(rows, start, start + chunk_rows), dim=1).numpy())
    return index


@torch.no_grad()
def search_faiss(index, queries: torch.Tensor, k: int, *, query_batch: int = 1024) -> Tuple[torch.Tensor, torch.Tensor]:
    """Search a ``build_faiss_index`` index with (Q, D) queries: (Q, k) scores and indices, as ``search``."""
    if k < 1:
        raise ConfigError(f"k must be >= 1, got {k}")
    queries = F.normalize(_check_queries(queries, index.d), dim=1)
    k = min(k, index.ntotal)
    scores, indices = [], []
    for start in range(0, queries.shape[0], query_batch):
        s, i = index.search(queries[start:start + query_batch].numpy(), k)
        scores.append(torch.from_numpy(s))
        indices.append(torch.from_numpy(i))
    scores, indices = torch.cat(scores), torch.cat(indices).long()
    return scores.masked_fill_(indices < 0, float("-inf")), indices


def _import_faiss(backend: str):
    try:
        import faiss
    except ImportError:
        raise ConfigError(f"backend {backend!r} needs faiss: pip install 'timm-gsp[faiss]'") from None
    return faiss


def _training_sample(rows: torch.Tensor, size: int):
    """(min(size, M), D) normalised rows at random positions (seeded: the same index every run)."""
    picked = torch.randperm(rows.shape[0], generator=torch.Generator().manual_seed(0))[:size].sort().values
    return F.normalize(torch.as_tensor(rows[picked]).float(), dim=1).numpy()


# --- arguments ----------------------------------------------------------------------------------

def _rows(gallery: Gallery) -> torch.Tensor:
    """The (M, D) gallery rows (left where they are: a memory map stays a memory map)."""
    rows = gallery.embeddings if isinstance(gallery, EmbeddingIndex) else gallery
    if len(rows.shape) != 2:
        raise ConfigError(f"gallery must be (M, D) embeddings, got shape {tuple(rows.shape)}")
    return rows


def _float_rows(rows: torch.Tensor, start: int, stop: int) -> torch.Tensor:
    """Rows start:stop as a float32 tensor (a copy only where the dtype or type differs)."""
    return torch.as_tensor(rows[start:stop]).float()


def _check_queries(queries: torch.Tensor, dim: int) -> torch.Tensor:
    queries = torch.as_tensor(queries).detach().to("cpu", torch.float32)
    if queries.dim() != 2 or queries.shape[1] != dim:
        raise ConfigError(f"queries must be (Q, {dim}) to match the gallery, got shape {tuple(queries.shape)}")
    return queries


def _check_params(backend: str, params: Dict[str, Any]) -> Dict[str, Any]:
    """``params`` completed with the backend's defaults; unknown names are refused."""
    allowed = BACKENDS[backend]
    unknown = sorted(set(params) - set(allowed))
    if unknown:
        raise ConfigError(f"backend {backend!r} takes {sorted(allowed) or 'no parameters'}, got {unknown}")
    return {**allowed, **params}
