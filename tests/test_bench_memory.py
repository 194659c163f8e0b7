"""The benchmarks have one peak-memory meter (benchmarks/_memory.py): it sees memory torch allocates, and
no benchmark script reads /proc/self for memory on its own."""
from __future__ import annotations

import ast
import os
import subprocess
import sys

import pytest
import torch

from conftest import REPO, subprocess_env

BENCHMARKS = REPO / "benchmarks"
sys.path.insert(0, str(BENCHMARKS))
from _memory import PeakMemory  # noqa: E402


def _can_reset_peak() -> bool:
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


@pytest.mark.skipif(not _can_reset_peak(), reason="needs Linux's /proc/self/clear_refs")
def test_the_meter_sees_a_torch_allocation_and_not_what_was_there_before():
    resident = torch.ones(8_000_000)  # 32 MB already there: not the block's
    with PeakMemory() as memory:
        block = torch.ones(16_000_000)  # 64 MB, allocated by torch outside Python's allocator
        block += 1
    assert memory.method == "VmHWM after clear_refs"
    assert 48e6 <= memory.peak_rss_bytes < 64e6 + 32e6
    assert 48e6 <= memory.peak_anon_bytes < 64e6 + 32e6
    assert memory.process_peak_bytes >= memory.peak_rss_bytes
    with PeakMemory(sample_anon=False) as quiet:
        pass
    assert quiet.peak_anon_bytes is None and quiet.peak_rss_bytes < 16e6
    del resident, block


def _own_meters(path):
    """Calls in ``path`` that open a /proc/self file (the meter's job), and functions or classes named like one."""
    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id == "open" and node.args:
            arg = node.args[0]
            if isinstance(arg, ast.Constant) and isinstance(arg.value, str) and arg.value.startswith("/proc/self"):
                found.append(f"{path.name}:{node.lineno} open({arg.value!r})")
        if isinstance(node, (ast.FunctionDef, ast.ClassDef)) and node.name in ("PeakMemory", "_rss_kb", "_status_kb", "status_kb"):
            found.append(f"{path.name}:{node.lineno} {node.name}")
    return found


def test_one_meter_in_the_benchmarks():
    scripts = sorted(p for p in BENCHMARKS.glob("*.py") if p.name != "_memory.py")
    assert {"bench_metrics.py", "bench_search.py"} <= {p.name for p in scripts}
    own = [hit for path in scripts for hit in _own_meters(path)]
    assert not own, f"benchmarks/_memory.py is the one peak-memory meter; found others: {own}"
    assert _own_meters(BENCHMARKS / "_memory.py")  # the check sees a meter where there is one
    for name in ("bench_metrics.py", "bench_search.py"):
        assert "from _memory import PeakMemory" in (BENCHMARKS / name).read_text()


@pytest.mark.slow
def test_both_benchmarks_run_at_a_tiny_size(tmp_path):
    env = subprocess_env()
    metrics = subprocess.run([sys.executable, str(BENCHMARKS / "bench_metrics.py"), "--num-embeddings", "600", "--dim", "16",
                              "--threads", "1", "--skip-pml"], env=env, capture_output=True, text=True, timeout=300)
    assert metrics.returncode == 0, metrics.stderr
    assert "RetrievalMetrics.compute:" in metrics.stdout and "peak extra memory" in metrics.stdout
    pytest.importorskip("faiss")
    search = subprocess.run([sys.executable, str(BENCHMARKS / "bench_search.py"), "--num-items", "3000", "--num-queries", "20",
                             "--dim", "16", "--threads", "1", "--methods", "exact", "faiss-flat",
                             "--cache-dir", str(tmp_path)], env=env, capture_output=True, text=True, timeout=300)
    assert search.returncode == 0, search.stderr
    assert "| timm_gsp exact (chunked) |" in search.stdout and "20/20" in search.stdout
    assert os.listdir(tmp_path)
