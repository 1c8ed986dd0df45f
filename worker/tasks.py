"""Thin Celery tasks: fetch the record, call the model, store the outcome.

``sentiment`` labels a message (it never sees other messages); the producer chains
``reply`` after it, which drafts an answer that knows the label and the earlier turns of
the same conversation. Transient errors are retried with exponential backoff; bad input
is not; after the last try the record is ``failed`` with a readable reason.
"""

from __future__ import annotations

import logging
import time

import redis
from celery import Task
from celery.exceptions import Reject, SoftTimeLimitExceeded, TimeLimitExceeded, WorkerLostError
from celery.signals import task_failure

from worker.app import app
from worker.claims import claim, language, replyable, reply_rank, same_language
from worker.errors import BadMessage, GaveUp, ModelError, MoodqError, Transient
from worker.resident import engine
from worker.schemas import FINAL, Record
from worker.settings import get_settings
from worker.store import Store

log = logging.getLogger(__name__)
WAIT_FOR_TURN = 30  # retries (2 s apart) a reply waits for an earlier turn of its conversation to be labeled
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

        rec = store().update(mid, count)
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
    did not load (the worker is stopping, see worker.upkeep) must not fail messages others can run."""
    try:
        return engine()
    except ModelError as exc:
        raise Reject(str(exc), requeue=True) from None


@app.task(base=StageTask, bind=True, name="sentiment",
          soft_time_limit=s.sentiment_soft_limit, time_limit=s.sentiment_hard_limit)
def sentiment(self: StageTask, mid: str) -> str:
    eng = ready_engine()
    rec = self.begin(mid)
    if rec is None or rec.status != "pending":
        self.prioritise_reply(rec.probs if rec else None)
        return mid  # already labeled (by a batch, or an earlier delivery)
    lang = language(rec, eng.prompts, s.max_chars)
    size = self.batch_size(rec, s.sentiment_batch_size)
    wanted = 1 if size == 1 else max(size, s.claim_size)
    batch = [rec] + claim(store(), "sentiment", rec, wanted - 1, same_language(lang, eng.prompts, s.max_chars),
                          chars=s.claim_chars - len(rec.text))
    started = time.time()
    judgements = eng.judge([r.text for r in batch], lang, max_batch=size)
    elapsed_ms = round((time.time() - started) * 1000, 1)
    for r, judgement in zip(batch, judgements):
        store().update(r.id, _labeled(r.text, judgement, lang, eng, started, elapsed_ms, len(batch),
                                      self.request.hostname))
    store().offer("reply", {r.id: reply_rank(s, r.seq, j.probs) for r, j in zip(batch, judgements)})
    self.prioritise_reply(judgements[0].probs)
    return mid


def _labeled(text: str, judgement, lang: str, eng, started: float, elapsed_ms: float, batch: int, node: str | None):
    def change(r: Record) -> None:
        if r.status != "pending" or r.text != text:
            return  # labeled already, or replaced (`enqueue --replace`) while this batch ran
        r.status, r.lang, r.label, r.confidence = "labeled", lang, judgement.label, judgement.confidence
        r.worker = node
        r.probs, r.scores = judgement.probs, judgement.scores
        r.model, r.path, r.prompt_version, r.labeled_at = eng.model_id, eng.path, eng.prompts.version, time.time()
        r.timings.queued_ms = round((started - r.enqueued_at) * 1000, 1)
        r.timings.sentiment_ms, r.timings.sentiment_batch = elapsed_ms, batch
    return change


@app.task(base=StageTask, bind=True, name="reply",
          soft_time_limit=s.reply_soft_limit, time_limit=s.reply_hard_limit)
def reply(self: StageTask, mid: str) -> str:
    eng = ready_engine()
    rec = self.begin(mid)
    if rec is None:
        return mid  # already done (by a batch, or an earlier delivery)
    if rec.status == "pending":
        log.info("reply for %s found it pending again (replaced or retried); its new chain replies", mid)
        return mid
    if rec.status != "labeled" or rec.label is None:
        raise BadMessage(f"reply for {mid!r} found status {rec.status!r}; it needs a label first")
    started = time.time()
    if not s.replies_for(rec.label):
        store().update(mid, _done(None, [], started, 0, self.request.hostname))
        return mid
    # A conversation's reply needs the earlier turns done first: those go one at a time, in turn order.
    size = 1 if rec.conversation_id else self.batch_size(rec, s.reply_batch_size)
    batch = [rec] + claim(store(), "reply", rec, size - 1, replyable(s))
    earlier = _earlier_turns(self, rec, eng, started)
    options = s.draft_options()
    until = time.monotonic() + options["deadline_s"]

    def items():
        """This task's messages, then, while a reply ends in the first half of the deadline, one more
        waiting message per freed slot (continuous batching: the batch stays full)."""
        yield rec.text, rec.label, rec.lang, _history(earlier)
        yield from ((r.text, r.label, r.lang, []) for r in batch[1:])
        while size > 1 and until - time.monotonic() > options["deadline_s"] / 2:
            more = claim(store(), "reply", rec, 1, replyable(s))
            if not more:
                return
            batch.append(more[0])
            yield more[0].text, more[0].label, more[0].lang, []

    for i, draft in eng.drafter.stream(items(), slots=size, until=until, **options):
        r = batch[i]
        if r is not rec and draft.stop == "deadline":
            continue  # a batch-mate the deadline cut: its own reply task, still queued, drafts it afresh
        store().update(r.id, _done(draft, earlier if r is rec else [], started, len(batch), self.request.hostname))
    return mid


def _earlier_turns(task: StageTask, rec: Record, eng, started: float) -> list[Record]:
    """The conversation's earlier turns (history window), each with its reply: a turn labeled but not yet
    replied (triage may have put its reply behind this one) is drafted here first, oldest first, so a
    reply never misses the one before it. A turn not even labeled yet means waiting a little (up to
    ~1 min, then this reply goes ahead without it)."""
    earlier = store().history(rec, s.history_turns)
    if any(h.status == "pending" for h in earlier) and (task.request.retries or 0) < WAIT_FOR_TURN:
        raise task.retry(countdown=2, max_retries=WAIT_FOR_TURN + s.max_retries)
    for i, h in enumerate(earlier):
        if h.status != "labeled":
            continue
        draft = None
        if s.replies_for(h.label):
            draft = eng.draft(h.text, h.label, h.lang, _history(earlier[:i]), **s.draft_options())
            h.reply = draft.text
        store().update(h.id, _done(draft, earlier[:i], started, 1, task.request.hostname))
    return earlier


def _history(turns: list[Record]) -> list[tuple[str, str | None]]:
    """Earlier turns as the reply model sees them: the customer's messages, and the replies drafted for
    them only with MOODQ_HISTORY_REPLIES (drafts are not necessarily what the customer was sent, and the
    small model copies them)."""
    return [(h.text, h.reply if s.history_replies else None) for h in turns]


def _done(draft, earlier: list[Record], started: float, batch: int, node: str | None):
    def change(r: Record) -> None:
        if r.status != "labeled":
            return
        r.status, r.finished_at, r.worker = "done", time.time(), node
        r.reply = draft.text if draft else None
        r.reply_truncated = draft.truncated if draft else None
        r.context_ids = [h.id for h in earlier]
        r.timings.reply_ms = round((time.time() - started) * 1000, 1)
        r.timings.reply_batch = batch or None
    return change
