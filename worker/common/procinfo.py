"""Peak memory of a process tree, from /proc (Linux), for the demo and the bench scripts."""

from __future__ import annotations

import os


def children(pid: int) -> list[int]:
    out = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as f:
                    if int(f.read().rsplit(")", 1)[1].split()[1]) == pid:
                        out.append(int(entry))
            except (OSError, IndexError, ValueError):
                continue
    return out


def peak_rss_mb(pid: int) -> float | None:
    """VmHWM (peak resident set) of one process in MB, or None if it is gone."""
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        return None
    return None


def tree_peak_rss_mb(pid: int) -> dict[int, float]:
    """Peak RSS of a process and its direct children (a Celery worker and its pool processes)."""
    found = {p: peak_rss_mb(p) for p in [pid, *children(pid)]}
    return {p: mb for p, mb in found.items() if mb is not None}
