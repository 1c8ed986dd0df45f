"""What a worker's main process does besides consuming: a heartbeat that says whether its model
processes are ready (read by ``moodq check`` and compose's healthcheck), the periodic sweep, and
stopping the whole worker (exit code 1) when a pool process cannot load its model, so a broken
worker never takes messages that a healthy one could run.
"""

from __future__ import annotations

import functools
import json
import logging
import os
import signal
import socket
import time

from celery import bootsteps
from celery.platforms import EX_FAILURE
from celery.platforms import signals as celery_signals
from celery.worker import state

from worker.settings import Settings, get_settings

log = logging.getLogger(__name__)
MODEL_FAILED = "SIGUSR2"  # a pool process tells the main process its model did not load
KEEP_FAILED_S = 3600  # a worker stopped by a model that did not load leaves its heartbeat (with why) this long
PRUNE_EVERY_S = 600  # expired records leave their ids in sets; a worker clears them this often


def _client(s: Settings):
    return _client_for(s.redis_url)


@functools.cache
def _client_for(url: str):
    """One small client per process and URL (the heartbeat runs every few seconds)."""
    import redis

    return redis.Redis.from_url(url, decode_responses=True, socket_connect_timeout=5, socket_timeout=5)


def report_model(node: str | None, ok: bool, detail: str = "") -> None:
    """Called in a pool process after loading its model: record it; on failure stop the whole worker."""
    s = get_settings()
    if node:
        try:
            r = _client(s)
            r.hset(s.keys.heartbeat(node), f"proc:{os.getpid()}", "ready" if ok else f"failed: {detail}")
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
    """Heartbeat every ``heartbeat_s`` and sweep every ``sweep_interval_s``, on the worker's timer."""

    requires = {"celery.worker.components:Timer", "celery.worker.components:Pool"}

    def __init__(self, worker, **kwargs):
        self.timers = []
        self.started = time.time()
        self.pruned_at = 0.0
        celery_signals[MODEL_FAILED] = _stop_failed  # before the pool forks: a child may fail at once

    def start(self, worker):
        s = get_settings()
        self.timers.append(worker.timer.call_repeatedly(s.heartbeat_s, self.beat, (worker,), priority=10))
        if s.sweep_interval_s:
            self.timers.append(worker.timer.call_repeatedly(s.sweep_interval_s, self.sweep, (worker,), priority=20))
        self.beat(worker)

    def stop(self, worker):
        for tref in self.timers:
            tref.cancel()
        self.timers.clear()
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

    def sweep(self, worker):
        from worker.publish import sweep
        from worker.store import Store

        s = get_settings()
        try:
            store = Store(s)
            counts = sweep(s, worker.app, store)
            if time.monotonic() - self.pruned_at > PRUNE_EVERY_S:
                self.pruned_at = time.monotonic()
                counts["pruned"] = store.prune()
            if counts["republished"] or counts.get("pruned"):
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
        out[node] = {"ok": not why, "why": why, "ready": ready, "age_s": round(age, 1), "queue": info.get("queue")}
    return out
