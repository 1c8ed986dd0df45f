"""The Celery app and its configuration; no task logic here.

The producer imports this module to send tasks by name; ``include`` makes only the
worker import ``worker.jobs.tasks`` (and with it torch).
"""

from __future__ import annotations

import ssl

from celery import Celery

from worker.common.settings import Settings, get_settings
from worker.jobs.upkeep import Upkeep


def make_app(settings: Settings | None = None) -> Celery:
    s = settings or get_settings()
    app = Celery("moodq", broker=s.redis_url, include=["worker.jobs.tasks"])
    visibility = s.broker_visibility_timeout()
    app.conf.update(
        # JSON only: a pickle payload is refused, never executed.
        task_serializer="json", accept_content=["json"], result_serializer="json", event_serializer="json",
        # Records in our own store are the results; Celery's result backend is not used.
        task_ignore_result=True, result_backend=None,
        # A task is acknowledged after it finishes; a killed worker's message comes back.
        task_acks_late=True, task_reject_on_worker_lost=True, worker_prefetch_multiplier=1,
        task_default_queue=s.queue, task_create_missing_queues=True,
        # Ten priority levels, 0 served first: sentiment tasks at 0, replies 1-9 by negativity (triage).
        # A dead worker's unacknowledged tasks are looked for every min(10 s, visibility timeout / 4)
        # (kombu's default, 10 s x throttle 10, lets them wait up to 100 s past the timeout).
        broker_transport_options={"visibility_timeout": visibility, "priority_steps": list(range(10)),
                                  "unacked_restore_interval": min(10.0, visibility / 4), "unacked_restore_throttle": 1},
        broker_connection_retry_on_startup=True,
        # Publishing (enqueue, the chained reply, retries) rides out a Redis restart of ~30 s.
        task_publish_retry_policy={"max_retries": 20, "interval_start": 0.2, "interval_step": 0.5, "interval_max": 2},
        # The model loads in each pool process at start; give it time (Celery's default is 4 s).
        worker_proc_alive_timeout=s.model_load_timeout,
        # Events for Flower. No "sent" events: one more round trip per enqueued task.
        worker_send_task_events=True, task_send_sent_event=False,
    )
    app.steps["worker"].add(Upkeep)  # heartbeat, sweep, stop on a model that does not load
    if s.redis_url.startswith("rediss://") and "ssl_cert_reqs" not in s.redis_url:
        app.conf.broker_use_ssl = {"ssl_cert_reqs": ssl.CERT_REQUIRED}
    return app


app = make_app()
