"""``timm-gsp embed`` (images -> an index file) and ``timm-gsp search`` (query images -> their top-k in an index).

The index (``retrieval.search``) records the model that made it (source + fingerprint), so ``search``
refuses queries embedded by another model. Under ``torchrun`` ``embed`` shards the images across the
processes and rank 0 writes one index, the same as a one-process run.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

import torch

from ..errors import ConfigError
from .inputs import (add_model_flags, add_runner_flags, collect_images, embed_files, load, positive, read_labels,
                     start_distributed)
from .support import printable_path

__all__ = ["add_parsers", "cmd_embed", "cmd_search"]


def cmd_embed(args: argparse.Namespace) -> int:
    from ..hub.model_sources import find_model
    from ..retrieval.search import model_fingerprint, write_index

    if Path(args.output).exists() and not args.overwrite:
        raise ConfigError(f"{args.output} exists: pass --overwrite to replace it")
    images = collect_images(args.images)
    paths = [path for path, _ in images]
    classes = [label for _, label in images]
    labels = read_labels(args.labels, paths) if args.labels else (classes if None not in classes else None)
    distributed = start_distributed()
    try:
        loaded = load(find_model(args.model), args)
        embeddings = embed_files(loaded, paths, args)
        if embeddings is not None:  # rank 0 (or the only process) writes the index
            record = {"source": loaded.found.source, "fingerprint": model_fingerprint(loaded.model),
                      "config": loaded.found.config.to_dict()}
            out = write_index(args.output, embeddings, paths, record, labels, overwrite=args.overwrite)
            print(f"wrote {embeddings.shape[0]} embeddings of size {embeddings.shape[1]} to {printable_path(out)}"
                  + (f" with {len(set(labels))} classes" if labels else ""))
    finally:
        if distributed:
            torch.distributed.destroy_process_group()
    return 0


def _query_labels(args: argparse.Namespace, images: List[Tuple[str, Optional[str]]], known: Optional[List[str]]) -> List[Optional[str]]:
    """Each query's class: ``--query-labels``, else its class folder or parent folder's name when the
    index knows that class (else None: the sheet then draws no right / wrong frames)."""
    paths = [path for path, _ in images]
    if args.query_labels:
        return read_labels(args.query_labels, paths)
    classes = set(known or ())
    return [label if label in classes else None for label in (c or Path(p).parent.name for p, c in images)]


def cmd_search(args: argparse.Namespace) -> int:
    from ..hub.model_sources import find_model
    from ..retrieval.search import check_index_model, model_fingerprint, read_index, search

    k = positive(args.top_k, "--top-k")
    index = read_index(args.index)
    if not len(index):
        raise ConfigError(f"{args.index}: the index holds no embeddings")
    source = args.model or index.model.get("source")
    if not source or not isinstance(source, str):
        raise ConfigError(f"{args.index} records no model: pass --model")
    images = collect_images(args.queries)
    loaded = load(find_model(source), args)
    check_index_model(index, model_fingerprint(loaded.model), loaded.found.source)
    queries = embed_files(loaded, [path for path, _ in images], args)
    scores, indices = search(queries, index, min(k, len(index)), backend=args.backend)
    results = [{"query": path, "results": [{"rank": r + 1, "path": index.paths[i], "score": s,
                                            **({"label": index.labels[i]} if index.labels else {})}
                                           for r, (s, i) in enumerate(zip(row_scores, row_indices)) if i >= 0]}
               for (path, _), row_scores, row_indices in zip(images, scores.tolist(), indices.tolist())]
    if args.json:
        print(json.dumps(results, indent=1))
    else:
        for item in results:  # one line per query and per hit, whatever the file names hold
            print(printable_path(item["query"]))
            for hit in item["results"]:
                print(f"  {hit['rank']:>3}  {hit['score']:.4f}  {printable_path(hit['path'])}")
    if args.save:
        _save_search_sheet(args.save, results, _query_labels(args, images, index.labels), args.thumb)
        print(f"wrote {printable_path(args.save)}")
    return 0


def _save_search_sheet(path: str, results: List[Dict[str, Any]], query_labels: List[Optional[str]], thumb: int) -> None:
    from ..retrieval.evaluate import save_picture
    from ..retrieval.viz import Hit, retrieval_sheet

    hits = [[Hit(hit["path"], hit["score"], hit.get("label")) for hit in item["results"]] for item in results]
    save_picture(retrieval_sheet([item["query"] for item in results], hits, query_labels=query_labels, thumb=thumb), path)


def add_parsers(sub: Any) -> None:
    """``embed`` and ``search``, on the sub-command parsers of ``timm-gsp``."""
    from ..retrieval.search import BACKENDS

    p = sub.add_parser("embed", help="images or folders -> an index file (runs under torchrun too)")
    p.add_argument("images", nargs="+", help="image files and/or folders (searched recursively; root/<class>/<images> "
                                             "records the classes)")
    p.add_argument("--output", "-o", required=True, help="the index file to write (.safetensors)")
    p.add_argument("--labels", help='JSON file {"image path": "class"} (default: the class folders, when all images sit in one)')
    p.add_argument("--overwrite", action="store_true", help="replace an existing index file")
    add_model_flags(p)
    add_runner_flags(p)
    p.set_defaults(func=cmd_embed)

    p = sub.add_parser("search", help="query images against an index: top-k with cosine scores",
                       description="The model defaults to the one recorded in the index; another model is refused.")
    p.add_argument("queries", nargs="+", help="query image files and/or folders")
    p.add_argument("--index", required=True, help="index file written by `timm-gsp embed`")
    p.add_argument("--top-k", "-k", type=int, default=5)
    p.add_argument("--backend", choices=list(BACKENDS), default="exact", help="exact, or faiss (pip install faiss-cpu)")
    p.add_argument("--json", action="store_true", help="print JSON")
    p.add_argument("--save", help="also write a retrieval sheet: each query with its top-k (PNG)")
    p.add_argument("--query-labels", help='JSON file {"image path": "class"} (default: the parent folder names)')
    p.add_argument("--thumb", type=int, default=112, help="thumbnail size of --save, pixels")
    add_model_flags(p, required=False)
    add_runner_flags(p)
    p.set_defaults(func=cmd_search)
