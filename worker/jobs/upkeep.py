"""What a worker's main process does besides consuming: a heartbeat that says whether its model
processes are ready (read by ``moodq check`` and compose's healthcheck), the periodic sweep and prune,
and stopping the whole worker (exit code 1) when a pool process cannot load its model, so a broken
worker never takes messages that a healthy one could run.

The heartbeat is one small write on the worker's timer. The sweep and the prune run in a thread of
their own, with one Redis client that gives up after a few retries, and do a bounded amount each
round (at most SWEEP_LIMIT records republished, one SCAN step of the prune), so a slow or absent
Redis never holds up the consumer.
"""

from __future__ import annotations

import functools
import json
import logging
import os
import signal
import socket
import threading
import time

from celery import bootsteps
from celery.platforms import EX_FAILURE
from celery.platforms import signals as celery_signals
from celery.worker import state

from worker.common.settings import Settings, get_settings

log = logging.getLogger(__name__)
MODEL_FAILED = "SIGUSR2"  # a pool process tells the main process its model did not load
KEEP_FAILED_S = 3600  # a worker stopped by a model that did not load leaves its heartbeat (with why) this long
SWEEP_LIMIT = 1000  # records one sweep round republishes at most
PRUNE_CHUNK = 500  # ids one prune step looks at
PRUNE_SECONDS = 0.5  # prune steps a round takes at most (more than one while a big backlog of ids expires)
UPKEEP_RETRIES = 3  # per Redis command in the upkeep thread (the next round tries again)


def _client(s: Settings):
    return _client_for(s.redis_url)


@functools.cache
def _client_for(url: str):
    """One small client per process and URL (the heartbeat runs every few seconds)."""
    import redis

    return redis.Redis.from_url(url, decode_responses=True, socket_connect_timeout=5, socket_timeout=5)


def report_model(node: str | None, ok: bool, detail: str = "", path: str | None = None) -> None:
    """Called in a pool process after loading its model: record it (and the compute path it runs); on
    failure stop the whole worker."""
    s = get_settings()
    if node:
        try:
            r = _client(s)
            fields = {f"proc:{os.getpid()}": "ready" if ok else f"failed: {detail}"}
            if path:
                fields["path"] = path  # the same for every process of a worker: one host, one setting
            r.hset(s.keys.heartbeat(node), mapping=fields)
            r.expire(s.keys.heartbeat(node), int(3 * s.heartbeat_s) + 1)
        except Exception as exc:  # health is advisory; never let it take a process down
            log.warning("could not write the health of %s: %s", node, exc)
    if not ok:
        os.kill(os.getppid(), getattr(signal, MODEL_FAILED))


def _stop_failed(*_):
    """In the main process: warm shutdown, exit code 1; unacknowledged messages go back to the queue."""
    log.critical("a pool process could not load the model; stopping this worker so it takes no messages")
    state.should_stop = EX_FAILURE


class Upkeep(bootsteps.StartStopStep):
    """Heartbeat every ``heartbeat_s`` on the worker's timer; sweep and prune every ``sweep_interval_s``
    in a thread of their own."""

    requires = {"celery.worker.components:Timer", "celery.worker.components:Pool"}

    def __init__(self, worker, **kwargs):
        self.timers = []
        self.started = time.time()
        self.stopping = threading.Event()
        self.thread: threading.Thread | None = None
        celery_signals[MODEL_FAILED] = _stop_failed  # before the pool forks: a child may fail at once

    def start(self, worker):
        s = get_settings()
        self.timers.append(worker.timer.call_repeatedly(s.heartbeat_s, self.beat, (worker,), priority=10))
        if s.sweep_interval_s:
            self.stopping.clear()
            self.thread = threading.Thread(target=self.tend, args=(worker.app, s), name="moodq-upkeep", daemon=True)
            self.thread.start()
        self.beat(worker)

    def stop(self, worker):
        for tref in self.timers:
            tref.cancel()
        self.timers.clear()
        self.stopping.set()
        try:
            s = get_settings()
            key = s.keys.heartbeat(worker.hostname)
            if state.should_stop == EX_FAILURE:  # keep saying why, for `moodq check` and `moodq workers`
                _client(s).expire(key, KEEP_FAILED_S)
            else:
                _client(s).delete(key)
        except Exception:  # Redis may be what is going away
            pass

    def beat(self, worker):
        s = get_settings()
        key = s.keys.heartbeat(worker.hostname)
        try:
            r = _client(s)
            try:
                pids = {f"proc:{p}" for p in worker.pool.info.get("processes", [])}
            except (AttributeError, TypeError):  # the pool is starting or stopping
                pids = set()
            stale = [f for f, v in r.hgetall(key).items()  # processes gone (a failure is kept: it says why)
                     if f.startswith("proc:") and f not in pids and not v.startswith("failed")]
            pipe = r.pipeline()
            if stale:
                pipe.hdel(key, *stale)
            pipe.hset(key, mapping={"beat": time.time(), "started": self.started, "pid": os.getpid(),
                                    "host": socket.gethostname(), "queue": s.queue,
                                    "concurrency": len(pids)})
            pipe.expire(key, int(3 * s.heartbeat_s) + 1)
            pipe.execute()
        except Exception as exc:
            log.warning("heartbeat not written: %s", exc)

    def tend(self, app, s: Settings) -> None:
        """The upkeep thread: each round, one bounded sweep and one prune step, until the worker stops."""
        import redis
        from redis.backoff import ExponentialBackoff
        from redis.retry import Retry

        from worker.common.store import Store
        from worker.jobs.publish import sweep

        client = redis.Redis.from_url(s.redis_url, decode_responses=True, socket_connect_timeout=5, socket_timeout=10,
                                      retry=Retry(ExponentialBackoff(cap=1, base=0.1), UPKEEP_RETRIES),
                                      retry_on_error=[redis.ConnectionError, redis.TimeoutError])
        store, position = Store(s, client), (0, 0)
        while not self.stopping.wait(s.sweep_interval_s):
            try:
                counts = sweep(s, app, store, limit=SWEEP_LIMIT)
                counts["pruned"], until = 0, time.monotonic() + PRUNE_SECONDS
                while True:  # one step at least; more while time is left and the round is not over
                    position, pruned = store.prune_step(position, PRUNE_CHUNK)
                    counts["pruned"] += pruned
                    if position == (0, 0) or time.monotonic() > until:
                        break
                if counts["republished"] or counts["pruned"]:
                    log.warning("sweep: %s", json.dumps(counts))
            except Exception as exc:
                log.warning("sweep failed (next one in %g s): %s", s.sweep_interval_s, exc)


def health(s: Settings, this_host: bool = False) -> dict[str, dict]:
    """Every worker's last heartbeat: node -> {"ok": bool, "why": str, ...}."""
    r = _client(s)
    out = {}
    for key in r.scan_iter(match=s.keys.heartbeats, count=100):
        info = r.hgetall(key)
        node = key.split(":heartbeat:", 1)[1]
        if not info or (this_host and info.get("host") != socket.gethostname()):
            continue
        procs = {k[5:]: v for k, v in info.items() if k.startswith("proc:")}
        failed = [f"pid {p}: {v[8:]}" for p, v in procs.items() if v.startswith("failed")]
        ready = sum(v == "ready" for v in procs.values())
        age = time.time() - float(info.get("beat", 0))
        why = ("; ".join(failed) + " (the worker stopped)" * (age > 3 * s.heartbeat_s) if failed
               else f"no heartbeat for {age:.0f} s" if age > 3 * s.heartbeat_s
               else "no process has loaded the model yet" if not ready else "")
        out[node] = {"ok": not why, "why": why, "ready": ready, "age_s": round(age, 1), "queue": info.get("queue"),
                     "path": info.get("path")}
    return out


def path_of(s: Settings, node: str) -> str | None:
    """The compute path a worker's processes reported when their model loaded (None before that)."""
    try:
        return _client(s).hget(s.keys.heartbeat(node), "path")
    except Exception:  # health is advisory
        return None
