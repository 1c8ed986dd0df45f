"""End to end on real parts: CLI producer -> Redis -> real worker process -> embedded model -> records."""

from __future__ import annotations

import csv
import io
import json
import os
import subprocess
import sys

import pytest

from producer.enqueue import enqueue
from producer.sources import to_message
from tests.conftest import DATA, FINISHED, ROOT, eventually, score_noise, wait_final

pytestmark = [pytest.mark.worker, pytest.mark.model]

SEEDS = {
    "今天的实验终于成功了，太棒了！": "positive",
    "我感觉很累，工作压力太大了。": "negative",
    "这个天气真让人烦躁。": "negative",
}


def moodq(*args: str, stdin: str | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "worker", *args], input=stdin, capture_output=True,
                          text=True, cwd=ROOT, env=os.environ, timeout=300)


def test_file_enqueued_through_cli_is_processed_end_to_end(worker, store, settings):
    """Every good line of a file becomes a done record with label, reply and timings; bad lines are reported."""
    run = moodq("enqueue", str(DATA / "small.jsonl"))
    assert run.returncode == 0, run.stderr
    assert "enqueued 4" in run.stdout and "rejected 3" in run.stdout
    assert "small.jsonl:5: text: text is empty or only whitespace" in run.stderr
    assert "small.jsonl:6: invalid JSON" in run.stderr
    assert "small.jsonl:7: text: text must be a string, got int" in run.stderr

    records = wait_final(store, ["e2e-1", "e2e-2", "e2e-3", "e2e-4"])
    for rec in records.values():
        assert rec.status in FINISHED, rec.error
        assert rec.label in ("positive", "negative")
        assert 0.5 <= rec.confidence <= 1.0
        assert rec.reply and rec.reply.strip()
        assert rec.timings.sentiment_ms > 0 and rec.timings.reply_ms > 0
        assert rec.attempts["sentiment"] == 1
        assert rec.model.startswith("embedded:") and rec.prompt_version
    assert records["e2e-4"].lang == "en" and records["e2e-1"].lang == "zh"
    # Its own reply task may still be on its way when a batch has already done the work: it runs once.
    eventually(lambda: all(r.attempts.get("reply") == 1 for r in store.get_many(list(records))),
               what="each message's own reply task ran exactly once")

    out = moodq("export", "--format", "csv")
    assert out.returncode == 0, out.stderr
    rows = {r["id"]: r for r in csv.DictReader(io.StringIO(out.stdout))}
    assert json.loads(rows["e2e-1"]["metadata"]) == {"ticket": 101}
    assert json.loads(rows["e2e-2"]["metadata"]) == {"channel": "email"}
    assert rows["e2e-3"]["status"] in FINISHED and rows["e2e-3"]["label"] == "negative"


def test_seed_messages_get_sensible_labels(worker, store, settings):
    """The seed documents' three samples: one positive, two negative, through the real worker."""
    from worker.jobs.app import app

    msgs = [to_message({"id": f"seed-{i}", "text": t}, settings.max_chars) for i, t in enumerate(SEEDS)]
    enqueue(msgs, settings, app, replace=True)
    records = wait_final(store, [m.id for m in msgs])
    assert {records[m.id].text: records[m.id].label for m in msgs} == SEEDS


def test_reenqueueing_an_id_does_not_duplicate_its_record(worker, store, settings):
    """A second enqueue of a known id is reported as a duplicate and leaves one record."""
    from worker.jobs.app import app

    msg = to_message({"id": "dup-1", "text": "Great support, thanks!"}, settings.max_chars)
    first = enqueue([msg], settings, app)
    second = enqueue([msg, msg], settings, app)
    assert first.accepted == ["dup-1"] and second.accepted == [] and second.duplicates == ["dup-1", "dup-1"]
    rec = wait_final(store, ["dup-1"])["dup-1"]
    assert rec.status in FINISHED and rec.attempts == {"sentiment": 1, "reply": 1}
    assert store.ids().count("dup-1") == 1
    assert len(store.r.keys(settings.keys.rec("dup-1"))) == 1


def test_history_reaches_the_reply_but_never_the_sentiment(worker, store, settings, engine):
    """In a conversation the reply sees the earlier turn; the label is what the message alone gets."""
    from worker.jobs.app import app

    texts = ["My order #7 never arrived.", "Actually it just came and it is wonderful!"]
    msgs = [to_message({"id": f"conv-{i}", "text": t, "conversation_id": "c-1"}, settings.max_chars)
            for i, t in enumerate(texts)]
    enqueue(msgs, settings, app, replace=True)
    records = wait_final(store, [m.id for m in msgs])
    first, second = records["conv-0"], records["conv-1"]
    assert first.context_ids == [] and second.context_ids == ["conv-0"]
    alone = engine.judge([texts[1]], "en")[0]
    assert second.label == alone.label == "positive"
    for lab, score in alone.scores.items():  # batch noise only (as in test_model)
        assert second.scores[lab] == pytest.approx(score, abs=score_noise(engine))


def test_worker_batches_waiting_messages_but_keeps_one_record_each(worker, store, settings):
    """A backlog is scored and replied to in batches; every message still has its own record and tasks."""
    from worker.jobs.app import app

    texts = ["Great service!", "Awful, it broke.", "Love the colour.", "Refund me now.", "Works fine, thanks.",
             "Never buying again.", "Fast delivery.", "Rude staff.", "Five stars.", "Box was crushed.",
             "Late again.", "Perfect fit.", "Missing a screw.", "Lovely gift.", "Wrong size sent."]
    msgs = [to_message({"id": f"batch-{i}", "text": t}, settings.max_chars) for i, t in enumerate(texts)]
    enqueue(msgs, settings, app, replace=True)
    records = wait_final(store, [m.id for m in msgs])
    assert all(r.status in FINISHED and r.reply for r in records.values())
    # Each message's own tasks still run (and find the work done): wait for the last of them.
    eventually(lambda: all(r.attempts == {"sentiment": 1, "reply": 1} for r in store.get_many(list(records))),
               what="every message's own sentiment and reply task ran once")
    records = {r.id: r for r in store.get_many(list(records))}
    assert max(r.timings.sentiment_batch for r in records.values()) > 1
    # Replies were drafted together. (Whether a freed slot also took a waiting reply depends on how many
    # were labeled by then, which the test does not control: the refill itself is tested on the drafter,
    # test_replies.py, with staggered ends.)
    assert max(r.timings.reply_batch for r in records.values()) > 1
