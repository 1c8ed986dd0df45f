"""Flower, as `moodq flower` runs it: the Celery dashboard on moodq's app, with its Prometheus
``/metrics`` behind the same login as the rest (Flower itself serves /metrics to anyone; it names
queues, workers and task counts). ``/healthcheck`` stays open for probes.
"""

from __future__ import annotations

import sys

from celery.bin.celery import main as celery_main
from flower.views.monitor import Metrics
from tornado import web


def protect_metrics() -> None:
    if not getattr(Metrics.get, "__moodq_protected__", False):
        Metrics.get = web.authenticated(Metrics.get)
        Metrics.get.__moodq_protected__ = True


if __name__ == "__main__":
    protect_metrics()
    sys.argv = ["celery", "-A", "worker.jobs.app", "flower", *sys.argv[1:]]
    sys.exit(celery_main())
