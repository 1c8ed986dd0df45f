"""Helpers shared by the bench scripts: timing stats and peak memory."""

from __future__ import annotations

import resource
import statistics


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
    from worker.procinfo import tree_peak_rss_mb

    return tree_peak_rss_mb(proc.pid)
