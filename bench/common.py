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


def start_worker(args: list[str], env: dict, log_path: str, hostname: str, timeout: float = 900):
    """Start a real worker process and wait until it answers a ping."""
    import os
    import subprocess
    import time

    from worker.app import make_app
    from worker.settings import load_settings

    full_env = {**os.environ, **env}
    proc = subprocess.Popen([*args, "--hostname", hostname], env=full_env, stdout=open(log_path, "w"),
                            stderr=subprocess.STDOUT, start_new_session=True)
    app = make_app(load_settings(**{k[6:].lower(): v for k, v in env.items() if k.startswith("MOODQ_")}))
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"worker exited early; see {log_path}")
        if app.control.ping(destination=[hostname.replace("%h", os.uname().nodename)], timeout=1.0):
            return proc
    raise RuntimeError(f"worker did not answer in {timeout} s; see {log_path}")


def stop_worker(proc) -> None:
    import os
    import signal
    import subprocess

    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(60)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)


def worker_rss_mb(proc) -> dict[int, float]:
    """Peak RSS of a worker's process tree (pid -> MB)."""
    from worker.procinfo import tree_peak_rss_mb

    return tree_peak_rss_mb(proc.pid)
