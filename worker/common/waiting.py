"""The waiting lists a running task claims batch-mates from, and the leases on what a reply batch took.

Losing a waiting list only costs batching: every message still has its own task. A lease
(``lease:<stage>:<id>``) tells a message's own task that another task's batch is working on it.
The keys are listed in :mod:`worker.common.keys`; :class:`worker.common.store.Store` has these methods.
"""

from __future__ import annotations

import functools
from collections.abc import Iterable

import redis

from worker.common.keys import Keys
from worker.common.redis_scripts import TAKE_LEASED_SCRIPT

TODO_KEEP = 100_000  # batching hints kept per stage (with batching off nobody pops them)


class WaitingLists:
    r: redis.Redis
    k: Keys

    def offer(self, stage: str, ranked: dict[str, float]) -> None:
        """Add ids waiting for ``stage``, ranked (lowest first): by seq, or triage priority then seq."""
        if ranked:
            self.r.pipeline(transaction=False).zadd(self.k.todo(stage), ranked).zremrangebyrank(
                self.k.todo(stage), TODO_KEEP, -1).execute()

    def waiting(self, stage: str, n: int) -> dict[str, float]:
        """The first ``n`` ids waiting for ``stage`` (id -> rank), left in the list."""
        return dict(self.r.zrange(self.k.todo(stage), 0, n - 1, withscores=True)) if n > 0 else {}

    def take(self, stage: str, ids: list[str], lease: tuple[str, float] | None = None) -> set[str]:
        """Remove ``ids`` from the waiting list; the ones this call removed (another claim may have been first).
        With ``lease`` (holder, seconds), each one removed is leased to the holder in the same step, unless
        another holds it (its own task is running it): that one is removed from the list but not taken."""
        if not ids:
            return set()
        if lease:
            holder, seconds = lease
            taken = self._take_leased_script(keys=[self.k.todo(stage)],
                                             args=[self.k.lease(stage, ""), int(seconds * 1000), holder, *ids])
            return set(taken)
        pipe = self.r.pipeline(transaction=False)
        for mid in ids:
            pipe.zrem(self.k.todo(stage), mid)
        return {mid for mid, removed in zip(ids, pipe.execute()) if removed}

    def lease(self, stage: str, mid: str, holder: str, seconds: float) -> str | None:
        """Lease ``mid`` for ``stage`` to ``holder`` unless another holds it; returns who holds it now."""
        key = self.k.lease(stage, mid)
        return holder if self.r.set(key, holder, px=int(seconds * 1000), nx=True) else self.r.get(key)

    def release(self, stage: str, ids: Iterable[str]) -> None:
        """End the leases on ``ids`` (their batch is over, or left them to their own tasks)."""
        keys = [self.k.lease(stage, mid) for mid in ids]
        if keys:
            self.r.delete(*keys)

    def give_back(self, stage: str, ranked: dict[str, float]) -> None:
        """Return claimed ids with their ranks."""
        if ranked:
            self.r.zadd(self.k.todo(stage), ranked)

    @functools.cached_property
    def _take_leased_script(self):
        return self.r.register_script(TAKE_LEASED_SCRIPT)
