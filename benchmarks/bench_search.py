"""Search a million-item gallery: timm_gsp.retrieval.search's exact chunked search vs faiss, exact and approximate.

    python benchmarks/bench_search.py                      # 1,000 queries x 1,000,000 x 512 (about 30 min on 2 cores)
    python benchmarks/bench_search.py --num-items 100000   # a quick run
    python benchmarks/bench_search.py --threads 1          # on a shared, busy machine

The gallery is written once with ``write_index`` to ``--cache-dir`` and every method reads it
memory-mapped with ``read_index``, as ``timm-gsp search`` would. Its embeddings are random but
class-structured, like a trained model's: unit-normal class centres, ~50 items each, plus Gaussian
noise of std ``--noise`` per dimension, L2-normalised; two items of a class then have cosine about
1 / (1 + noise^2) (0.67 at the default 0.7), two of different classes about 0. On isotropic noise
every item is about as far as every other, so the recall of an approximate index would say nothing
about real galleries. The queries are new draws around the same centres. Approximate recall depends
strongly on this structure: judge a backend on your own embeddings too.

Each method runs in its own fresh subprocess, one after the other, so none sees another's memory
or warm caches. Memory, from right before the method to its end (build and search):

* "peak RSS": ``VmHWM`` after resetting it (``echo 5 > /proc/self/clear_refs``) minus the RSS
  before. It counts the pages of the memory-mapped index that the method touched: file-backed page
  cache, which the kernel drops under pressure and every method reads once.
* "peak anon": the largest growth of ``RssAnon`` (memory the method allocated itself), sampled
  every 5 ms from a thread (torch and faiss release the GIL in their kernels).

Times are wall clock; "speed-up" is the exact chunked search's time over the method's search time
(building an index is reported apart: it is paid once per gallery). "top-10 agree" compares each
query's top-10 with the exact search's: identical lists, or lists that differ only where the
scores differ by less than 1e-5 (float32 near-ties, which any two summation orders can flip).
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Callable, Dict, List, Tuple

import torch
import torch.nn.functional as F

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # import timm_gsp from this checkout

from timm_gsp.retrieval.search import build_faiss_index, read_index, search, search_faiss, write_index  # noqa: E402

from _memory import PeakMemory  # noqa: E402  the benchmarks' one peak-memory meter (benchmarks/_memory.py)

K = 10
ITEMS_PER_CLASS = 50
NEAR_TIE = 1e-5


# --- data ---------------------------------------------------------------------------------------

def _centres(args) -> torch.Tensor:
    return torch.randn(max(1, args.num_items // ITEMS_PER_CLASS), args.dim,
                       generator=torch.Generator().manual_seed(args.seed))


def _around(centres: torch.Tensor, count: int, noise: float, generator: torch.Generator) -> torch.Tensor:
    """``count`` normalised draws around random centres."""
    labels = torch.randint(0, centres.shape[0], (count,), generator=generator)
    noisy = centres[labels] + noise * torch.randn(count, centres.shape[1], generator=generator)
    return F.normalize(noisy, dim=1)


def gallery_file(args) -> Path:
    """The gallery index in the cache folder, written on first use."""
    path = Path(args.cache_dir) / f"gallery_{args.num_items}x{args.dim}_noise{args.noise}_seed{args.seed}.safetensors"
    if not path.exists():
        print(f"writing the gallery to {path} (once) ...", flush=True)
        centres, generator = _centres(args), torch.Generator().manual_seed(args.seed + 1)
        embeddings = torch.empty(args.num_items, args.dim)
        for start in range(0, args.num_items, 65536):
            stop = min(start + 65536, args.num_items)
            embeddings[start:stop] = _around(centres, stop - start, args.noise, generator)
        write_index(path, embeddings, [f"item{i:07d}.jpg" for i in range(args.num_items)],
                    {"source": "benchmarks/bench_search.py (random, class-structured)", "fingerprint": "-"})
    return path


def queries(args) -> torch.Tensor:
    return _around(_centres(args), args.num_queries, args.noise, torch.Generator().manual_seed(args.seed + 2))


# --- one method, in its own process -------------------------------------------------------------

def _timed(fn: Callable):
    start = time.perf_counter()
    result = fn()
    return result, time.perf_counter() - start


def worker(args) -> Dict:
    """Run one method; save its top-k per setting next to the gallery; return timings and memory."""
    import faiss

    if args.threads:
        torch.set_num_threads(args.threads)
        faiss.omp_set_num_threads(args.threads)
    index, query = read_index(gallery_file(args)), queries(args)
    runs: List[Tuple[str, torch.Tensor, torch.Tensor, float]] = []  # (setting, scores, indices, seconds)
    build = 0.0
    with PeakMemory() as memory:
        if args.worker == "exact":
            (scores, indices), seconds = _timed(lambda: search(query, index, K))
            runs.append(("", scores, indices, seconds))
        else:
            params = {"faiss-ivf": {"nlist": args.nlist}, "faiss-hnsw": {"M": args.hnsw_m,
                                                                       "efConstruction": args.ef_construction}}
            built, build = _timed(lambda: build_faiss_index(index, args.worker, **params.get(args.worker, {})))
            settings = {"faiss-flat": [("", None)],
                        "faiss-ivf": [(f"nprobe={n}", ("nprobe", n)) for n in args.nprobe],
                        "faiss-hnsw": [(f"efSearch={e}", ("efSearch", e)) for e in args.ef_search]}[args.worker]
            for setting, knob in settings:
                if knob:
                    setattr(built.hnsw if args.worker == "faiss-hnsw" else built, *knob)
                (scores, indices), seconds = _timed(lambda: search_faiss(built, query, K))
                runs.append((setting, scores, indices, seconds))
    results = []
    for setting, scores, indices, seconds in runs:
        out = Path(args.cache_dir) / f"result_{args.worker}_{setting or 'default'}.pt"
        torch.save({"scores": scores, "indices": indices}, out)
        results.append({"setting": setting, "search_s": seconds, "file": str(out)})
    return {"method": args.worker, "build_s": build, "runs": results, "peak_rss_bytes": memory.peak_rss_bytes,
            "peak_anon_bytes": memory.peak_anon_bytes, "threads": torch.get_num_threads()}


def run_worker(method: str, argv: List[str]) -> Dict:
    out = subprocess.run([sys.executable, __file__, *argv, "--worker", method], check=True,
                         capture_output=True, text=True).stdout
    return json.loads(out.strip().splitlines()[-1])


# --- comparison ---------------------------------------------------------------------------------

def agreement(exact: Dict, other: Dict) -> Tuple[int, int]:
    """(queries whose top-k equals the exact one's, ties aside; queries)."""
    same = exact["indices"] == other["indices"]
    near_tie = (exact["scores"] - other["scores"]).abs() < NEAR_TIE  # where positions differ, scores barely do
    return int((same | near_tie).all(1).sum()), exact["indices"].shape[0]


def recall(exact: Dict, other: Dict) -> float:
    """Mean over queries of |approximate top-k ∩ exact top-k| / k."""
    hits = sum(len(set(a) & set(b)) for a, b in zip(exact["indices"].tolist(), other["indices"].tolist()))
    return hits / exact["indices"].numel()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--num-items", type=int, default=1_000_000)
    parser.add_argument("--num-queries", type=int, default=1000)
    parser.add_argument("--dim", type=int, default=512)
    parser.add_argument("--noise", type=float, default=0.7, help="per-dim noise std around unit-normal class centres")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--nlist", type=int, default=1024, help="IVF lists (trained on 64 * nlist sampled items)")
    parser.add_argument("--nprobe", type=int, nargs="+", default=[8, 32])
    parser.add_argument("--hnsw-m", type=int, default=16)
    parser.add_argument("--ef-construction", type=int, default=40)
    parser.add_argument("--ef-search", type=int, nargs="+", default=[32, 128])
    parser.add_argument("--methods", nargs="+", default=["exact", "faiss-flat", "faiss-ivf", "faiss-hnsw"])
    parser.add_argument("--threads", type=int, default=0, help="torch and faiss threads (0: their defaults). On a "
                        "shared, oversubscribed machine use 1: idle-spinning OpenMP threads swamp the timings.")
    parser.add_argument("--cache-dir", default=os.path.join(tempfile.gettempdir(), "timm-gsp-bench-search"))
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    args = parser.parse_args()
    Path(args.cache_dir).mkdir(parents=True, exist_ok=True)
    if args.worker:
        print(json.dumps(worker(args)))
        return
    if "exact" not in args.methods:
        parser.error("--methods must include exact: it is the reference")

    argv = sys.argv[1:]
    command = " ".join(["python", "benchmarks/bench_search.py", *argv])
    gb = args.num_items * args.dim * 4 / 2**30
    print(f"{args.num_queries} queries x {args.num_items} x {args.dim} float32 ({gb:.2f} GiB), top-{K}, "
          f"torch {torch.__version__}, {args.threads or torch.get_num_threads()} thread(s), {os.cpu_count()} CPUs")
    started = time.perf_counter()
    _, write_s = _timed(lambda: gallery_file(args))
    if write_s > 1:
        print(f"gallery written in {write_s:.0f} s")
    reports = []
    for method in args.methods:
        print(f"{method} ...", flush=True)
        report = run_worker(method, argv)
        reports.append(report)
        for run in report["runs"]:
            print(f"  {run['setting'] or '-':>12}: build {report['build_s']:7.1f} s, search {run['search_s']:7.2f} s",
                  flush=True)

    exact_report = reports[args.methods.index("exact")]
    exact = torch.load(exact_report["runs"][0]["file"])
    exact_s = exact_report["runs"][0]["search_s"]
    rows = []
    for report in reports:
        for run in report["runs"]:
            result = torch.load(run["file"])
            agree, total = agreement(exact, result)
            name = {"exact": "timm_gsp exact (chunked)", "faiss-flat": "faiss IndexFlatIP",
                    "faiss-ivf": f"faiss IVFFlat nlist={args.nlist}",
                    "faiss-hnsw": f"faiss HNSWFlat M={args.hnsw_m} efC={args.ef_construction}"}[report["method"]]
            rows.append([f"{name} {run['setting']}".strip(), f"{report['build_s']:.1f}", f"{run['search_s']:.2f}",
                         f"{exact_s / run['search_s']:.1f}x", f"{recall(exact, result):.3f}", f"{agree}/{total}",
                         f"{report['peak_rss_bytes'] / 2**30:.2f}",
                         "–" if report["peak_anon_bytes"] is None else f"{report['peak_anon_bytes'] / 2**30:.2f}"])
    header = ["method", "build s", f"search s ({args.num_queries} q)", "speed-up", f"recall@{K}",
              f"top-{K} = exact", "peak RSS GiB", "peak anon GiB"]
    print(f"\n{args.num_queries} queries, gallery {args.num_items:,} x {args.dim} (memory-mapped index, "
          f"{gb:.2f} GiB), {args.threads or torch.get_num_threads()} thread(s):\n")
    print("| " + " | ".join(header) + " |")
    print("|" + "|".join("---" if i == 0 else "---:" for i in range(len(header))) + "|")
    for row in rows:
        print("| " + " | ".join(row) + " |")
    print(f"\nreproduce: {command}")
    print(f"total {time.perf_counter() - started:.0f} s")


if __name__ == "__main__":
    main()
