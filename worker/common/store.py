"""Durable records in Redis, one per message id, and bounded conversation history.

The keys are listed in :mod:`worker.common.keys`. Every write is idempotent: a task that runs
twice rewrites the same record.
"""

from __future__ import annotations

import functools
import json
import time
from collections.abc import Callable, Iterable, Iterator

import redis
from pydantic import ValidationError
from redis.backoff import ExponentialBackoff
from redis.retry import Retry

from worker.common.errors import BadMessage
from worker.common.keys import STATUSES
from worker.common.redis_scripts import ADD_SCRIPT, PRUNE_SCRIPT, TAKE_SCRIPT
from worker.common.schemas import FINAL, Message, Record
from worker.common.settings import Settings
from worker.common.waiting import TODO_KEEP, WaitingLists

CONVERSATION_KEEP = 200  # ids kept per conversation; the reply reads only the last few
RETRIES = 20  # per command, backing off up to 2 s: survives a Redis restart of ~30 s
EVENTS_KEEP_S = 86400  # the events index covers the last day


class Store(WaitingLists):
    def __init__(self, settings: Settings, client: redis.Redis | None = None):
        self.s = settings
        self.r = client or redis.Redis.from_url(
            settings.redis_url, decode_responses=True, health_check_interval=30, socket_connect_timeout=5,
            # Ride out a Redis restart or failover: every command retries for about half a minute.
            retry=Retry(ExponentialBackoff(cap=2, base=0.1), RETRIES),
            retry_on_error=[redis.ConnectionError, redis.TimeoutError],
        )
        self.ttl = int(settings.record_ttl_days * 86400) or None
        self.k = settings.keys

    # --- writes
    def add(self, messages: list[Message], replace: bool = False) -> tuple[list[Record], list[str]]:
        """Create pending records; returns (accepted, duplicate ids). Two round trips per call (three with ``replace``).

        An id that already has a record is a duplicate and is left alone, unless ``replace`` is
        set, in which case its record is reset to pending, keeping its seq (its place in a conversation). Record, index, status set and
        conversation are written in one atomic script, together with the id's entry in the
        ``unpublished`` set; :meth:`published` takes it out once its task is on the queue, so a
        producer that dies in between leaves a trace the sweep can heal.
        """
        if not messages:
            return [], []
        kept = self._seqs([m.id for m in messages]) if replace else {}  # a replaced message keeps its place
        fresh = [m for m in messages if m.id not in kept]
        first = self.r.incrby(self.k.seq, len(fresh)) - len(fresh) + 1 if fresh else 0
        numbers = iter(range(first, first + len(fresh)))
        records = [Record.from_message(m, seq=kept.get(m.id) or next(numbers)) for m in messages]
        args = [json.dumps([self.ttl or 0, int(replace), CONVERSATION_KEEP, TODO_KEEP, time.time()])]
        for rec in records:
            args += [rec.id, rec.model_dump_json(), rec.seq, rec.conversation_id or ""]
        created = self._add_script(keys=[self.k.index, self.k.todo("sentiment"), self.k.unpublished,
                                         *map(self.k.status, STATUSES), self.k.rec(""), self.k.conv("")], args=args)
        accepted = [rec for rec, ok in zip(records, created) if ok]
        dupes = [rec.id for rec, ok in zip(records, created) if not ok]
        return accepted, dupes

    def _seqs(self, ids: list[str]) -> dict[str, int]:
        """The seq of each id that has a record (its place in the index, the waiting lists, its conversation)."""
        scores = self.r.zmscore(self.k.index, ids)
        return {mid: int(score) for mid, score in zip(ids, scores) if score is not None}

    def published(self, ids: list[str]) -> None:
        """Their tasks are on the queue: nothing for the sweep to do."""
        if ids:
            self.r.zrem(self.k.unpublished, *ids)

    def unpublished(self, older_than_s: float, now: float | None = None) -> list[str]:
        """Ids written at least ``older_than_s`` ago whose task was never confirmed published."""
        return self.r.zrangebyscore(self.k.unpublished, "-inf", (now or time.time()) - older_than_s)

    def take_unpublished(self, older_than_s: float, limit: int = 1000) -> list[str]:
        """Like :meth:`unpublished`, but each id is handed to one caller only: its mark is renewed in the
        same step, so a second sweeper skips it, and if this one dies it comes round again later."""
        now = time.time()
        return self._take_script(keys=[self.k.unpublished], args=[now - older_than_s, now, limit])

    @functools.cached_property
    def _take_script(self):
        return self.r.register_script(TAKE_SCRIPT)

    @functools.cached_property
    def _add_script(self):
        return self.r.register_script(ADD_SCRIPT)

    def update(self, mid: str, change: Callable[[Record], None],
               also: Callable[[redis.client.Pipeline, Record], None] | None = None) -> Record | None:
        """Apply ``change`` to the record atomically (optimistic lock); None if it does not exist.

        ``also`` may add commands to the same transaction (they run only if the record does)."""
        key = self.k.rec(mid)

        def txn(pipe: redis.client.Pipeline) -> Record | None:
            raw = pipe.get(key)
            if raw is None:
                return None
            rec = parse(raw, mid)
            before = rec.status
            change(rec)
            rec.updated_at = time.time()
            pipe.multi()
            pipe.set(key, rec.model_dump_json(), ex=self.ttl)
            if rec.status != before:
                pipe.srem(self.k.status(before), mid)
                if rec.status in ("labeled", "failed"):  # (stats: labeled and failed messages by time)
                    pipe.zadd(self.k.events, {mid: rec.updated_at})
                    pipe.zremrangebyscore(self.k.events, "-inf", rec.updated_at - EVENTS_KEEP_S)
            pipe.sadd(self.k.status(rec.status), mid)
            if also:
                also(pipe, rec)
            return rec

        # A WATCH conflict runs txn again; the value returned is the last (the committed) attempt's.
        return self.r.transaction(txn, key, value_from_callable=True)

    def reset_failed(self, mid: str) -> tuple[Record, str] | None:
        """Put a failed record back for another try; returns it and the stage to resume at.

        A message that failed drafting its reply keeps its label and resumes at ``reply``;
        any other failure starts again at ``sentiment``. None if the record is not failed.
        """
        resume: list[str] = []

        def reset(rec: Record) -> None:
            if rec.status != "failed":
                return
            stage = "reply" if rec.error_stage == "reply" and rec.label is not None else "sentiment"
            keep = {"id", "text", "conversation_id", "lang", "metadata", "seq", "enqueued_at", "requeued"}
            if stage == "reply":
                keep |= {"label", "confidence", "probs", "scores", "model", "path", "prompt_version", "labeled_at", "timings"}
            fresh = Record(**{k: v for k, v in rec.model_dump().items() if k in keep})
            fresh.status = "labeled" if stage == "reply" else "pending"
            fresh.requeued += 1
            if stage == "reply":  # the label stays, and so does the count of how it was reached
                fresh.attempts = {"sentiment": rec.attempts.get("sentiment", 0)}
            for name in Record.model_fields:
                setattr(rec, name, getattr(fresh, name))
            resume.append(stage)

        def unpublished(pipe, rec: Record) -> None:
            if resume:
                pipe.zadd(self.k.unpublished, {mid: time.time()})

        rec = self.update(mid, reset, unpublished)
        return (rec, resume[0]) if rec is not None and resume else None

    def add_alert(self, alert: dict) -> None:
        """Keep an alert (the last 1000) under ``alerts``."""
        self.r.pipeline(transaction=False).lpush(self.k.alerts, json.dumps(alert)).ltrim(
            self.k.alerts, 0, 999).execute()

    # --- reads
    def get(self, mid: str) -> Record | None:
        raw = self.r.get(self.k.rec(mid))
        return parse(raw, mid) if raw else None

    def get_many(self, ids: list[str], skip_corrupt: bool = False) -> list[Record]:
        """The records of ``ids`` that exist, in order; a corrupt one raises BadMessage, or is left out."""
        if not ids:
            return []
        raws = self.r.mget([self.k.rec(i) for i in ids])
        out = []
        for mid, raw in zip(ids, raws):
            if raw:
                try:
                    out.append(parse(raw, mid))
                except BadMessage:
                    if not skip_corrupt:
                        raise
        return out

    def fail_corrupt(self, mid: str, reason: str) -> None:
        """Replace a stored record that is not a moodq record by a failed one that says so."""
        rec = Record(id=mid, text="", status="failed", error=reason, finished_at=time.time())
        pipe = self.r.pipeline()
        pipe.set(self.k.rec(mid), rec.model_dump_json(), ex=self.ttl)
        for status in STATUSES:
            pipe.srem(self.k.status(status), mid)
        pipe.sadd(self.k.status("failed"), mid).zadd(self.k.events, {mid: rec.finished_at}).execute()

    def counts(self) -> dict[str, int]:
        pipe = self.r.pipeline(transaction=False)
        for status in STATUSES:
            pipe.scard(self.k.status(status))
        return dict(zip(STATUSES, pipe.execute()))

    def count_final(self, ids: list[str], chunk: int = 10_000) -> int:
        """How many of ``ids`` are final: done, review or failed (status sets only, no records read)."""
        final = 0
        for start in range(0, len(ids), chunk):
            part = ids[start:start + chunk]
            pipe = self.r.pipeline(transaction=False)
            for status in sorted(FINAL):
                pipe.smismember(self.k.status(status), part)
            final += sum(any(hits) for hits in zip(*pipe.execute()))
        return final

    def ids(self, status: str | None = None) -> list[str]:
        if status:
            return sorted(self.r.smembers(self.k.status(status)))
        return self.r.zrange(self.k.index, 0, -1)

    def iter_records(self, ids: Iterable[str] | None = None, chunk: int = 500) -> Iterator[Record]:
        ids = list(self.ids() if ids is None else ids)
        for start in range(0, len(ids), chunk):
            yield from self.get_many(ids[start:start + chunk])

    def since(self, seconds: float, now: float) -> list[Record]:
        """Records labeled or failed in the last ``seconds`` (up to a day)."""
        ids = self.r.zrangebyscore(self.k.events, now - seconds, now)
        return list(self.iter_records(ids))

    def history(self, rec: Record, turns: int) -> list[Record]:
        """The earlier messages of the record's conversation (oldest first), at most ``turns``."""
        if not rec.conversation_id or turns <= 0:
            return []
        ids = self.r.zrevrangebyscore(self.k.conv(rec.conversation_id), f"({rec.seq}", "-inf", start=0, num=turns)
        return self.get_many(list(reversed(ids)), skip_corrupt=True)  # a corrupt turn fails alone, in its own task

    def prune(self, chunk: int = 1000) -> int:
        """Drop ids whose record has expired (``record_ttl_days``) from the status sets, the index and the
        waiting lists, so ``watch`` never waits for, and ``failed`` never lists, a record that is gone.
        One pass over every id, ``chunk`` per round trip; returns how many entries it removed."""
        position, removed = (0, 0), 0
        while True:
            position, n = self.prune_step(position, chunk)
            removed += n
            if position == (0, 0):
                return removed

    def prune_step(self, position: tuple[int, int] = (0, 0), chunk: int = 500) -> tuple[tuple[int, int], int]:
        """One bounded piece of :meth:`prune`: up to about ``chunk`` ids of one key, from ``position`` (which
        key, SCAN cursor). Returns the next position ((0, 0) after a full round) and how many it removed.
        Checking that a record is gone and removing its id are one script: an id added again meanwhile stays."""
        keys = [*((self.k.status(st), True) for st in STATUSES),
                *((k, False) for k in (self.k.index, self.k.todo("sentiment"), self.k.todo("reply"), self.k.unpublished))]
        which, cursor = position
        key, is_set = keys[which]
        cursor, found = self.r.sscan(key, cursor, count=chunk) if is_set else self.r.zscan(key, cursor, count=chunk)
        ids = found if is_set else [member for member, _ in found]
        removed = self._prune_script(keys=[key], args=[self.k.rec(""), int(is_set), *ids]) if ids else 0
        if cursor == 0:
            which = (which + 1) % len(keys)
        return (which, cursor), removed

    @functools.cached_property
    def _prune_script(self):
        return self.r.register_script(PRUNE_SCRIPT)

    def delete_all(self) -> int:
        """Remove every key under this prefix (tests and `moodq purge`)."""
        keys = list(self.r.scan_iter(match=self.k.everything, count=1000))
        for start in range(0, len(keys), 1000):
            self.r.delete(*keys[start:start + 1000])
        return len(keys)


def parse(raw: str, mid: str) -> Record:
    try:
        return Record.model_validate_json(raw)
    except ValidationError as exc:
        raise BadMessage(f"the stored record of {mid!r} is not a moodq record ({exc.error_count()} errors, "
                         f"first: {exc.errors()[0]['msg']})") from None
