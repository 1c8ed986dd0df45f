"""Cold vs warm start of a real worker (`moodq worker -c N`), from launch to ready for tasks.

Cold: an empty cache dir (assemble the GGUF from its parts, verify, de-quantise, save the
converted weights). Warm: the same cache dir again. "Ready" is the later of the worker's
own "ready." line (consumer up) and every pool process's "model … ready" line; the log is
polled every 20 ms. Peak RSS (VmHWM) per process is read at ready.
Usage:  python bench/startup.py [--keep-cache DIR] [--concurrency N] [--warm-runs K]
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # `python bench/startup.py` from a checkout finds worker and bench, as the other scripts

from worker.common.procinfo import tree_peak_rss_mb  # noqa: E402
from worker.jobs import launch  # noqa: E402


def start(cache: str, concurrency: int, log: Path) -> tuple[float, list[float], float]:
    """Seconds to ready, peak RSS per process (GB), and seconds the worker then takes to stop (SIGQUIT:
    nothing is running, the way `moodq demo` stops it)."""
    env = {**os.environ, "MOODQ_CACHE_DIR": cache, "HF_HUB_OFFLINE": "1",
           "MOODQ_QUEUE": f"bench-startup-{os.getpid()}"}
    t0 = time.perf_counter()
    with log.open("w") as out:
        proc = subprocess.Popen([sys.executable, "-m", "worker", "worker", "-c", str(concurrency),
                                 "--hostname", f"startup-{os.getpid()}@%h"],
                                cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        while True:
            text = log.read_text(errors="replace")
            if " ready." in text and text.count("ready in") >= concurrency:
                ready = time.perf_counter() - t0
                rss = sorted((mb / 1024 for mb in tree_peak_rss_mb(proc.pid).values()), reverse=True)
                break
            if proc.poll() is not None:
                raise RuntimeError(f"worker exited:\n{text[-2000:]}")
            time.sleep(0.02)
    except BaseException:
        launch.stop(proc)
        raise
    t0 = time.perf_counter()
    launch.stop_idle(proc)
    return ready, rss, time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--keep-cache", default=None, help="Use (and keep) this cache dir instead of a temp one.")
    ap.add_argument("--concurrency", type=int, default=1)
    ap.add_argument("--warm-runs", type=int, default=3)
    args = ap.parse_args()
    from bench.common import header

    print(header())
    cache = args.keep_cache or tempfile.mkdtemp(prefix="moodq-cache-")
    log = Path(tempfile.mkdtemp(prefix="moodq-startup-")) / "worker.log"
    first = "first start" + ("" if args.keep_cache else " (cold: empty cache)")
    try:
        for name in [first] + ["warm start"] * args.warm_runs:
            seconds, rss, stop = start(cache, args.concurrency, log)
            print(f"{name:<30} -c {args.concurrency}: {seconds:5.1f} s to ready, {stop:4.1f} s to stop   "
                  "peak RSS per process (GB): " + ", ".join(f"{r:.2f}" for r in rss), flush=True)
    finally:
        if not args.keep_cache:
            subprocess.run(["rm", "-rf", cache], check=False)


if __name__ == "__main__":
    main()
