"""Thin Celery tasks: fetch the record, call the model, store the outcome.

``sentiment`` labels a message (it never sees other messages); the producer chains
``reply`` after it, which drafts an answer that knows the label and the earlier turns of
the same conversation. Retries, limits and failure records: worker.jobs.stage.
"""

from __future__ import annotations

import logging
import time

import redis
from celery.exceptions import SoftTimeLimitExceeded

from worker.common.errors import BadMessage
from worker.common.schemas import Record
from worker.jobs.app import app
from worker.jobs.claims import claim, language, reply_rank, replyable, same_language
from worker.jobs.stage import StageTask, ready_engine, s, store
from worker.quality.replying import Reply, Request, checked, slots_for

log = logging.getLogger(__name__)
WAIT_FOR_TURN = 30  # retries (2 s apart) a reply waits for an earlier turn of its conversation to be labeled


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
    batch = [rec]
    if size > 1:  # as many waiting messages as this process is measured to label well inside the limit
        cost = lambda r: eng.pace.read_chars(lang, len(r.text))  # noqa: E731  (a long message: what scoring reads)
        chars = min(s.claim_chars, eng.pace.claim_chars(lang, CLAIM_SHARE * s.sentiment_soft_limit)) - cost(rec)
        batch += claim(store(), "sentiment", rec, max(size, s.claim_size) - 1,
                       same_language(lang, eng.prompts, s.max_chars), chars=chars, cost=cost)
    done = _label(eng, batch, lang, size, self.request.hostname, time.time() + STOP_SHARE * s.sentiment_soft_limit)
    store().offer("reply", {r.id: reply_rank(s, r.seq, done[i].probs) for i, r in enumerate(batch)  # what a batch
                            if i in done and replyable(s)(r, label=done[i].label)})  # may take
    self.prioritise_reply(done[0].probs)
    return mid


CLAIM_SHARE = 0.4  # a sentiment claim is sized to take this share of the soft limit at the measured pace
STOP_SHARE = 0.8  # ... and stops taking passes past this share: the rest go back to the waiting list


def _label(eng, batch: list[Record], lang: str, size: int, node: str | None, stop_at: float) -> dict[int, object]:
    """Label ``batch`` (its first message is the task's own) pass by pass, storing each pass's labels as
    it ends. Past ``stop_at`` (STOP_SHARE of the soft limit), or at the limit itself, the claimed messages
    not yet labeled go back to the waiting list, neither failed nor counted as an attempt: their own
    tasks label them. Only the task's own message unlabeled at the limit makes the task retry."""
    started = time.time()
    done: dict[int, object] = {}
    try:
        for bucket, judgements in eng.passes([r.text for r in batch], lang, max_batch=size):
            elapsed_ms = round((time.time() - started) * 1000, 1)
            for i, judgement in zip(bucket, judgements):
                store().update(batch[i].id, _labeled(batch[i].text, judgement, lang, eng, started, elapsed_ms,
                                                     len(bucket), node))
                done[i] = judgement
            if len(done) < len(batch) and time.time() > stop_at:
                log.warning("sentiment: %d of %d claimed messages labeled by %.0f %% of the soft limit; "
                            "the rest go back to the waiting list", len(done), len(batch), 100 * STOP_SHARE)
                break
    except SoftTimeLimitExceeded:
        if 0 not in done:
            raise
    finally:
        store().give_back("sentiment", {r.id: r.seq for i, r in enumerate(batch) if i and i not in done})
    return done


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
    lease = (self.request.id, s.reply_hard_limit + LEASE_MARGIN_S)
    valid = isinstance(mid, str) and bool(mid)
    holder = store().lease("reply", mid, *lease) if valid else self.request.id
    if holder != self.request.id:  # another task took it into its batch: not drafted twice
        log.info("reply for %s: task %s is drafting it in its batch; checking again in %g s", mid, holder, LEASE_POLL_S)
        self.wait(LEASE_POLL_S, f"task {holder} is drafting this reply in its batch")
    leased: list[str] = [mid] if valid else []
    try:
        return _reply(self, mid, eng, lease, leased)
    finally:  # stored, skipped or interrupted: their own tasks now find them done, or draft them
        try:
            store().release("reply", leased)
        except redis.RedisError as exc:  # the leases lapse on their own; keep the task's own outcome
            log.warning("reply for %s: could not release %d leases (%s); they lapse on their own", mid, len(leased), exc)


def _reply(self: StageTask, mid: str, eng, lease: tuple[str, float], leased: list[str]) -> str:
    """The reply task's work while it holds its message's lease; ``leased`` gets every message it takes on
    (leased to it too: their own tasks wait instead of drafting them again)."""
    rec = self.begin(mid)
    if rec is None:
        return mid  # already done (by a batch, or an earlier delivery)
    if rec.status == "pending":
        log.info("reply for %s found it pending again (replaced or retried); its new chain replies", mid)
        return mid
    if rec.status != "labeled" or rec.label is None:
        raise BadMessage(f"reply for {mid!r} found status {rec.status!r}; it needs a label first")
    started, node = time.time(), self.request.hostname
    if not s.replies_for(rec.label):
        store().update(mid, _done(rec, None, [], started, 0, node))
        return mid
    options = s.draft_options()
    until = time.monotonic() + options["deadline_s"]  # one budget for the task, earlier turns included
    # A reply that shows the earlier replies (MOODQ_HISTORY_REPLIES) needs them drafted first, in turn order,
    # one at a time; otherwise a conversation's turn is batched like any message, with its customer history.
    ordered = bool(rec.conversation_id) and s.history_replies
    size = 1 if ordered else self.batch_size(rec, s.reply_batch_size)
    if size > 1:  # as many at a time as let a full-length reply end well inside the deadline, at the measured pace
        size = slots_for(eng, size, s.max_reply_tokens, options["deadline_s"])
    batch = [rec] + claim(store(), "reply", rec, size - 1, replyable(s), keep_rejected=False, lease=lease)
    leased += [r.id for r in batch[1:]]
    earlier = {rec.id: _earlier_turns(self, rec, eng, started, until, lease, leased) if ordered
               else store().history(rec, s.history_turns)}
    outcome = "done"
    for i, made in checked(eng, _requests(batch, earlier, size, until, eng, lease, leased), slots=size, until=until,
                           redrafts=s.redrafts, **options):
        r = batch[i]
        if r is not rec and made.draft.stop == "deadline":
            continue  # a batch-mate the deadline cut: its own reply task drafts it afresh once the lease is released
        stored = store().update(r.id, _done(r, made, earlier.get(r.id, []), started, len(batch), node))
        if r is rec and stored is not None and stored.status == "review":
            outcome = f"needs review: {', '.join(stored.flags)}"
    return f"{mid}: {outcome}"  # what Flower shows as the task's result


LEASE_POLL_S = 2  # a reply task whose message another task's batch is drafting checks again this often
LEASE_MARGIN_S = 5  # leases outlive their task's hard limit by this much (a killed task releases none)


def _requests(batch: list[Record], earlier: dict[str, list[Record]], size: int, until: float, eng,
              lease: tuple[str, float], leased: list[str]):
    """The task's messages (its own first), then, while a full-length reply would still end before the
    deadline at the measured pace, one more waiting message per freed slot (continuous batching: the batch
    stays full). ``batch`` and ``earlier`` grow with what is taken on."""
    own = batch[0]
    for r in list(batch):
        if r.id not in earlier:
            earlier[r.id] = store().history(r, s.history_turns) if r.conversation_id else []
        yield Request(r.text, r.label, r.lang, _history(earlier[r.id]), r.confidence)
    while size > 1 and until - time.monotonic() > eng.pace.reply_seconds(s.max_reply_tokens, size):
        more = claim(store(), "reply", own, 1, replyable(s), keep_rejected=False, lease=lease)
        if not more:
            return
        batch.append(more[0])
        leased.append(more[0].id)
        earlier[more[0].id] = store().history(more[0], s.history_turns) if more[0].conversation_id else []
        yield Request(more[0].text, more[0].label, more[0].lang, _history(earlier[more[0].id]), more[0].confidence)


def _earlier_turns(task: StageTask, rec: Record, eng, started: float, until: float,
                   lease: tuple[str, float], leased: list[str]) -> list[Record]:
    """The conversation's earlier turns (history window), each with its reply: a turn labeled but not yet
    replied (triage may have put its reply behind this one) is drafted here first, oldest first, within
    the task's own time budget, so a reply never misses the one before it. A turn not even labeled yet
    means waiting a little (up to ~1 min, then this reply goes ahead without it)."""
    earlier = store().history(rec, s.history_turns)
    if any(h.status == "pending" for h in earlier) and (task.request.retries or 0) < WAIT_FOR_TURN:
        raise task.retry(countdown=2, max_retries=WAIT_FOR_TURN + s.max_retries)
    for i, h in enumerate(earlier):
        if h.status != "labeled":
            continue
        holder = store().lease("reply", h.id, *lease)
        if holder != lease[0]:  # its own task is drafting it: wait for that, not draft it twice
            task.wait(LEASE_POLL_S, f"task {holder} is drafting an earlier turn ({h.id})")
        leased.append(h.id)
        made = None
        if s.replies_for(h.label):
            request = Request(h.text, h.label, h.lang, _history(earlier[:i]), h.confidence)
            _, made = next(checked(eng, [request], slots=1, until=until, redrafts=s.redrafts, **s.draft_options()))
            if made.draft.stop == "deadline":
                break  # out of time: that turn stays labeled, for its own task to draft in full
        stored = store().update(h.id, _done(h, made, earlier[:i], started, 1, task.request.hostname))
        if stored is not None and stored.reply is not None:
            h.reply = stored.reply
    return earlier


def _history(turns: list[Record]) -> list[tuple[str, str | None]]:
    """Earlier turns as the reply model sees them: the customer's messages, and the replies drafted for
    them only with MOODQ_HISTORY_REPLIES (drafts are not necessarily what the customer was sent, and the
    small model copies them)."""
    return [(h.text, h.reply if s.history_replies else None) for h in turns]


def _done(read: Record, made: Reply | None, earlier: list[Record], started: float, batch: int, node: str | None):
    """Store the reply drafted from ``read``: ``done``, or ``review`` while a reply rule still flags it. Nothing
    is written when the message was replaced (and maybe labeled again) since it was read: that reply is not
    for the text the record now holds, and the new text's own chain replies to it."""
    def change(r: Record) -> None:
        if r.status != "labeled" or r.text != read.text or r.labeled_at != read.labeled_at:
            return
        r.status = "review" if made and made.flags else "done"
        r.finished_at, r.worker = time.time(), node
        r.reply = made.draft.text if made else None
        r.reply_truncated = made.draft.truncated if made else None
        r.flags, r.drafts = (list(made.flags), made.drafts) if made else ([], None)
        r.context_ids = [h.id for h in earlier]
        r.timings.reply_ms = round((time.time() - started) * 1000, 1)
        r.timings.reply_batch = batch or None
    return change
