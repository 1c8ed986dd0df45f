"""What both Celery tasks share: the retry and time-limit policy, counting deliveries, the failure record
with a reason a person can read, and the process's record store and model."""

from __future__ import annotations

import logging
import time

import redis
from celery import Task
from celery.exceptions import (
    Reject,
    Retry,
    SoftTimeLimitExceeded,
    TimeLimitExceeded,
    WorkerLostError,
)
from celery.signals import task_failure

from worker.common.errors import BadMessage, GaveUp, ModelError, MoodqError, Transient
from worker.common.schemas import FINAL, Record
from worker.common.settings import get_settings
from worker.common.store import Store
from worker.jobs.resident import engine

log = logging.getLogger(__name__)
s = get_settings()
_store: Store | None = None


def store() -> Store:
    global _store
    if _store is None:
        _store = Store(s)
    return _store


def describe(exc: BaseException, task: Task) -> str:
    """A reason a person can read."""
    if isinstance(exc, SoftTimeLimitExceeded):
        return f"{task.name} exceeded its time limit of {task.soft_time_limit:g} s"
    if isinstance(exc, WorkerLostError):
        return (f"{task.name}: the worker process died on this message {1 + task.max_retries} times "
                f"({exc}); not retried again")
    if isinstance(exc, TimeLimitExceeded):
        return f"{task.name} was killed at its hard time limit of {task.time_limit:g} s"
    if isinstance(exc, (redis.ConnectionError, redis.TimeoutError)):
        return f"Redis unavailable: {exc}"
    text = str(exc) or type(exc).__name__
    return text if isinstance(exc, (BadMessage, Transient)) else f"{type(exc).__name__}: {text}"


class StageTask(Task):
    """Retries, limits and failure records shared by both stages."""

    autoretry_for = (Transient, SoftTimeLimitExceeded, redis.ConnectionError, redis.TimeoutError)
    dont_autoretry_for = (BadMessage, GaveUp)
    retry_backoff = 1
    retry_backoff_max = int(s.retry_backoff_max)
    retry_jitter = True
    max_retries = s.max_retries
    throws = (BadMessage, GaveUp)  # expected: logged in one line, no traceback
    acks_late = True
    reject_on_worker_lost = True
    # A pool process that dies on a message (SIGKILL, out of memory) turns into a retry, so
    # max_retries also caps a message that kills its worker every time (Celery >= 5.7).
    retry_on_worker_lost = True
    default_retry_delay = 1
    typing = False

    def before_start(self, task_id, args, kwargs):
        # Task.retry(max_retries=...) leaves its override on the task object, which every task of this
        # process shares; Celery's autoretry clears it, a retry raised by hand does not.
        self.__dict__.pop("override_max_retries", None)

    def wait(self, countdown: float, why: str):
        """Run this task again in ``countdown`` s, as :meth:`retry` does, without counting a retry: waiting
        for another task is no failure, and must not use up max_retries, make the message run alone, or
        make a whole-worker redelivery look like a retry."""
        again = self.signature_from_request(self.request, countdown=countdown, retries=self.request.retries or 0)
        try:
            again.apply_async()
        except Exception as exc:
            raise Reject(exc, requeue=False) from exc
        raise Retry(why, when=countdown, sig=again)

    def on_failure(self, exc, task_id, args, kwargs, einfo):
        mid = args[0] if args else kwargs.get("mid")
        reason = describe(exc, self)
        if not isinstance(mid, str):
            log.error("%s task without a usable message id (%.80r): %s", self.name, mid, reason)
            return

        def fail(rec: Record) -> None:
            if rec.status in FINAL:
                return
            rec.status, rec.error, rec.error_stage, rec.finished_at = "failed", reason, self.name, time.time()

        try:
            if store().update(mid, fail) is None:
                log.error("no record for message %s; failure not stored: %s", mid, reason)
        except BadMessage as corrupt:  # the stored record itself is unreadable: keep a failed one instead
            store().fail_corrupt(mid, str(corrupt))
        except (redis.RedisError, MoodqError) as err:
            log.error("could not store failure of %s (%s): %s", mid, reason, err)

    def begin(self, mid: str) -> Record | None:
        """Count this delivery; None when the record is already final (a repeated delivery).

        A pool process dying on a message becomes a retry (``retry_on_worker_lost``). When the
        whole worker dies, Redis redelivers the message after the visibility timeout without
        counting it: deliveries beyond ``1 + retries`` are those, and after ``max_redeliveries``
        the message is failed instead of killing workers forever.
        """
        if not isinstance(mid, str) or not mid:
            raise BadMessage(f"a {self.name} task needs a message id (a string), got {mid!r:.80}")
        node = self.request.hostname

        def count(rec: Record) -> None:
            rec.attempts[self.name] = rec.attempts.get(self.name, 0) + 1
            if rec.status not in FINAL:
                rec.worker = node

        def not_claimable(pipe, rec: Record) -> None:  # running now: no other task may take it on
            pipe.zrem(store().k.todo(self.name), mid)

        rec = store().update(mid, count, not_claimable)
        if rec is None:
            raise BadMessage(f"no record for message id {mid!r} (expired or purged?)")
        if rec.status in FINAL:
            return None
        if self.redeliveries(rec) > s.max_redeliveries:
            raise GaveUp(f"{self.name} was interrupted {self.redeliveries(rec)} times on this message "
                         f"(worker killed, out of memory or crashed); not retried after "
                         f"{s.max_redeliveries} redeliveries")
        return rec

    def redeliveries(self, rec: Record) -> int:
        """Deliveries nobody counted as a retry: the whole worker died (Redis redelivered it)."""
        return rec.attempts.get(self.name, 0) - 1 - (self.request.retries or 0)

    def prioritise_reply(self, probs: dict[str, float] | None) -> None:
        """Backlog triage: the chained reply of a more negative message is served sooner."""
        chain, priority = self.request.chain, s.reply_priority(probs)
        if chain and priority is not None:
            chain[-1].setdefault("options", {})["priority"] = priority

    def batch_size(self, rec: Record, configured: int) -> int:
        """A message on its second try runs alone: if it is what kills workers, it takes no others down."""
        return 1 if self.request.retries or self.redeliveries(rec) > 0 else configured


@task_failure.connect
def _record_worker_lost(sender=None, task_id=None, exception=None, args=None, kwargs=None, einfo=None, **_):
    """When the pool process died on every try, Celery's main process gives up without calling
    ``on_failure``; write the failed record here."""
    if isinstance(exception, WorkerLostError) and isinstance(sender, StageTask):
        sender.on_failure(exception, task_id, args or (), kwargs or {}, einfo)


def ready_engine():
    """This process's model, or the message goes back to the queue uncounted: a process whose model
    did not load (the worker is stopping, see worker.jobs.upkeep) must not fail messages others can run."""
    try:
        return engine()
    except ModelError as exc:
        raise Reject(str(exc), requeue=True) from None
