"""Benchmark RetrievalMetrics.compute() against pytorch-metric-learning's AccuracyCalculator.

Default size is the Stanford Online Products test set: 60,502 embeddings of dim 512 in 11,316
classes (random sizes 2..12, mean 5.35 like SOP), same-set protocol. Embeddings are random but
class-structured (class centre + Gaussian noise) so the metrics are far from 0 and the value
comparison means something.

    python benchmarks/bench_metrics.py                       # full SOP size (minutes on 2 cores)
    python benchmarks/bench_metrics.py --num-embeddings 5000 # quick run
    python benchmarks/bench_metrics.py --threads 1 --repeat 2  # on a shared, busy machine

Times are wall clock and process CPU time of the timed call only (data generation and
``update()`` excluded), best of ``--repeat`` fresh runs per side, sides alternating. CPU time is
the steadier number when other jobs compete for the cores.

Each side runs in its own fresh subprocess (same seed -> same data), one after the other, so
neither sees the other's memory or warm caches. Memory: torch allocates outside Python's
allocator, so tracemalloc cannot see it; instead the subprocess resets the kernel's peak-RSS
counter (``echo 5 > /proc/self/clear_refs``, Linux >= 4.0) right before the timed call and reads
``VmHWM`` afterwards. "peak extra" = VmHWM - VmRSS just before the call: memory the call itself
needed on top of the data, Python and torch already resident. If clear_refs is not available the
fallback is ``resource.getrusage`` max-RSS, whose delta can only under-estimate.

AccuracyCalculator's default k-NN is faiss (``FaissKNN``; without faiss, ``AccuracyCalculator()``
fails with ``NameError: name 'faiss' is not defined``; there is no automatic fallback), so it is given
pml's own torch k-NN, ``CustomKNN(CosineSimilarity(), batch_size=chunk_size)``. Without a batch
size CustomKNN builds the dense N x N matrix (14.6 GB at full size). ``k="max_bin_count"`` is
the k pml recommends for MAP@R (``k=None`` would return N x N neighbour indices).
"""

import argparse
import json
import os
import subprocess
import sys
import time

import torch

from _memory import PeakMemory  # the benchmarks' one peak-memory meter (benchmarks/_memory.py)

SOP_N, SOP_CLASSES = 60_502, 11_316


def make_data(n: int, num_classes: int, dim: int, noise: float, seed: int):
    """Embeddings (n, dim) float32 and labels (n,): class sizes in 2..12 summing to n."""
    g = torch.Generator().manual_seed(seed)
    if not 2 * num_classes <= n <= 12 * num_classes:
        raise ValueError(f"{n} samples cannot fill {num_classes} classes of size 2..12")
    # 2 + Binomial(10, p) has range 2..12 and mean n / num_classes; then fix the total exactly.
    p = (n / num_classes - 2) / 10
    sizes = 2 + torch.binomial(torch.full((num_classes,), 10.0), torch.full((num_classes,), p), generator=g).long()
    while (diff := n - int(sizes.sum())) != 0:
        step = 1 if diff > 0 else -1
        movable = torch.nonzero((sizes < 12) if step > 0 else (sizes > 2)).squeeze(1)
        pick = movable[torch.randperm(len(movable), generator=g)[: abs(diff)]]
        sizes[pick] += step
    labels = torch.repeat_interleave(torch.arange(num_classes), sizes)
    labels = labels[torch.randperm(n, generator=g)]
    centres = torch.randn(num_classes, dim, generator=g)
    emb = centres[labels] + noise * torch.randn(n, dim, generator=g)
    return emb, labels


def _measure(fn):
    """Run fn(); return (result, wall seconds, CPU seconds, peak extra bytes, method, process peak bytes or None)."""
    with PeakMemory(sample_anon=False) as memory:  # no sampler thread beside the timed call
        start, cpu_start = time.perf_counter(), time.process_time()
        result = fn()
        seconds, cpu = time.perf_counter() - start, time.process_time() - cpu_start
    return result, seconds, cpu, memory.peak_rss_bytes, memory.method, memory.process_peak_bytes


def worker(args) -> dict:
    if args.threads:
        torch.set_num_threads(args.threads)
    emb, labels = make_data(args.num_embeddings, args.num_classes, args.dim, args.noise, args.seed)
    if args.worker == "ours":
        from timm_gsp.metrics.retrieval import RetrievalMetrics

        metric = RetrievalMetrics(k_values=(1, 2, 4, 8), distance="cosine", chunk_size=args.chunk_size)
        for s in range(0, len(labels), 256):  # like an eval loop
            metric.update(emb[s : s + 256], labels[s : s + 256])
        values, seconds, cpu, peak, method, process_peak = _measure(metric.compute)
    else:
        from pytorch_metric_learning.distances import CosineSimilarity
        from pytorch_metric_learning.utils.accuracy_calculator import AccuracyCalculator
        from pytorch_metric_learning.utils.inference import CustomKNN

        calc = AccuracyCalculator(
            include=("precision_at_1", "r_precision", "mean_average_precision_at_r"),
            k="max_bin_count",
            knn_func=CustomKNN(CosineSimilarity(), batch_size=args.chunk_size),
            device=torch.device("cpu"),
        )
        values, seconds, cpu, peak, method, process_peak = _measure(lambda: calc.get_accuracy(emb, labels))
        values["map_at_r"] = values.pop("mean_average_precision_at_r")
    return {"values": values, "seconds": seconds, "cpu_seconds": cpu, "peak_extra_bytes": peak, "method": method,
            "final_rss_bytes": process_peak,
            "threads": torch.get_num_threads()}


def run_side(side: str, args) -> dict:
    cmd = [sys.executable, os.path.abspath(__file__), "--worker", side]
    for name in ("num_embeddings", "num_classes", "dim", "noise", "seed", "chunk_size", "threads"):
        cmd += [f"--{name.replace('_', '-')}", str(getattr(args, name))]
    env = dict(os.environ)
    repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env["PYTHONPATH"] = repo + os.pathsep + env.get("PYTHONPATH", "")  # import timm_gsp from this checkout
    out = subprocess.run(cmd, check=True, capture_output=True, text=True, env=env).stdout
    return json.loads(out.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--num-embeddings", type=int, default=SOP_N)
    parser.add_argument("--num-classes", type=int, default=None, help="default: scaled like SOP (11,316 at 60,502)")
    parser.add_argument("--dim", type=int, default=512)
    parser.add_argument("--noise", type=float, default=2.5, help="per-dim noise std around unit-std class centres")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--chunk-size", type=int, default=1024, help="ours: chunk_size; pml: CustomKNN batch_size")
    parser.add_argument("--threads", type=int, default=0, help="torch threads in both workers (0: torch default). "
                        "On a shared, oversubscribed machine use 1: with more threads than free cores every "
                        "parallel op waits for a descheduled thread, which swamps the timings.")
    parser.add_argument("--repeat", type=int, default=1, help="fresh runs per side (alternating); best is reported")
    parser.add_argument("--skip-pml", action="store_true")
    parser.add_argument("--worker", choices=["ours", "pml"], help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.num_classes is None:
        args.num_classes = max(1, round(args.num_embeddings * SOP_CLASSES / SOP_N))

    if args.worker:
        print(json.dumps(worker(args)))
        return

    threads = args.threads or torch.get_num_threads()
    print(f"{args.num_embeddings} embeddings, dim {args.dim}, {args.num_classes} classes, same-set, "
          f"cosine, chunk {args.chunk_size}, torch {torch.__version__}, {threads} thread(s), {os.cpu_count()} CPUs")
    sides = [("ours", "RetrievalMetrics.compute")]
    if not args.skip_pml:
        sides.append(("pml", "AccuracyCalculator.get_accuracy"))
    runs = {side: [] for side, _ in sides}
    for rep in range(args.repeat):  # alternate the sides so slow phases of a shared machine hit both
        for side, name in sides:
            print(f"[{rep + 1}/{args.repeat}] {name} ...", flush=True)
            r = run_side(side, args)
            runs[side].append(r)
            rss = r["final_rss_bytes"]
            process_peak = "" if rss is None else f"process peak {rss / 2**30:.3f} GiB; "
            print(f"  {r['seconds']:8.2f} s wall, {r['cpu_seconds']:8.2f} s CPU, peak extra memory "
                  f"{r['peak_extra_bytes'] / 2**30:.3f} GiB ({process_peak}{r['method']})")
            print("  " + ", ".join(f"{k}={v:.6f}" for k, v in r["values"].items()), flush=True)

    # Times: best of the repeats (on a busy machine the least disturbed one); memory: the worst.
    best = {side: {"seconds": min(r["seconds"] for r in rs), "cpu_seconds": min(r["cpu_seconds"] for r in rs),
                   "peak_extra_bytes": max(r["peak_extra_bytes"] for r in rs)} for side, rs in runs.items()}
    ours = best["ours"]
    print(f"\nRetrievalMetrics.compute:        {ours['seconds']:8.2f} s wall, {ours['cpu_seconds']:8.2f} s CPU, "
          f"peak extra memory {ours['peak_extra_bytes'] / 2**30:.3f} GiB "
          f"(target < 2 GiB: {'OK' if ours['peak_extra_bytes'] < 2**31 else 'MISSED'})")
    if "pml" in best:
        pml = best["pml"]
        print(f"AccuracyCalculator.get_accuracy: {pml['seconds']:8.2f} s wall, {pml['cpu_seconds']:8.2f} s CPU, "
              f"peak extra memory {pml['peak_extra_bytes'] / 2**30:.3f} GiB")
        for what, key in (("wall", "seconds"), ("CPU", "cpu_seconds")):
            ratio = pml[key] / ours[key]
            verdict = "OK" if ratio >= 2 else "MISSED"
            print(f"speed ratio pml/ours ({what} time): {ratio:.2f}x (target >= 2x: {verdict})")
        ours_values, pml_values = runs["ours"][0]["values"], runs["pml"][0]["values"]
        diffs = {k: abs(ours_values[k] - v) for k, v in pml_values.items()}
        print("value |ours - pml|: " + ", ".join(f"{k}={d:.2e}" for k, d in diffs.items()))
        tol = 1e-6
        worst = max(diffs.values())
        print(f"values agree to {tol:g}: {'yes' if worst <= tol else f'NO (max diff {worst:.2e})'}")

if __name__ == "__main__":
    main()
