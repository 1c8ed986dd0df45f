"""Soak: N messages through real worker processes, then check that none was lost or doubled.

Usage (the issue's run: 10,000 messages, 2 worker processes, replies off):
  python bench/soak.py --n 10000 --concurrency 2 --replies none

Checks, from Redis after the run: exactly N records, each id in exactly one status set
(0 duplicates), 0 lost, final counts by status; reports throughput and peak memory.
Uses its own key prefix and queue in the configured Redis and removes them afterwards.
tests/test_resilience.py runs a few hundred messages through the same function.
"""

from __future__ import annotations

import argparse
import itertools
import os
import sys
import time
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

SAMPLES = [  # used when no data file is given or found
    "今天的实验终于成功了，太棒了！", "我感觉很累，工作压力太大了。", "这个天气真让人烦躁。",
    "快递很快，包装完好，满意。", "客服态度很差，等了一个小时没人理。",
    "The update fixed everything, thank you!", "My order arrived broken and nobody answers.",
    "Great support, solved in five minutes.", "Still waiting for my refund after three weeks.",
]


def corpus(n: int, data: list[Path]) -> list[str]:
    from worker.quality.evaluate import read_labeled

    texts = [row["text"] for path in data if path.exists() for row in read_labeled(path)] or SAMPLES
    return [f"{text} #{i}" for i, text in zip(range(n), itertools.cycle(texts))]


def verify(store, ids: list[str]) -> dict:
    """Exactly one final record per id? Counts every way a message could be lost or doubled."""
    from worker.common.store import STATUSES

    records = {r.id: r for r in store.iter_records(ids)}
    pipe = store.r.pipeline(transaction=False)
    for status in STATUSES:
        pipe.smismember(store.k.status(status), ids)
    member = pipe.execute()
    in_sets = [sum(col[i] for col in member) for i in range(len(ids))]
    indexed = store.r.zcard(store.k.index)
    return {
        "messages": len(ids),
        "records": len(records),
        "lost": len(ids) - len(records),
        "duplicates": sum(n > 1 for n in in_sets) + max(0, indexed - len(ids)),
        "not_final": sum(r.status not in ("done", "review", "failed") for r in records.values()),
        "status": {s: sum(r.status == s for r in records.values()) for s in STATUSES},
        "bad_labels": sum(r.status in ("done", "review") and r.label not in (r.probs or {}) for r in records.values()),
    }


def run_soak(settings, texts: list[str], concurrency: int, worker_env: dict, log_path: Path,
             timeout: float = 7200) -> dict:
    """Start a worker with ``concurrency`` processes, push ``texts`` through it, verify, clean up."""
    from producer.enqueue import enqueue
    from producer.progress import wait_for
    from worker.common.procinfo import tree_peak_rss_mb
    from worker.common.schemas import Message
    from worker.common.store import Store
    from worker.jobs import broker as task_queue
    from worker.jobs.app import make_app
    from worker.jobs.launch import start, stop

    store, app = Store(settings), make_app(settings)
    env = {**worker_env, "MOODQ_KEY_PREFIX": settings.key_prefix, "MOODQ_QUEUE": settings.queue}
    msgs = [Message(id=f"soak-{i}", text=t) for i, t in enumerate(texts)]
    ids = [m.id for m in msgs]
    proc = start([sys.executable, "-m", "worker", "worker", "-c", str(concurrency), "-l", "WARNING"],
                 env, log_path, f"soak-{settings.queue}@%h", timeout=900, ready_text=None)
    try:
        t0 = time.perf_counter()
        res = enqueue(msgs, settings, app)
        enqueue_s = time.perf_counter() - t0
        wait_for(store, ids, timeout=timeout)
        wall = time.perf_counter() - t0
        rss = tree_peak_rss_mb(proc.pid)
        report = verify(store, ids)
    finally:
        stop(proc)
        store.delete_all()
        task_queue.remove(app, settings.queue)
    report.update(accepted=len(res.accepted), enqueue_s=round(enqueue_s, 2), wall_s=round(wall, 1),
                  msg_per_s=round(len(ids) / wall, 2), peak_rss_mb={p: round(m) for p, m in rss.items()})
    return report


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=10_000)
    ap.add_argument("--concurrency", type=int, default=2, help="worker processes (each holds one model)")
    ap.add_argument("--replies", default="none", help="labels that get a reply: none, all, negative, ...")
    ap.add_argument("--reply-tokens", type=int, default=32)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--data", nargs="*", type=Path,
                    default=[ROOT.parent / "shared/data/en_dev.jsonl", ROOT.parent / "shared/data/zh_dev.jsonl"])
    args = ap.parse_args()
    from bench.common import header

    print(header())
    run = uuid.uuid4().hex[:8]
    os.environ.update({"MOODQ_KEY_PREFIX": f"soak-{run}", "MOODQ_QUEUE": f"soak-{run}"})

    from worker.common.settings import get_settings

    env = {"MOODQ_REPLY_LABELS": args.replies, "MOODQ_MAX_REPLY_TOKENS": str(args.reply_tokens),
           "MOODQ_SENTIMENT_BATCH_SIZE": str(args.batch), "MOODQ_REPLY_BATCH_SIZE": str(min(args.batch, 8))}
    report = run_soak(get_settings(), corpus(args.n, args.data), args.concurrency, env, Path(f"/tmp/soak-{run}.log"))
    print(f"{args.n} messages, {args.concurrency} worker processes, batch {args.batch}, replies for '{args.replies}'")
    for key, value in report.items():
        print(f"  {key}: {value}")
    ok = report["records"] == args.n and report["lost"] == 0 and report["duplicates"] == 0 and not report["not_final"]
    print("OK: every message has exactly one final record" if ok else "FAILED: see the counts above")
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
