"""Durable records in Redis, one per message id, and bounded conversation history.

Keys (all under the settings' prefix):
  rec:<id>          the record, as JSON
  seq               counter giving each accepted message its order
  index             sorted set of every record id, by seq
  status:<status>   set of ids in that status (pending, labeled, done, failed)
  events            sorted set of ids by the time they were labeled or failed (last day; rolling stats)
  conv:<cid>        sorted set of a conversation's message ids, by seq (bounded)
  todo:<queue>:<stage>  sorted set of ids waiting for a stage (by order, replies by triage priority
                    first); a running task claims the first few to batch them

Every write is idempotent: a task that runs twice rewrites the same record.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterable, Iterator

import redis
from pydantic import ValidationError
from redis.backoff import ExponentialBackoff
from redis.retry import Retry

from worker.errors import BadMessage
from worker.schemas import Message, Record
from worker.settings import Settings

STATUSES = ("pending", "labeled", "done", "failed")
CONVERSATION_KEEP = 200  # ids kept per conversation; the reply reads only the last few
RETRIES = 20  # per command, backing off up to 2 s: survives a Redis restart of ~30 s
EVENTS_KEEP_S = 86400  # the events index covers the last day
TODO_KEEP = 100_000  # batching hints kept per stage (with batching off nobody pops them)


class Store:
    def __init__(self, settings: Settings, client: redis.Redis | None = None):
        self.s = settings
        self.r = client or redis.Redis.from_url(
            settings.redis_url, decode_responses=True, health_check_interval=30, socket_connect_timeout=5,
            # Ride out a Redis restart or failover: every command retries for about half a minute.
            retry=Retry(ExponentialBackoff(cap=2, base=0.1), RETRIES),
            retry_on_error=[redis.ConnectionError, redis.TimeoutError],
        )
        self.ttl = int(settings.record_ttl_days * 86400) or None

    # --- keys
    def _rec(self, mid: str) -> str:
        return self.s.key("rec", mid)

    def _status(self, status: str) -> str:
        return self.s.key("status", status)

    def _conv(self, cid: str) -> str:
        return self.s.key("conv", cid)

    def _todo(self, stage: str) -> str:
        return self.s.key("todo", self.s.queue, stage)  # per queue: a worker batches only its own queue's messages

    # --- batching hints (losing one only costs batching: every message still has its own task)
    def offer(self, stage: str, ranked: dict[str, float]) -> None:
        """Add ids waiting for ``stage``, ranked (lowest first): by seq, or triage priority then seq."""
        if ranked:
            self.r.pipeline(transaction=False).zadd(self._todo(stage), ranked).zremrangebyrank(
                self._todo(stage), TODO_KEEP, -1).execute()

    def claim(self, stage: str, n: int) -> dict[str, float]:
        """Take up to ``n`` waiting ids for ``stage``, first-ranked first (id -> rank)."""
        if n <= 0:
            return {}
        return dict(self.r.zpopmin(self._todo(stage), n))

    def give_back(self, stage: str, ranked: dict[str, float]) -> None:
        """Return claimed ids with their ranks."""
        if ranked:
            self.r.zadd(self._todo(stage), ranked)

    # --- writes
    def add(self, messages: list[Message], replace: bool = False) -> tuple[list[Record], list[str]]:
        """Create pending records; returns (accepted, duplicate ids). Two round trips per call.

        An id that already has a record is a duplicate and is left alone, unless
        ``replace`` is set, in which case its record is reset to pending.
        """
        if not messages:
            return [], []
        first = self.r.incrby(self.s.key("seq"), len(messages)) - len(messages) + 1
        records = [Record.from_message(m, seq=first + i) for i, m in enumerate(messages)]
        pipe = self.r.pipeline(transaction=False)
        for rec in records:
            pipe.set(self._rec(rec.id), rec.model_dump_json(), nx=not replace, ex=self.ttl)
        created = pipe.execute()
        accepted = [rec for rec, ok in zip(records, created) if ok]
        dupes = [rec.id for rec, ok in zip(records, created) if not ok]
        pipe = self.r.pipeline(transaction=False)
        for rec in accepted:
            pipe.zadd(self.s.key("index"), {rec.id: rec.seq})
            for status in STATUSES:
                pipe.srem(self._status(status), rec.id)
            pipe.sadd(self._status("pending"), rec.id)
            pipe.zadd(self._todo("sentiment"), {rec.id: rec.seq})
            if rec.conversation_id:
                pipe.zadd(self._conv(rec.conversation_id), {rec.id: rec.seq})
                pipe.zremrangebyrank(self._conv(rec.conversation_id), 0, -CONVERSATION_KEEP - 1)
        pipe.zremrangebyrank(self._todo("sentiment"), TODO_KEEP, -1)
        pipe.execute()
        return accepted, dupes

    def update(self, mid: str, change: Callable[[Record], None]) -> Record | None:
        """Apply ``change`` to the record atomically (optimistic lock); None if it does not exist."""
        key = self._rec(mid)
        result: list[Record] = []

        def txn(pipe: redis.client.Pipeline) -> None:
            raw = pipe.get(key)
            if raw is None:
                return
            rec = parse(raw, mid)
            before = rec.status
            change(rec)
            rec.updated_at = time.time()
            pipe.multi()
            pipe.set(key, rec.model_dump_json(), ex=self.ttl)
            if rec.status != before:
                pipe.srem(self._status(before), mid)
                if rec.status in ("labeled", "failed"):
                    pipe.zadd(self.s.key("events"), {mid: rec.updated_at})
                    pipe.zremrangebyscore(self.s.key("events"), "-inf", rec.updated_at - EVENTS_KEEP_S)
            pipe.sadd(self._status(rec.status), mid)
            result.append(rec)

        self.r.transaction(txn, key)
        return result[0] if result else None

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

        rec = self.update(mid, reset)
        return (rec, resume[0]) if rec is not None and resume else None

    def add_alert(self, alert: dict) -> None:
        """Keep an alert (the last 1000) under ``alerts``."""
        self.r.pipeline(transaction=False).lpush(self.s.key("alerts"), json.dumps(alert)).ltrim(
            self.s.key("alerts"), 0, 999).execute()

    # --- reads
    def get(self, mid: str) -> Record | None:
        raw = self.r.get(self._rec(mid))
        return parse(raw, mid) if raw else None

    def get_many(self, ids: list[str]) -> list[Record]:
        if not ids:
            return []
        raws = self.r.mget([self._rec(i) for i in ids])
        return [parse(raw, mid) for mid, raw in zip(ids, raws) if raw]

    def counts(self) -> dict[str, int]:
        pipe = self.r.pipeline(transaction=False)
        for status in STATUSES:
            pipe.scard(self._status(status))
        return dict(zip(STATUSES, pipe.execute()))

    def count_final(self, ids: list[str], chunk: int = 10_000) -> int:
        """How many of ``ids`` are done or failed (status sets only, no records read)."""
        final = 0
        for start in range(0, len(ids), chunk):
            part = ids[start:start + chunk]
            done, failed = (self.r.pipeline(transaction=False).smismember(self._status("done"), part)
                            .smismember(self._status("failed"), part).execute())
            final += sum(a or b for a, b in zip(done, failed))
        return final

    def ids(self, status: str | None = None) -> list[str]:
        if status:
            return sorted(self.r.smembers(self._status(status)))
        return self.r.zrange(self.s.key("index"), 0, -1)

    def iter_records(self, ids: Iterable[str] | None = None, chunk: int = 500) -> Iterator[Record]:
        ids = list(self.ids() if ids is None else ids)
        for start in range(0, len(ids), chunk):
            yield from self.get_many(ids[start:start + chunk])

    def since(self, seconds: float, now: float) -> list[Record]:
        """Records labeled or failed in the last ``seconds`` (up to a day)."""
        ids = self.r.zrangebyscore(self.s.key("events"), now - seconds, now)
        return list(self.iter_records(ids))

    def history(self, rec: Record, turns: int) -> list[Record]:
        """The earlier messages of the record's conversation (oldest first), at most ``turns``."""
        if not rec.conversation_id or turns <= 0:
            return []
        ids = self.r.zrevrangebyscore(self._conv(rec.conversation_id), f"({rec.seq}", "-inf", start=0, num=turns)
        return self.get_many(list(reversed(ids)))

    def delete_all(self) -> int:
        """Remove every key under this prefix (tests and `moodq purge`)."""
        keys = list(self.r.scan_iter(match=self.s.key("*"), count=1000))
        for start in range(0, len(keys), 1000):
            self.r.delete(*keys[start:start + 1000])
        return len(keys)


def parse(raw: str, mid: str) -> Record:
    try:
        return Record.model_validate_json(raw)
    except ValidationError as exc:
        raise BadMessage(f"the stored record of {mid!r} is not a moodq record ({exc.error_count()} errors, "
                         f"first: {exc.errors()[0]['msg']})") from None
