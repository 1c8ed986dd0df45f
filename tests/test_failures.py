"""Retries, time limits and bad input on a real worker with test-only fault injection (tests/faults.py)."""

from __future__ import annotations

import time

import pytest

from tests.conftest import FINISHED, eventually, send, wait_final

pytestmark = [pytest.mark.worker, pytest.mark.model]


def test_transient_failure_is_retried_then_succeeds(small_fault_worker, store):
    """A message whose first two attempts raise a transient error ends done on the third (its label: the one
    the text names, tests/faults.py)."""
    ids = send(small_fault_worker, {"id": "flaky-1", "text": "[transient:2] [as:positive] I love it"})
    rec = wait_final(store, ids)["flaky-1"]
    assert rec.status in FINISHED, rec.error
    assert rec.attempts["sentiment"] == 3 and rec.label == "positive"


def test_time_limit_is_retried_then_failed_and_worker_keeps_serving(small_fault_worker, store):
    """A task past its soft limit is retried max_retries times, then failed with the reason; the next message works."""
    ids = send(small_fault_worker, {"id": "slow-1", "text": "[slow] this takes forever"},
                {"id": "after-slow", "text": "Thanks, all good now."})
    recs = wait_final(store, ids)
    slow = recs["slow-1"]
    assert slow.status == "failed"
    assert slow.error == f"sentiment exceeded its time limit of {small_fault_worker.sentiment_soft_limit:g} s"
    assert slow.error_stage == "sentiment" and slow.attempts["sentiment"] == 3  # 1 + max_retries (2)
    assert slow.finished_at and slow.finished_at >= slow.enqueued_at
    assert recs["after-slow"].status in FINISHED


def test_bad_input_is_failed_once_with_its_reason(small_fault_worker, store):
    """Bad input is not retried: too long for the worker's limit, or a language without prompts."""
    ids = send(small_fault_worker, {"id": "bad-long", "text": "x" * 61},
                {"id": "bad-lang", "text": "Bonjour tout le monde", "lang": "fr"})
    recs = wait_final(store, ids)
    assert recs["bad-long"].status == "failed" and recs["bad-long"].attempts["sentiment"] == 1
    assert recs["bad-long"].error == "text is 61 characters, over the limit of 60"
    assert recs["bad-lang"].status == "failed" and recs["bad-lang"].attempts["sentiment"] == 1
    assert recs["bad-lang"].error == "no prompts for language 'fr' (have zh, en)"


def test_a_reply_leased_by_a_task_that_died_is_drafted_once_the_lease_lapses(small_fault_worker, small_model, store):
    """A reply batch's task that is killed releases no lease; the message's own reply task waits while the
    lease lasts (a batch's hard limit + a margin in production; a few seconds here), then drafts the reply itself."""
    lapse = 3.0 * small_model.slowness  # longer than labeling the message takes on this host (checked below)
    store.r.set(store.k.lease("reply", "lapsed-1"), "a-task-that-died", px=int(lapse * 1000))
    t0 = time.time()
    send(small_fault_worker, {"id": "lapsed-1", "text": "Broken again and nobody answers."})
    rec = wait_final(store, ["lapsed-1"])["lapsed-1"]
    assert rec.labeled_at < t0 + lapse - 1, "labeled after the lease lapsed: this run shows nothing"
    assert rec.status in FINISHED and rec.attempts == {"sentiment": 1, "reply": 1}, rec  # waits are not attempts
    assert rec.finished_at >= t0 + lapse - 0.1, (rec.finished_at - t0, "drafted while the lease held")
    eventually(lambda: not store.r.exists(store.k.lease("reply", "lapsed-1")), what="its own lease released")
