"""Put messages on the queue: a pending record each, then the sentiment→reply chain by task name.

Never imports torch or the worker's tasks. Records are created and tasks published in
batches (a Redis pipeline each), so 10,000 messages take a few dozen round trips.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from itertools import islice

from celery import Celery
from celery.canvas import Signature

from worker.schemas import Message
from worker.settings import Settings
from worker.store import Store


@dataclass
class Enqueued:
    accepted: list[str] = field(default_factory=list)
    duplicates: list[str] = field(default_factory=list)


def pipeline_for(app: Celery, mid: str, queue: str, text: str = "", **options) -> Signature:
    """The chain every message runs: sentiment, then reply.

    Written as the first task carrying the rest in its ``chain`` option (what ``chain()``
    sends, in protocol 2), because ``chain.apply_async`` drops the ``producer`` argument
    and with it the batched publish.
    """
    reply = app.signature("reply", queue=queue, **options)
    shown = repr((mid, text[:40] + ("…" if len(text) > 40 else "")))  # what Flower and logs show
    return app.signature("sentiment", args=(mid,), queue=queue, argsrepr=shown, **options).set(chain=[reply])


def retry_failed(ids: Iterable[str], settings: Settings, app: Celery, **task_options) -> Enqueued:
    """Re-queue failed messages from their stored records (no source file needed).

    Each resumes at the stage that failed: sentiment (then reply), or reply alone.
    Ids that are not failed (any more) are reported in ``duplicates``.
    """
    store = Store(settings)
    result = Enqueued()
    with app.producer_or_acquire() as producer:
        for mid in ids:
            reset = store.reset_failed(mid)
            if reset is None:
                result.duplicates.append(mid)
                continue
            rec, stage = reset
            if stage == "reply":
                sig = app.signature("reply", args=(mid,), queue=settings.queue, **task_options)
            else:
                sig = pipeline_for(app, mid, settings.queue, rec.text, **task_options)
            sig.apply_async(producer=producer)
            result.accepted.append(mid)
    return result


def _chunks(items: Iterable[Message], size: int) -> Iterator[list[Message]]:
    it = iter(items)
    while chunk := list(islice(it, size)):
        yield chunk


def enqueue(messages: Iterable[Message], settings: Settings, app: Celery, *, replace: bool = False,
            batch: int = 500, on_batch: Callable[[int], None] | None = None, **task_options) -> Enqueued:
    """Enqueue messages; an id that already has a record is skipped unless ``replace``."""
    store = Store(settings)
    result = Enqueued()
    for chunk in _chunks(messages, batch):
        accepted, dupes = store.add(chunk, replace=replace)
        with app.producer_or_acquire() as producer, producer.batch(max_size=2 * batch):
            for rec in accepted:
                pipeline_for(app, rec.id, settings.queue, rec.text, **task_options).apply_async(producer=producer)
        result.accepted += [r.id for r in accepted]
        result.duplicates += dupes
        if on_batch:
            on_batch(len(chunk))
    return result
