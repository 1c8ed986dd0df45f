"""`moodq follow`: enqueue messages from a source that never ends, as they arrive.

Sources: stdin, a growing file (like ``tail -f``; the byte offset is kept in Redis, so a
restart goes on where it stopped, and a line's default id is ``<absolute path>:<line>``, so a
line enqueued twice is a duplicate, not a second message; after the file is truncated
(logrotate's copytruncate) or replaced, ids become ``<absolute path>~<n>:<line>``, so new lines
never collide with the old ones), or a Redis Stream (a consumer group;
an entry is acknowledged after its message is enqueued). Back-pressure: while the queue
holds more than ``max_queue`` tasks, reading pauses.
"""

from __future__ import annotations

import json
import os
import socket
import time
from collections.abc import Callable, Collection
from dataclasses import dataclass, field
from pathlib import Path

import redis
from celery import Celery

from producer import sources
from producer.enqueue import enqueue
from worker.common.schemas import Message
from worker.common.settings import Settings
from worker.common.store import Store
from worker.jobs import broker as task_queue

Row = tuple[int, str]  # (line number, raw line)


@dataclass
class Follower:
    settings: Settings
    app: Celery
    fmt: str = "jsonl"
    max_queue: int = 1000
    on_event: Callable[[str], None] = print
    totals: dict = field(default_factory=lambda: {"accepted": 0, "duplicates": 0, "rejected": 0, "paused_s": 0.0})
    languages: Collection[str] | None = None  # the prompt file's; another lang is refused here

    def __post_init__(self):
        self.store = Store(self.settings)

    def depth(self) -> int:
        """Tasks waiting in the queue (all priority levels)."""
        return task_queue.depth(self.app, self.settings.queue)

    def wait_for_room(self) -> None:
        started = time.monotonic()
        while self.depth() > self.max_queue:
            time.sleep(0.5)
        self.totals["paused_s"] += time.monotonic() - started

    def push(self, name: str, rows: list[Row], default_ids: bool) -> None:
        """Validate and enqueue lines; bad ones are reported with their line number."""
        messages: list[Message] = []
        for line, raw in rows:
            item = self._message(name, line, raw, default_ids)
            if isinstance(item, sources.LineError):
                self.totals["rejected"] += 1
                self.on_event(f"skipped {item}")
            else:
                messages.append(item)
        if not messages:
            return
        self.wait_for_room()
        res = enqueue(messages, self.settings, self.app, store=self.store)
        self.totals["accepted"] += len(res.accepted)
        self.totals["duplicates"] += len(res.duplicates)

    def _message(self, name: str, line: int, raw: str, default_ids: bool):
        if line == 1:
            raw = raw.removeprefix("\ufeff")  # a byte-order mark
        if self.fmt == "text":
            row = {"text": raw}
        else:
            try:
                row = json.loads(raw)
            except json.JSONDecodeError as exc:
                return sources.LineError(name, line, f"invalid JSON: {exc.msg} at column {exc.colno}")
        if default_ids and isinstance(row, dict) and row.get("id") in (None, ""):
            row["id"] = f"{name}:{line}"
        return sources.validated(row, name, line, self.settings.max_chars, self.languages)

    # --- sources
    def follow_stream(self, stream, name: str = "-") -> None:
        """Read a text stream (stdin) line by line until it ends; each line is enqueued as it comes."""
        for line, raw in enumerate(stream, start=1):
            if raw.strip():
                self.push(name, [(line, raw.rstrip("\r\n"))], default_ids=False)

    def follow_file(self, path: Path, poll_s: float = 0.5, until: Callable[[], bool] = lambda: False,
                    batch: int = 500) -> None:
        """Tail a growing file from where the last run stopped; after truncation or replacement it
        starts over under a new generation of ids."""
        path = path.resolve()
        key = self.settings.keys.follow(str(path))
        saved = self.store.r.hgetall(key)
        offset, line, gen = (int(saved.get(k, 0)) for k in ("offset", "line", "generation"))
        inode = int(saved.get("inode", 0))
        while not until():
            if path.exists():
                st = path.stat()
                if st.st_size < offset or (inode and st.st_ino != inode):
                    gen += 1
                    self.on_event(f"{path} was truncated or replaced; reading it from the start "
                                  f"(ids {path}~{gen}:<line>)")
                    offset, line = 0, 0
                inode = st.st_ino
            rows, offset_after = self._complete_lines(path, offset, line, batch)
            if rows:
                name = f"{path}~{gen}" if gen else str(path)
                self.push(name, [(n, raw) for n, raw in rows if raw.strip()], default_ids=True)
                offset, line = offset_after, rows[-1][0]
                self.store.r.hset(key, mapping={"offset": offset, "line": line, "generation": gen, "inode": inode})
            else:
                time.sleep(poll_s)

    @staticmethod
    def _complete_lines(path: Path, offset: int, line: int, batch: int) -> tuple[list[Row], int]:
        """Whole lines (ending in a newline) after ``offset``; a half-written last line waits."""
        if not path.exists():
            return [], offset
        rows: list[Row] = []
        with path.open("rb") as f:
            f.seek(offset)
            while len(rows) < batch:
                raw = f.readline()
                if not raw.endswith(b"\n"):
                    break
                offset += len(raw)
                line += 1
                rows.append((line, raw.decode("utf-8", errors="replace").rstrip("\r\n")))
        return rows, offset

    def follow_redis_stream(self, stream: str, group: str = "moodq", until: Callable[[], bool] = lambda: False,
                            batch: int = 200, reclaim_idle_s: float = 60) -> None:
        """Consume a Redis Stream through a consumer group; fields are the message's fields.

        Entries another consumer read but never acknowledged (it crashed) are taken over once idle
        for ``reclaim_idle_s`` (XAUTOCLAIM), at start and every ``reclaim_idle_s / 2``; a taken-over
        entry already enqueued is only a duplicate id, never a second message."""
        r = self.store.r
        try:
            r.xgroup_create(stream, group, id="0", mkstream=True)
        except redis.ResponseError as exc:
            if "BUSYGROUP" not in str(exc):
                raise
        consumer = f"{socket.gethostname()}-{os.getpid()}"
        pending_first = "0"  # first our own unacknowledged entries (after a crash), then new ones
        reclaimed_at = 0.0
        while not until():
            if time.monotonic() - reclaimed_at > reclaim_idle_s / 2:
                reclaimed_at = time.monotonic()
                self._take_over(r, stream, group, consumer, reclaim_idle_s, batch)
            got = r.xreadgroup(group, consumer, {stream: pending_first}, count=batch, block=1000)
            entries = got[0][1] if got else []
            if pending_first == "0" and not entries:
                pending_first = ">"
                continue
            if entries:
                self._push_entries(r, stream, group, entries)

    def _take_over(self, r, stream: str, group: str, consumer: str, idle_s: float, batch: int) -> None:
        """Take over every entry idle for ``idle_s``: XAUTOCLAIM scans a bounded window of the pending list
        per call, so the cursor it returns is followed through the whole list (idle entries behind a live
        consumer's long run of pending ones are reached too)."""
        cursor = "0-0"
        while True:
            cursor, claimed, *_ = r.xautoclaim(stream, group, consumer, min_idle_time=int(idle_s * 1000),
                                               start_id=cursor, count=batch)
            if claimed := [e for e in claimed if e and e[1]]:  # entries deleted from the stream come back empty
                self.on_event(f"took over {len(claimed)} entries of {stream} a stopped consumer never acknowledged")
                self._push_entries(r, stream, group, claimed)
            if cursor in ("0-0", b"0-0"):
                return

    def _push_entries(self, r, stream: str, group: str, entries: list) -> None:
        """Enqueue stream entries (id ``<stream>:<entry id>``), then acknowledge them."""
        rows = [(0, json.dumps({"id": f"{stream}:{entry_id}", **_stream_row(fields)}, ensure_ascii=False))
                for entry_id, fields in entries]
        saved, self.fmt = self.fmt, "jsonl"
        try:
            self.push(f"stream {stream}", rows, default_ids=False)
        finally:
            self.fmt = saved
        r.xack(stream, group, *[entry_id for entry_id, _ in entries])


def _stream_row(fields: dict) -> dict:
    row = dict(fields)
    if isinstance(row.get("metadata"), str):
        try:
            row["metadata"] = json.loads(row["metadata"])
        except json.JSONDecodeError:
            pass
    return row
