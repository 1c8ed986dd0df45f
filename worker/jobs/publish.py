"""Putting tasks on the queue, by name: the chain every message runs, a reply alone, and the sweep
that publishes again what a producer wrote but never sent.

Never imports torch or the tasks themselves; the producer and the workers' sweep both use it.
"""

from __future__ import annotations

import logging

from celery import Celery
from celery.canvas import Signature

from worker.common.schemas import Record
from worker.common.settings import Settings
from worker.common.store import Store

log = logging.getLogger(__name__)


def shown(mid: str, text: str) -> str:
    """What Flower and the logs show for a task: the id and the first 40 characters, never the whole text."""
    return repr((mid, text[:40] + ("…" if len(text) > 40 else "")))


def chain_for(app: Celery, mid: str, queue: str, text: str = "", **options) -> Signature:
    """The chain every message runs: sentiment, then reply.

    Written as the first task carrying the rest in its ``chain`` option (what ``chain()``
    sends, in protocol 2), because ``chain.apply_async`` drops the ``producer`` argument
    and with it the batched publish.
    """
    reply = app.signature("reply", queue=queue, argsrepr=shown(mid, text), **options)
    return app.signature("sentiment", args=(mid,), queue=queue, argsrepr=shown(mid, text), **options).set(chain=[reply])


def reply_for(app: Celery, mid: str, queue: str, text: str = "", **options) -> Signature:
    return app.signature("reply", args=(mid,), queue=queue, argsrepr=shown(mid, text), **options)


def publish(app: Celery, store: Store, records: list[tuple[Record, str]], queue: str, **options) -> None:
    """Publish each record's task (``stage`` "sentiment" runs the whole chain, "reply" the reply alone)
    in one pipelined batch, then clear their ``unpublished`` marks."""
    if not records:
        return
    with app.producer_or_acquire() as producer, producer.batch(max_size=2 * len(records)):
        for rec, stage in records:
            make = chain_for if stage == "sentiment" else reply_for
            make(app, rec.id, queue, rec.text, **options).apply_async(producer=producer)
    store.published([rec.id for rec, _ in records])


def sweep(settings: Settings, app: Celery, store: Store, older_than_s: float | None = None,
          limit: int = 1000) -> dict[str, int]:
    """Publish again the tasks of records whose producer died between writing them and publishing.

    Only ids still marked ``unpublished`` after ``older_than_s`` (a producer clears its marks right
    after publishing, within seconds), so a long legitimate backlog is never doubled. Each such
    record counts it in ``republished``. Returns counts: republished, final (nothing to do), gone.
    """
    older = settings.sweep_after_s if older_than_s is None else older_than_s
    def bump(rec: Record) -> None:
        if rec.status in ("pending", "labeled"):
            rec.republished += 1

    counts = {"republished": 0, "final": 0, "gone": 0}
    again, done = [], []
    for mid in store.take_unpublished(older, limit):  # each id to one sweeper, though every worker sweeps
        rec = store.update(mid, bump)
        if rec is not None and rec.status in ("pending", "labeled"):
            again.append((rec, "sentiment" if rec.status == "pending" else "reply"))
        else:
            counts["gone" if rec is None else "final"] += 1
            done.append(mid)
    publish(app, store, again, settings.queue)  # one pipelined batch, then their marks are cleared
    store.published(done)
    counts["republished"] = len(again)
    if again:
        log.warning("sweep: published the tasks of %d records again (their producer never did), e.g. %s",
                    len(again), again[0][0].id)
    return counts

