"""Peak memory of ``timm_gsp.retrieval.evaluate.retrieval_examples`` (the queries a report pictures) against the
way it was computed before ``metrics/knn.py`` became the one exact k-NN, on an SOP-sized same-set problem.

    python benchmarks/bench_retrieval_examples.py                  # 60,502 x 512, 11,316 classes (a few minutes on 2 cores)
    python benchmarks/bench_retrieval_examples.py --num-embeddings 5000 --num-classes 800   # quick

The embeddings are random and L2-normalised, the labels uniformly random class ids; query = gallery
(the same-set protocol of SOP). "old" is the previous code, frozen below: it counted each query's
relevant items with a dense (Q, G) bool mask (3.4 GiB at SOP size) and scored chunks of 1,024 queries
against the whole gallery. "new" is the package: relevant counts from the gallery's label counts and
``metrics.knn.exact_knn``'s blockwise top-k.

Each side runs in its own fresh subprocess (same seed, same data). Memory is the peak RSS of the call
over what was resident just before it (the embeddings, Python and torch): ``VmHWM`` after resetting it
(``echo 5 > /proc/self/clear_refs``, Linux), with bench_search's sampler of anonymous memory beside it.
"picks agree" compares every field of the two results bit for bit (queries, neighbours, scores,
average precision, worst flags).
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_search import PeakMemory  # noqa: E402  (also puts this checkout's timm_gsp on sys.path)

SOP_N, SOP_CLASSES, SOP_DIM = 60_502, 11_316, 512
FIELDS = ("queries", "neighbors", "scores", "average_precision", "worst")


def make_data(n: int, num_classes: int, dim: int, seed: int):
    """(n, dim) random unit vectors and (n,) uniformly random labels in [0, num_classes)."""
    g = torch.Generator().manual_seed(seed)
    return F.normalize(torch.randn(n, dim, generator=g), dim=1), torch.randint(0, num_classes, (n,), generator=g)


# --- the previous code, frozen for comparison (timm_gsp/evaluate.py at commit 03aa6d6): its count of
# R and its ranking; choosing the queries from the average precisions did not change and is shared ---

def _old_ranked(query, gallery, k, same_set, chunk=1024):
    from timm_gsp.metrics.knn import sort_by_score_then_index, topk

    query, gallery = F.normalize(query.float(), dim=1), F.normalize(gallery.float(), dim=1)
    scores, indices = [], []
    for start in range(0, query.shape[0], chunk):
        sims = query[start:start + chunk] @ gallery.T
        if same_set:
            rows = torch.arange(sims.shape[0])
            sims[rows, rows + start] = float("-inf")
        top_scores, top_indices = sort_by_score_then_index(*topk(sims, k))
        scores.append(top_scores)
        indices.append(top_indices)
    return torch.cat(scores), torch.cat(indices)


def old_retrieval_examples(embeddings, labels, k=5, num_sample=4, num_worst=4, seed=0, dense_counts=True):
    """The same-set case of the old ``retrieval_examples``, as a dict of its result's fields.
    ``dense_counts=False`` swaps its dense count of R for the label counts (the same integers), to get
    the old ranking and picks where the dense count does not fit in memory."""
    from timm_gsp.metrics.retrieval import average_precision_at_r, relevant_counts
    from timm_gsp.retrieval.evaluate import pick_queries

    query = gallery = embeddings
    query_labels = gallery_labels = labels
    if dense_counts:  # the (Q, G) bool mask, and sum() makes an int64 copy of it: 9 bytes per pair
        r = (query_labels[:, None] == gallery_labels[None, :]).sum(1) - 1
    else:
        r = relevant_counts(query_labels, gallery_labels, True)
    depth = min(max(k, int(r.max()) if r.numel() else 0), gallery.shape[0] - 1)
    scores, neighbors = _old_ranked(query, gallery, depth, True)
    ap = average_precision_at_r(gallery_labels[neighbors] == query_labels[:, None], r).float()
    picked, worst = pick_queries(ap, num_sample, num_worst, seed)  # unchanged: the package's own
    k = min(k, depth)
    return {"queries": picked, "neighbors": neighbors[picked, :k], "scores": scores[picked, :k],
            "average_precision": ap[picked], "worst": worst}


def new_retrieval_examples(embeddings, labels, k=5, num_sample=4, num_worst=4, seed=0):
    from timm_gsp.retrieval.evaluate import retrieval_examples

    examples = retrieval_examples({"test": (embeddings, labels)}, k, num_sample, num_worst, seed)
    return {name: getattr(examples, name) for name in FIELDS}


# --- one side, in its own process ---------------------------------------------------------------

def worker(args) -> dict:
    if args.threads:
        torch.set_num_threads(args.threads)
    embeddings, labels = make_data(args.num_embeddings, args.num_classes, args.dim, args.seed)
    run = {"old": old_retrieval_examples, "new": new_retrieval_examples,
           "old-ranking": lambda *a: old_retrieval_examples(*a, dense_counts=False)}[args.worker]
    start = time.perf_counter()
    try:
        with PeakMemory() as memory:
            result = run(embeddings, labels, args.k, args.num_sample, args.num_worst, args.seed)
    except (MemoryError, RuntimeError) as error:  # torch: "DefaultCPUAllocator: can't allocate memory"
        if "allocate" not in str(error) and not isinstance(error, MemoryError):
            raise
        return {"out_of_memory": str(error).splitlines()[0][-160:]}
    seconds = time.perf_counter() - start
    out = Path(args.out_dir) / f"{args.worker}.pt"
    torch.save(result, out)
    return {"seconds": seconds, "peak_rss_bytes": memory.peak_rss_bytes, "peak_anon_bytes": memory.peak_anon_bytes,
            "embedding_bytes": embeddings.numel() * embeddings.element_size(), "file": str(out)}


def run_side(side: str, argv, out_dir: str) -> dict:
    cmd = [sys.executable, os.path.abspath(__file__), *argv, "--worker", side, "--out-dir", out_dir]
    out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
    return json.loads(out.strip().splitlines()[-1])


def _identical(a: torch.Tensor, b: torch.Tensor) -> bool:
    """Equal dtype, shape and values, NaN equal to NaN (the AP of a query alone in its class)."""
    if not a.is_floating_point():
        return torch.equal(a, b)
    return a.dtype == b.dtype and a.shape == b.shape and bool(((a == b) | (a.isnan() & b.isnan())).all())


def main() -> None:
    import tempfile

    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--num-embeddings", type=int, default=SOP_N)
    parser.add_argument("--num-classes", type=int, default=SOP_CLASSES)
    parser.add_argument("--dim", type=int, default=SOP_DIM)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--k", type=int, default=5)
    parser.add_argument("--num-sample", type=int, default=4)
    parser.add_argument("--num-worst", type=int, default=4)
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: torch default)")
    parser.add_argument("--worker", choices=["old", "old-ranking", "new"], help=argparse.SUPPRESS)
    parser.add_argument("--out-dir", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        print(json.dumps(worker(args)))
        return

    argv = sys.argv[1:]
    print(f"{args.num_embeddings} x {args.dim} embeddings, {args.num_classes} classes, same-set, k={args.k}, "
          f"{args.num_sample} sampled + {args.num_worst} worst, torch {torch.__version__}", flush=True)
    with tempfile.TemporaryDirectory() as out_dir:
        reports = {}
        for side in ("old", "new"):
            reports[side] = report = run_side(side, argv, out_dir)
            if "out_of_memory" in report:
                print(f"{side}: out of memory: {report['out_of_memory']}", flush=True)
                # The old ranking alone, with R from label counts: the picks old code would show.
                side = "old-ranking"
                reports[side] = report = run_side(side, argv, out_dir)
            print(f"{side}: {report['seconds']:7.1f} s, peak RSS over the embeddings "
                  f"{report['peak_rss_bytes'] / 2**20:8.1f} MiB (anonymous {report['peak_anon_bytes'] / 2**20:8.1f} MiB;"
                  f" embeddings {report['embedding_bytes'] / 2**20:.1f} MiB)", flush=True)
        reference = "old" if "file" in reports["old"] else "old-ranking"
        old, new = (torch.load(reports[side]["file"]) for side in (reference, "new"))
    new_peak = reports["new"]["peak_rss_bytes"]
    if reference == "old":
        print(f"old / new peak: {reports['old']['peak_rss_bytes'] / max(new_peak, 1):.1f}x")
    print(f"new peak within 1.5 GiB over the embeddings: {'yes' if new_peak <= 1.5 * 2**30 else 'NO'}")
    differ = [name for name in FIELDS if not _identical(old[name], new[name])]
    print(f"picks agree with {reference} (all of {', '.join(FIELDS)} bit for bit): "
          f"{'yes' if not differ else 'NO: ' + ', '.join(differ)}")
    print("picked queries:", new["queries"].tolist())


if __name__ == "__main__":
    main()
