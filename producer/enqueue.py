"""Put messages on the queue: a pending record each, then the sentiment→reply chain by task name.

Never imports torch or the worker's tasks. Records are written and tasks published in chunks
(an atomic script and a pipelined publish each), so 10,000 messages take a few dozen round trips.
A producer killed between the two leaves its records marked ``unpublished``; the sweep heals them.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from itertools import islice

from celery import Celery

from worker.common.schemas import Message
from worker.common.settings import Settings
from worker.common.store import Store
from worker.jobs.publish import publish


@dataclass
class Enqueued:
    accepted: list[str] = field(default_factory=list)
    duplicates: list[str] = field(default_factory=list)


def retry_failed(ids: Iterable[str], settings: Settings, app: Celery, store: Store | None = None,
                 **task_options) -> Enqueued:
    """Re-queue failed messages from their stored records (no source file needed).

    Each resumes at the stage that failed: sentiment (then reply), or reply alone.
    Ids that are not failed (any more) are reported in ``duplicates``.
    """
    store = store or Store(settings)
    result = Enqueued()
    for mid in ids:
        reset = store.reset_failed(mid)
        if reset is None:
            result.duplicates.append(mid)
            continue
        publish(app, store, [reset], settings.queue, **task_options)
        result.accepted.append(mid)
    return result


def _chunks(items: Iterable[Message], size: int) -> Iterator[list[Message]]:
    it = iter(items)
    while chunk := list(islice(it, size)):
        yield chunk


def enqueue(messages: Iterable[Message], settings: Settings, app: Celery, *, replace: bool = False,
            batch: int = 500, on_batch: Callable[[int], None] | None = None, store: Store | None = None,
            **task_options) -> Enqueued:
    """Enqueue messages; an id that already has a record is skipped unless ``replace``."""
    store = store or Store(settings)
    result = Enqueued()
    for chunk in _chunks(messages, batch):
        accepted, dupes = store.add(chunk, replace=replace)
        publish(app, store, [(rec, "sentiment") for rec in accepted], settings.queue, **task_options)
        result.accepted += [r.id for r in accepted]
        result.duplicates += dupes
        if on_batch:
            on_batch(len(chunk))
    return result
