"""The benchmarks' one peak-memory meter: how much memory a block of code needed on top of what was
already resident (data, Python, torch), read from Linux's ``/proc/self``.

torch and faiss allocate outside Python's allocator, so tracemalloc cannot see them. Instead the meter
resets the kernel's peak-RSS counter (``echo 5 > /proc/self/clear_refs``, Linux >= 4.0) when the block
starts and reads ``VmHWM`` when it ends; where that is not available it falls back on the growth of
``resource.getrusage`` max-RSS, which can only under-estimate (``method`` says which was used).

    with PeakMemory() as memory:
        run()
    memory.peak_rss_bytes, memory.peak_anon_bytes, memory.method

Used by ``bench_metrics.py``, ``bench_search.py`` (and through it ``bench_retrieval_examples.py``).
"""
from __future__ import annotations

import resource
import threading
import time
from typing import Optional

__all__ = ["PeakMemory", "status_kb"]


def status_kb(field: str) -> int:
    """A ``kB`` field of ``/proc/self/status`` (``VmRSS``, ``VmHWM``, ``RssAnon``, ...)."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise KeyError(field)


class PeakMemory:
    """Peak memory inside a ``with`` block, on top of what was resident when it began.

    After the block:

    * ``peak_rss_bytes``: ``VmHWM`` (reset at the start) minus ``VmRSS`` before: every page the block
      made resident, file-backed ones (a memory-mapped index it read) included. Fallback: the growth of
      ``ru_maxrss``, a lower bound.
    * ``peak_anon_bytes``: the largest growth of ``RssAnon`` (memory the block allocated itself),
      sampled every ``interval`` seconds from a thread (torch and faiss release the GIL in their
      kernels); None with ``sample_anon=False`` or without ``/proc``.
    * ``process_peak_bytes``: ``VmHWM`` at the end, the whole process's peak since the reset (None in
      the fallback).
    * ``method``: ``"VmHWM after clear_refs"`` or ``"ru_maxrss delta (lower bound)"``.
    """

    def __init__(self, sample_anon: bool = True, interval: float = 0.005):
        self.sample_anon, self.interval = sample_anon, interval
        self.peak_rss_bytes = 0
        self.peak_anon_bytes: Optional[int] = None
        self.process_peak_bytes: Optional[int] = None

    def __enter__(self) -> "PeakMemory":
        try:
            self.rss = status_kb("VmRSS")
            with open("/proc/self/clear_refs", "w") as f:
                f.write("5")  # VmHWM := current RSS
            self.method = "VmHWM after clear_refs"
        except (OSError, KeyError):
            self.rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
            self.method = "ru_maxrss delta (lower bound)"
        self.sampler = None
        if self.sample_anon and self.method.startswith("VmHWM"):
            self.anon = self.peak_anon = status_kb("RssAnon")
            self.running = True
            self.sampler = threading.Thread(target=self._sample, daemon=True)
            self.sampler.start()
        return self

    def _sample(self) -> None:
        while self.running:
            self.peak_anon = max(self.peak_anon, status_kb("RssAnon"))
            time.sleep(self.interval)

    def __exit__(self, *exc) -> None:
        if self.sampler is not None:
            self.running = False
            self.sampler.join()
            self.peak_anon = max(self.peak_anon, status_kb("RssAnon"))
            self.peak_anon_bytes = (self.peak_anon - self.anon) * 1024
        if self.method.startswith("VmHWM"):
            self.process_peak_bytes = status_kb("VmHWM") * 1024
            self.peak_rss_bytes = max(self.process_peak_bytes - self.rss * 1024, 0)
        else:
            self.peak_rss_bytes = max(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - self.rss, 0) * 1024
