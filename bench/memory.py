"""Memory of a real worker (`moodq worker -c N`): what each process holds once its model is loaded, and
after it has labeled and replied to some messages.

RSS counts pages shared with the other processes in full; PSS shares them out; private dirty is what a
process holds alone (its copy of the model, and any page of the main process it wrote to after the fork:
collecting the imported modules' objects wrote to every one of them until `gc.freeze()`, see
worker/jobs/resident.py). Figures from /proc/<pid>/smaps_rollup, in MB.
Usage:  python bench/memory.py [--concurrency 2] [--n 40]
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

FIELDS = ("Rss", "Pss", "Shared_Dirty", "Private_Dirty")
TEXTS = ["快递很快，包装完好，满意。", "客服态度很差，等了一个小时没人理。",
         "The update fixed everything, thank you!", "My order arrived broken and nobody answers."]


def rollup(pid: int) -> dict[str, int]:
    found = {}
    for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
        key, *value = line.split()
        if key.rstrip(":") in FIELDS:
            found[key.rstrip(":")] = int(value[0]) // 1024
    return found


def show(what: str, pids: list[int]) -> None:
    for pid in pids:
        print(f"  {what:<28} pid {pid:<8}" + "".join(f"{k} {v:>6}  " for k, v in rollup(pid).items()))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--concurrency", type=int, default=2)
    ap.add_argument("--n", type=int, default=40, help="messages to label (and reply to, for negatives)")
    args = ap.parse_args()
    run = uuid.uuid4().hex[:8]
    os.environ.update({"MOODQ_KEY_PREFIX": f"bench-mem-{run}", "MOODQ_QUEUE": f"bench-mem-{run}", "HF_HUB_OFFLINE": "1"})
    from bench.common import header
    from producer.enqueue import enqueue
    from producer.progress import wait_for
    from worker.common.procinfo import children
    from worker.common.schemas import FINAL, Message
    from worker.common.settings import get_settings
    from worker.common.store import Store
    from worker.jobs import broker, launch
    from worker.jobs.app import make_app

    print(header())
    s = get_settings()
    store, app = Store(s), make_app(s)
    log = Path(f"/tmp/bench-memory-{run}.log")
    proc = launch.start([sys.executable, "-m", "worker", "worker", "-c", str(args.concurrency), "-l", "INFO"], {},
                        log, f"bench-mem-{run}@%h", ready_text="ready in")
    try:
        deadline = time.monotonic() + 600
        while log.read_text().count("ready in") < args.concurrency:  # every pool process has its model
            if proc.poll() is not None or time.monotonic() > deadline:
                sys.exit(f"the worker's pool processes did not all load their model:\n{log.read_text()[-2000:]}")
            time.sleep(0.1)
        pool = list(children(proc.pid))
        assert len(pool) == args.concurrency, f"expected {args.concurrency} pool processes, found {pool}"
        print(f"worker -c {args.concurrency}, MB from /proc/<pid>/smaps_rollup:")
        show("main process", [proc.pid])
        show("pool process, model loaded", pool)
        msgs = [Message(id=f"mem-{i}", text=TEXTS[i % len(TEXTS)]) for i in range(args.n)]
        enqueue(msgs, s, app)
        finished = [r for r in wait_for(store, [m.id for m in msgs], 1800) if r.status in FINAL]
        assert len(finished) == args.n, f"only {len(finished)} of {args.n} messages finished"
        show(f"after {args.n} messages", pool)
    finally:
        launch.stop(proc, sig=3)
        store.delete_all()
        broker.remove(app, s.queue)


if __name__ == "__main__":
    main()
