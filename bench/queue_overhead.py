"""What the queue costs: enqueue -> stored final record for N messages, model replaced by a
trivial scorer (bench/trivial_worker.py), one worker process. Usage:
  python bench/queue_overhead.py --n 2000
"""

from __future__ import annotations

import argparse
import os
import sys
import time
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=2000)
    ap.add_argument("--batch", type=int, default=8, help="MOODQ_SENTIMENT_BATCH_SIZE / MOODQ_REPLY_BATCH_SIZE of the worker")
    args = ap.parse_args()
    from bench.common import header

    print(header())
    run = uuid.uuid4().hex[:8]
    env = {"MOODQ_KEY_PREFIX": f"bench-{run}", "MOODQ_QUEUE": f"bench-{run}",
           "MOODQ_SENTIMENT_BATCH_SIZE": str(args.batch), "MOODQ_REPLY_BATCH_SIZE": str(args.batch)}
    os.environ.update(env)

    from producer.enqueue import enqueue
    from producer.progress import wait_for
    from worker.common.schemas import Message
    from worker.common.settings import get_settings
    from worker.common.store import Store
    from worker.jobs.app import make_app
    from worker.jobs.launch import start as start_worker
    from worker.jobs.launch import stop as stop_worker

    s = get_settings()
    store, app = Store(s), make_app(s)
    proc = start_worker([sys.executable, "-m", "celery", "-A", "bench.trivial_worker", "worker", "-Q", s.queue,
                         "-c", "1", "-P", "prefork", "-l", "WARNING"], env, f"/tmp/bench-queue-{run}.log",
                        f"bench-{run}@%h")
    try:
        msgs = [Message(id=f"q-{i}", text=f"message number {i}") for i in range(args.n)]
        t0 = time.perf_counter()
        enqueue(msgs, s, app)
        t_enq = time.perf_counter() - t0
        records = wait_for(store, [m.id for m in msgs], timeout=3600)
        wall = time.perf_counter() - t0
    finally:
        stop_worker(proc)
        store.delete_all()
        store.r.delete(s.queue)
    done = sum(r.status == "done" for r in records)
    print(f"{args.n} messages, trivial scorer, 1 worker process, batch {args.batch}")
    print(f"enqueue: {t_enq:.2f} s ({args.n / t_enq:.0f} msg/s, {t_enq / args.n * 1000:.2f} ms/msg)")
    print(f"enqueue -> all records final: {wall:.2f} s; done {done}/{args.n}")
    print(f"queue overhead per message (2 tasks + record writes): {wall / args.n * 1000:.2f} ms")


if __name__ == "__main__":
    main()
