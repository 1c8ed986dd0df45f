"""Slow hosts degrade, they do not fail: claims and reply batches sized from the measured pace, and a
claim that runs out of time stores what it labeled and hands the rest back."""

from __future__ import annotations

import time
from types import SimpleNamespace

import pytest
from celery.exceptions import SoftTimeLimitExceeded

from worker.engine import probe
from worker.engine.pace import Pace
from worker.engine.scoring import Judgement


def test_claims_shrink_with_the_measured_pace():
    pace = Pace()
    pace.scored("zh", 1000, 1.0)  # 1 ms per character
    assert pace.claim_chars("zh", 12.0) == 12_000
    pace.scored("zh", 100, 1.0)  # ten times slower now: the average moves most of the way
    assert 1000 < pace.claim_chars("zh", 12.0) < 12_000 * 0.75
    assert pace.claim_chars("en", 12.0) == pace.claim_chars("zh", 12.0)  # an unmeasured language: the slowest


def test_a_long_message_costs_what_the_scoring_pass_reads():
    """Scoring reads at most max_text_tokens of a message: a 2,000-character one costs that many tokens' worth of
    characters, both when a pass is measured and when a claim counts it."""
    pace = Pace(max_text_tokens=160)
    assert pace.read_chars("en", 2000) == 2000  # characters per token not measured yet: all of it
    pace.scored("en", 640, 0.64, chars_per_token=4.0)  # 1 ms per character read; en runs 4 characters a token
    assert pace.read_chars("en", 2000) == 640 and pace.read_chars("en", 300) == 300
    assert pace.read_chars("zh", 2000) == 2000  # per language
    pace.max_text_tokens = 0  # reads whole messages
    assert pace.read_chars("en", 2000) == 2000


@pytest.mark.model
def test_scoring_measures_the_part_of_a_long_message_it_read(engine):
    """A pass over one long message records its rate per character read, not per character of the message:
    at that rate the whole message would take several times the pass (which read 64 or 96 of its ~530 tokens)."""
    text = "The parcel came late and the box was crushed, but the support team was kind. " * 30  # ~2,300 characters
    own, real = Pace(max_text_tokens=engine.scorer.max_text_tokens), engine.scorer.pace
    engine.scorer.pace = own
    try:
        t0 = time.perf_counter()
        engine.judge([text], "en")
        seconds = time.perf_counter() - t0
    finally:
        engine.scorer.pace = real
    read = own.read_chars("en", len(text))
    assert own.max_text_tokens and len(text) / 10 < read < len(text) / 2, read
    assert own.score_seconds("en", len(text)) > 2 * seconds and own.score_seconds("en", read) <= seconds


def test_reply_batches_fit_a_full_reply_in_the_budget():
    pace = Pace()
    pace.prefilled(100, 0.2)
    for rows, step in ((1, 0.05), (4, 0.08), (8, 0.12)):
        pace.stepped(rows, step)
    # prompts of 135 tokens (150 assumed, 100 measured, averaged) at 2 ms a token: 0.27 s a prefill
    assert pace.reply_slots(8, 128, 30.0) == 8  # 128 x 0.12 s + 8 prefills = 17.5 s
    assert pace.reply_slots(8, 128, 15.0) == 4  # 8 rows no longer fit; 4 do (11.3 s)
    assert pace.reply_slots(8, 128, 1.0) == 1  # nothing fits: one at a time, the least any host can do
    assert pace.step_seconds(16) == pytest.approx(0.24)  # beyond what was measured: at most proportional


def test_priors_come_from_the_probe_table_before_anything_is_measured():
    rows = probe.Rows(score=640, batch=8)
    table = {"float32": {str(m): {"ms": 10.0, "error": 0.0, "note": ""} for m in rows.measured()},
             "int8-fbgemm": {str(m): {"ms": 1.0, "error": 0.01, "note": ""} for m in rows.measured()}}
    fast = Pace(probe.Plan("float32", "int8-fbgemm", "int8-fbgemm", table=table, rows=rows, layers=24))
    slow = Pace(probe.Plan("float32", "float32", "float32", table=table, rows=rows, layers=24))
    assert slow.step_seconds(8) == pytest.approx(10 * fast.step_seconds(8))
    assert fast.claim_chars("zh", 10) == pytest.approx(10 * slow.claim_chars("zh", 10), rel=0.01)


class FakePassesEngine:
    """TEST-ONLY stand-in for the model (the hand-back logic does not depend on it): one pass per message,
    each judged positive, the second pass slow or interrupted as the test asks."""

    def __init__(self, slow_s: float = 0.0, interrupt_at: int | None = None):
        self.slow_s, self.interrupt_at = slow_s, interrupt_at
        self.model_id, self.path = "fake", "fake"
        self.prompts = SimpleNamespace(version="fake")

    def passes(self, texts, lang, max_batch=16):
        for i in range(len(texts)):
            if i == self.interrupt_at:
                raise SoftTimeLimitExceeded()
            if i == 1:
                time.sleep(self.slow_s)
            yield [i], [Judgement("positive", 0.9, {"positive": 0.9, "negative": 0.1}, {})]


@pytest.fixture
def own_store(settings, monkeypatch):
    """The tasks' store on a queue of its own (no worker consumes it, so none claims these messages);
    its records are removed at the end."""
    from worker.common.keys import STATUSES
    from worker.common.settings import load_settings
    from worker.common.store import Store
    from worker.jobs import stage

    st = Store(load_settings(queue=f"{settings.queue}-pacing"))
    monkeypatch.setattr(stage, "_store", st)
    yield st
    ids = st.ids()
    pipe = st.r.pipeline()
    for mid in [i for i in ids if i.startswith("handback-")]:
        pipe.delete(st.k.rec(mid)).zrem(st.k.index, mid).zrem(st.k.todo("sentiment"), mid)
        for status in STATUSES:
            pipe.srem(st.k.status(status), mid)
    pipe.delete(st.k.todo("sentiment")).execute()


def _pending(store, n, tag):
    from worker.common.schemas import Message

    records, _ = store.add([Message(id=f"{tag}-{i}", text=f"message {i}") for i in range(n)], replace=True)
    ids = [r.id for r in records]
    store.published(ids)  # no task: nothing for a sweep to publish
    store.take("sentiment", ids)  # as a claim takes them
    return ids, store.get_many(ids)


@pytest.mark.parametrize("case", ["past the stop time", "soft limit mid-pass"])
def test_a_claim_out_of_time_stores_its_labels_and_hands_the_rest_back(own_store, case):
    """Real Redis: the passes done are stored as labeled; the rest are pending again, back in the waiting
    list at their own rank, and not counted as an attempt."""
    from worker.jobs.tasks import _label

    store = own_store
    ids, batch = _pending(store, 4, f"handback-{case[:4]}")
    engine = FakePassesEngine(slow_s=0.3) if case == "past the stop time" else FakePassesEngine(interrupt_at=2)
    done = _label(engine, batch, "en", 16, "node", stop_at=time.time() + 0.1)
    assert sorted(done) == [0, 1]
    recs = {r.id: r for r in store.get_many(ids)}
    assert [recs[i].status for i in ids] == ["labeled", "labeled", "pending", "pending"]
    waiting = dict(store.r.zrange(store.k.todo("sentiment"), 0, -1, withscores=True))
    assert {i: waiting.get(i) for i in ids[2:]} == {r.id: float(r.seq) for r in batch[2:]}
    assert all(not recs[i].attempts for i in ids)  # nothing counted: their own tasks run them


def test_a_claim_whose_own_message_is_not_labeled_at_the_limit_retries(own_store):
    from worker.jobs.tasks import _label

    store = own_store
    ids, batch = _pending(store, 3, "handback-own")
    with pytest.raises(SoftTimeLimitExceeded):
        _label(FakePassesEngine(interrupt_at=0), batch, "en", 16, "node", stop_at=time.time() + 60)
    waiting = dict(store.r.zrange(store.k.todo("sentiment"), 0, -1, withscores=True))
    assert set(ids[1:]) <= set(waiting) and ids[0] not in waiting  # the others back; its own task retries


def test_earlier_replies_reach_the_reply_prompt_only_with_history_replies(monkeypatch):
    """MOODQ_HISTORY_REPLIES: the customer's earlier messages always, the replies drafted for them only when set."""
    from worker.common.schemas import Record
    from worker.common.settings import load_settings
    from worker.jobs import tasks

    turns = [Record(id="h1", text="Where is my parcel?", reply="Sorry, we are checking."), Record(id="h2", text="Still nothing.")]
    monkeypatch.setattr(tasks, "s", load_settings(history_replies=False))
    assert tasks._history(turns) == [("Where is my parcel?", None), ("Still nothing.", None)]
    monkeypatch.setattr(tasks, "s", load_settings(history_replies=True))
    assert tasks._history(turns) == [("Where is my parcel?", "Sorry, we are checking."), ("Still nothing.", None)]
