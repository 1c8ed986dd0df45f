"""Helpers shared by the bench scripts: the CPU-class header, timing stats and peak memory."""

from __future__ import annotations

import os
import resource
import statistics
import time
from pathlib import Path

# The dev sets sit beside the checkout (../shared/data); MOODQ_DEV_DATA points elsewhere.
DEV = Path(os.environ.get("MOODQ_DEV_DATA", Path(__file__).resolve().parents[2] / "shared" / "data"))


def header() -> str:
    """The first lines of every bench script: no figure is read without its hardware and the kernel
    probe's table for it (the kernels each phase runs here, and why)."""
    from worker.common.settings import load_settings
    from worker.engine import cpu
    from worker.engine.loading import measured_plan
    from worker.engine.probetable import table_text

    return f"{cpu.describe()}\n{table_text(measured_plan(load_settings()))}"


def best_of(fn, repeat: int = 5) -> float:
    """Seconds of the fastest of ``repeat`` calls, after one warm-up call."""
    fn()
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return min(times)


def peak_rss_mb() -> float:
    """Peak resident memory of this process (Linux reports KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def percentiles(latencies_s: list[float]) -> tuple[float, float]:
    """p50 and p95 in milliseconds."""
    if len(latencies_s) < 2:
        one = latencies_s[0] * 1000 if latencies_s else 0.0
        return one, one
    cuts = statistics.quantiles(latencies_s, n=100, method="inclusive")
    return cuts[49] * 1000, cuts[94] * 1000


def worker_rss_mb(proc) -> dict[int, float]:
    """Peak RSS of a worker's process tree (pid -> MB)."""
    from worker.common.procinfo import tree_peak_rss_mb

    return tree_peak_rss_mb(proc.pid)
