"""A bulk run end to end: N messages through real workers (sentiment + reply) on the configured model.

Usage:
  python bench/bulk.py --n 200 --concurrency 1 --reply-tokens 48 [--data ../shared/data/zh_dev.jsonl]
  python bench/bulk.py --n 256 --reply-labels none --batch 8 --claim 8   # sentiment only, the old claim
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=200)
    ap.add_argument("--concurrency", type=int, default=1)
    ap.add_argument("--reply-tokens", type=int, default=48)
    ap.add_argument("--reply-labels", default="all")
    ap.add_argument("--batch", type=int, default=16, help="MOODQ_SENTIMENT_BATCH_SIZE (messages per forward pass)")
    ap.add_argument("--claim", type=int, default=64, help="MOODQ_CLAIM_SIZE (messages one sentiment task takes on)")
    ap.add_argument("--reply-batch", type=int, default=8, help="MOODQ_REPLY_BATCH_SIZE")
    ap.add_argument("--data", default=str(ROOT.parent / "shared/data/zh_dev.jsonl"))
    args = ap.parse_args()
    from bench.common import header

    print(header())
    run = uuid.uuid4().hex[:8]
    env = {"MOODQ_KEY_PREFIX": f"bulk-{run}", "MOODQ_QUEUE": f"bulk-{run}",
           "MOODQ_MAX_REPLY_TOKENS": str(args.reply_tokens), "MOODQ_REPLY_LABELS": args.reply_labels,
           "MOODQ_SENTIMENT_BATCH_SIZE": str(args.batch), "MOODQ_CLAIM_SIZE": str(args.claim),
           "MOODQ_REPLY_BATCH_SIZE": str(args.reply_batch)}
    os.environ.update(env)

    from bench.common import worker_rss_mb
    from producer.enqueue import enqueue
    from producer.progress import wait_for
    from worker.common.schemas import Message
    from worker.common.settings import get_settings
    from worker.common.store import Store
    from worker.jobs import broker as task_queue
    from worker.jobs.app import make_app
    from worker.jobs.launch import start as start_worker
    from worker.jobs.launch import stop as stop_worker
    from worker.quality.evaluate import read_labeled

    s = get_settings()
    store, app = Store(s), make_app(s)
    rows = read_labeled(Path(args.data))
    msgs = [Message(id=f"b-{i}", text=rows[i % len(rows)]["text"][: s.max_chars]) for i in range(args.n)]
    t_start = time.perf_counter()
    proc = start_worker([sys.executable, "-m", "worker", "worker", "-c", str(args.concurrency), "-l", "WARNING"],
                        env, f"/tmp/bench-bulk-{run}.log", f"bulk-{run}@%h")
    try:
        enqueue([Message(id="warmup", text="warm up")], s, app)
        wait_for(store, ["warmup"], timeout=900)
        ready = time.perf_counter() - t_start
        t0 = time.perf_counter()
        enqueue(msgs, s, app)
        records = wait_for(store, [m.id for m in msgs], timeout=7200)
        wall = time.perf_counter() - t0
        rss = worker_rss_mb(proc)
    finally:
        stop_worker(proc)
        store.delete_all()
        task_queue.remove(app, s.queue)
    status = {k: sum(r.status == k for r in records) for k in ("done", "failed", "pending", "labeled")}
    replies = [r for r in records if r.reply]
    print(f"{args.n} messages from {Path(args.data).name}; {args.concurrency} worker process(es); "
          f"batch {args.batch}, claim {args.claim}, reply batch {args.reply_batch}; replies up to {args.reply_tokens} tokens for labels '{args.reply_labels}'")
    print(f"worker start to first record done (incl. model load): {ready:.1f} s")
    print(f"wall {wall:.1f} s  ->  {args.n / wall:.2f} messages/s end to end; status {status}")
    if records:
        print(f"mean sentiment pass {statistics.mean(r.timings.sentiment_ms or 0 for r in records):.0f} ms "
              f"(batch sizes {sorted({r.timings.sentiment_batch for r in records if r.timings.sentiment_batch})}); "
              f"mean reply call {statistics.mean(r.timings.reply_ms or 0 for r in records):.0f} ms "
              f"(batch sizes {sorted({r.timings.reply_batch for r in records if r.timings.reply_batch})}); "
              f"{len(replies)} replies")
    print("peak RSS per process (MB): " + ", ".join(f"pid {p}: {m:.0f}" for p, m in sorted(rss.items())))


if __name__ == "__main__":
    main()
