"""Cold vs warm start of a worker process's model, in fresh processes.

Cold: an empty cache dir (assemble the GGUF from its parts, verify, de-quantise, save the
converted weights). Warm: the same cache dir again. Each start is a new Python process that
imports torch/transformers, loads the model and builds the prompt caches; the time printed
is from process start to "ready". Usage:  python bench/startup.py [--keep-cache DIR]
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

ROOT = Path(__file__).resolve().parent.parent
PROBE = """
import json, os, resource, time
t0 = time.perf_counter()
from worker.resident import engine
from worker.settings import load_settings
e = engine(load_settings())
print(json.dumps({"import_and_load_s": time.perf_counter() - t0,
                  "rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))
"""


def start(cache: str) -> dict:
    env = {**os.environ, "MOODQ_CACHE_DIR": cache, "HF_HUB_OFFLINE": "1", "MOODQ_THREADS": "2"}
    t0 = time.perf_counter()
    out = subprocess.run([sys.executable, "-c", PROBE], env=env, cwd=ROOT, capture_output=True, text=True, check=True)
    result = json.loads(out.stdout.strip().splitlines()[-1])
    result["process_s"] = time.perf_counter() - t0
    return result


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--keep-cache", default=None, help="Use (and keep) this cache dir instead of a temp one.")
    args = ap.parse_args()
    cache = args.keep_cache or tempfile.mkdtemp(prefix="moodq-cache-")
    for name in ("cold (first) start", "warm start", "warm start again"):
        r = start(cache)
        print(f"{name:<20} {r['process_s']:6.1f} s to ready  (peak RSS {r['rss_mb']:.0f} MB)")
    if not args.keep_cache:
        subprocess.run(["rm", "-rf", cache], check=False)


if __name__ == "__main__":
    main()
