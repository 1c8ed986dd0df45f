"""The Celery queue, through kombu's public channel API: how deep it is, and emptying it.

kombu keeps a queue as one Redis list per priority level plus binding keys; their names are
kombu's business, so moodq never spells them out.
"""

from __future__ import annotations

from celery import Celery


def depth(app: Celery, queue: str) -> int:
    """Tasks waiting in ``queue``, all priority levels together."""
    with app.connection_for_read() as conn:
        return conn.default_channel.queue_declare(queue).message_count


def remove(app: Celery, queue: str) -> int:
    """Drop every waiting task of ``queue`` and its bindings (tests, benches); returns how many were dropped."""
    with app.connection_for_write() as conn:
        channel = conn.default_channel
        dropped = channel.queue_purge(queue) or 0
        channel.queue_delete(queue)
        return dropped
