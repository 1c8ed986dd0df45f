"""Chaos run: messages through 2 worker processes while things break, then count what was lost.

Usage (the issue's run; takes long on 2 cores):
  python bench/chaos.py --n 2000
A shorter run:
  python bench/chaos.py --n 400 --kill-every 20 40

What breaks, on a redis-server of its own (AOF on, a free port, removed at the end):
  - every 20-40 s a random worker gets SIGKILL: its main process (the whole worker dies; Redis
    redelivers after MOODQ_VISIBILITY_TIMEOUT) or its pool process (Celery retries), chosen at
    random; a supervisor-like loop starts it again;
  - once, Redis is restarted (SIGTERM, AOF reloaded);
  - once, the producer is killed mid-enqueue and run again (the sweep heals what it wrote but
    never published; the re-run reports the rest as already known);
  - every 10-20 s a message whose reply is being drafted (status labeled) is replaced with a new text
    (`enqueue --replace`): its record must end with the new text, labeled after the replacement, with
    no reply drafted for the old text stored on it.
Replies are drafted for negative messages only (MOODQ_REPLY_LABELS=negative).

At the end it prints: enqueued, done, failed (with reasons), lost (an id with no record),
duplicate finals (an id in more than one status set), stuck (not final when the run stops) and
the longest time a message waited (enqueued -> final). Target: 0 lost, 0 duplicate finals, 0 stuck.
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import random
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.common import DEV, header  # noqa: E402
from bench.soak import corpus, verify  # noqa: E402


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class OwnRedis:
    def __init__(self, workdir: Path):
        self.dir, self.port = workdir, free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.proc: subprocess.Popen | None = None

    def start(self) -> None:
        import redis

        self.proc = subprocess.Popen(["redis-server", "--port", str(self.port), "--bind", "127.0.0.1",
                                      "--dir", str(self.dir), "--appendonly", "yes", "--save", ""],
                                     stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
        for _ in range(100):
            try:
                redis.Redis.from_url(self.url).ping()
                return
            except redis.ConnectionError:
                time.sleep(0.1)
        raise RuntimeError("redis-server did not start")

    def restart(self) -> None:
        self.stop()
        self.start()

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(30)


def replace_one(store, env: dict, replaced: dict) -> str | None:
    """Replace (enqueue --replace) one message that is labeled now, i.e. whose reply is waiting or drafting."""
    import redis

    try:
        labeled = [i for i in store.ids("labeled") if i not in replaced]
        if not labeled:
            return None
        rec = store.get(random.choice(labeled))
    except redis.RedisError:  # Redis may be restarting
        return None
    new = f"{rec.text} (edited: it is broken again, I want this fixed)"
    run = subprocess.run([sys.executable, "-m", "worker", "enqueue", "--replace", "-"], input=json.dumps(
        {"id": rec.id, "text": new}, ensure_ascii=False), env=env, cwd=ROOT, capture_output=True, text=True)
    if run.returncode != 0:
        return None
    replaced[rec.id] = (new, time.time() - 1)  # labeled_at of the new text can only be later (1 s of clock slack)
    return rec.id


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=2000)
    ap.add_argument("--kill-every", type=float, nargs=2, default=(20, 40), metavar=("MIN_S", "MAX_S"))
    ap.add_argument("--quiet-after-s", type=float, default=600,
                    help="Stop waiting when nothing became final for this long (what is left is 'stuck').")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--replace-every", type=float, nargs=2, default=(10, 20), metavar=("MIN_S", "MAX_S"))
    args = ap.parse_args()
    print(header())
    random.seed(args.seed)
    work = Path(tempfile.mkdtemp(prefix="moodq-chaos-"))
    own = OwnRedis(work)
    own.start()
    env = {**os.environ, "MOODQ_REDIS_URL": own.url, "MOODQ_KEY_PREFIX": "chaos", "MOODQ_QUEUE": "chaos",
           "MOODQ_REPLY_LABELS": "negative", "MOODQ_THREADS": "1", "MOODQ_MAX_REPLY_TOKENS": "48",
           "MOODQ_SENTIMENT_SOFT_LIMIT": "20", "MOODQ_SENTIMENT_HARD_LIMIT": "30", "MOODQ_REPLY_SOFT_LIMIT": "30",
           "MOODQ_REPLY_HARD_LIMIT": "40", "MOODQ_RETRY_BACKOFF_MAX": "5", "MOODQ_VISIBILITY_TIMEOUT": "60",
           "MOODQ_SWEEP_AFTER_S": "10", "MOODQ_SWEEP_INTERVAL_S": "10"}
    os.environ.update({k: v for k, v in env.items() if k.startswith("MOODQ_")})
    from worker.common.procinfo import children
    from worker.common.settings import get_settings
    from worker.common.store import Store

    s = get_settings()
    store = Store(s)
    data = work / "messages.jsonl"
    texts = corpus(args.n, [DEV / "zh_dev.jsonl", DEV / "en_dev.jsonl"])
    data.write_text("".join(json.dumps({"id": f"c-{i}", "text": t}, ensure_ascii=False) + "\n"
                            for i, t in enumerate(texts)), encoding="utf-8")
    ids = [f"c-{i}" for i in range(args.n)]

    def start_worker(k: int) -> subprocess.Popen:
        log = open(work / f"worker-{k}.log", "a")
        return subprocess.Popen([sys.executable, "-m", "worker", "worker", "-c", "1", "-l", "WARNING",
                                 "--hostname", f"chaos{k}@%h"], env=env, cwd=ROOT, stdout=log,
                                stderr=subprocess.STDOUT, start_new_session=True)

    workers = {k: start_worker(k) for k in (1, 2)}
    events: list[str] = []
    t0 = time.time()
    producer = subprocess.Popen([sys.executable, "-m", "worker", "enqueue", str(data)], env=env, cwd=ROOT,
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    while producer.poll() is None and store.r.zcard(store.k.index) < min(200, args.n // 4):
        time.sleep(0.01)  # mid-enqueue: some chunks written, most not
    producer.kill()
    producer.wait()
    events.append(f"{time.time() - t0:6.1f} s  producer killed mid-enqueue ({len(store.ids())} records written)")
    rerun = subprocess.run([sys.executable, "-m", "worker", "enqueue", str(data)], env=env, cwd=ROOT,
                           capture_output=True, text=True)
    events.append(f"{time.time() - t0:6.1f} s  producer re-run: {rerun.stdout.strip()}")
    next_kill = time.time() + random.uniform(*args.kill_every)
    next_replace, replaced = time.time() + random.uniform(*args.replace_every), {}
    restarted_redis = False
    last_final, last_change = -1, time.time()
    while True:
        final = store.count_final(ids)
        if final != last_final:
            last_final, last_change = final, time.time()
        if final == len(ids) or time.time() - last_change > args.quiet_after_s:
            break
        if not restarted_redis and final >= len(ids) // 3:
            own.restart()
            restarted_redis = True
            events.append(f"{time.time() - t0:6.1f} s  Redis restarted (AOF) at {final} final")
        if time.time() >= next_replace and final < len(ids):
            next_replace = time.time() + random.uniform(*args.replace_every)
            if mid := replace_one(store, env, replaced):
                events.append(f"{time.time() - t0:6.1f} s  replaced {mid} while its reply was drafted")
        if time.time() >= next_kill and final < len(ids):
            k = random.choice(list(workers))
            proc = workers[k]
            pool = children(proc.pid) if proc.poll() is None else []
            if pool and random.random() < 0.5:
                victim, what = random.choice(pool), "pool process"
            else:
                victim, what = proc.pid, "main process"
            try:
                os.kill(victim, signal.SIGKILL)
            except ProcessLookupError:
                pass
            if what == "main process":
                for child in pool:  # the orphaned pool goes too, as with a host or container crash
                    try:
                        os.kill(child, signal.SIGKILL)
                    except ProcessLookupError:
                        pass
                proc.wait()
                workers[k] = start_worker(k)
            events.append(f"{time.time() - t0:6.1f} s  SIGKILL worker {k} {what} at {final} final")
            next_kill = time.time() + random.uniform(*args.kill_every)
        time.sleep(1)
    wall = time.time() - t0
    report = verify(store, ids)
    records = list(store.iter_records(ids))
    reasons = collections.Counter((r.error or "")[:100] for r in records if r.status == "failed")
    waited = [r.finished_at - r.enqueued_at for r in records if r.finished_at]
    for proc in workers.values():
        os.killpg(proc.pid, signal.SIGTERM)
    for proc in workers.values():
        try:
            proc.wait(120)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
    own.stop()
    print("\n".join(events))
    wrong = [r.id for r in records if r.id in replaced and (r.text != replaced[r.id][0] or not r.labeled_at
                                                            or r.labeled_at < replaced[r.id][1])]
    print(f"\nreplaced while drafting {len(replaced)}: ended with the new text, labeled after the replacement "
          f"{len(replaced) - len(wrong)}, wrong {len(wrong)} {wrong[:5]}")
    print(f"enqueued {len(ids)}, done {report['status']['done']}, review {report['status'].get('review', 0)}, "
          f"failed {report['status']['failed']}, "
          f"lost {report['lost']}, duplicate finals {report['duplicates']}, stuck {report['not_final']}, "
          f"republished by the sweep {sum(r.republished for r in records)}, "
          f"longest wait {max(waited, default=0):.0f} s, wall {wall:.0f} s")
    for reason, count in reasons.most_common():
        print(f"  failed x{count}: {reason}")
    print(f"(logs and the Redis AOF in {work})")


if __name__ == "__main__":
    main()
