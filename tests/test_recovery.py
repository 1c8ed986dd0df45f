"""Nothing left behind: a worker that cannot load its model consumes nothing, records whose task was
never published are swept, a whole worker killed with -9 loses nothing, conversation turns are replied
in order under triage, a Redis Stream consumer's unacknowledged entries survive it, and `moodq check`
tells a script whether the workers are healthy. Real Redis and real worker processes throughout."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest
from click.testing import CliRunner

from producer.follow import Follower
from tests.conftest import (
    FINISHED,
    ROOT,
    RUN,
    assert_one_final_record_each,
    eventually,
    held,
    limit,
    send,
    start_with_standby,
    take_over,
    wait_final,
    worker_log,
)
from worker.cli.main import main
from worker.common.schemas import Message
from worker.common.settings import load_settings
from worker.common.store import Store
from worker.jobs import broker as task_queue
from worker.jobs import launch
from worker.jobs.app import make_app


@pytest.fixture
def own(settings):
    """Settings with a key prefix and queue of their own (no worker listens to the queue unless the test starts one)."""
    s = load_settings(key_prefix=f"{settings.key_prefix}-{RUN}-own", queue=f"{settings.queue}-own")
    yield s
    Store(s).delete_all()
    for queue in (s.queue, f"{s.queue}-standby"):  # the second, of the kill -9 test's standby worker
        task_queue.remove(make_app(s), queue)


@pytest.fixture
def cli_on(monkeypatch):
    """Point the in-process `moodq` CLI at other settings (its settings object is cached per process)."""
    from worker.common.settings import get_settings

    def use(s) -> None:
        monkeypatch.setenv("MOODQ_KEY_PREFIX", s.key_prefix)
        monkeypatch.setenv("MOODQ_QUEUE", s.queue)
        get_settings.cache_clear()

    yield use
    get_settings.cache_clear()


def _env(s, **more) -> dict:
    return {**os.environ, "MOODQ_KEY_PREFIX": s.key_prefix, "MOODQ_QUEUE": s.queue, **more}


@pytest.mark.worker
@pytest.mark.model
def test_a_worker_whose_model_cannot_load_takes_no_message_and_exits_non_zero(own, engine, tmp_path):
    """Messages wait for a healthy worker: not failed, not counted, still on the queue."""
    ids = send(own, *[{"id": f"nomodel-{i}", "text": f"message {i}"} for i in range(3)])
    corrupt = tmp_path / "corrupt.gguf"
    corrupt.write_bytes(b"GGUF" + os.urandom(4096))
    # ... and a model the start-up check accepts but the pool process cannot load (config and tokenizer, no
    # weights). The two workers start at once: each is mostly single-threaded imports.
    from transformers import Qwen2Config

    Qwen2Config(vocab_size=len(engine.tok), hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                num_attention_heads=2, num_key_value_heads=1).save_pretrained(tmp_path / "noweights")
    engine.tok.save_pretrained(tmp_path / "noweights")
    log = worker_log("noweights")
    with log.open("w") as out:
        noweights = subprocess.Popen([sys.executable, "-m", "worker", "worker", "-c", "2"], stdout=out,
                                     stderr=subprocess.STDOUT, env=_env(own, MOODQ_MODEL=str(tmp_path / "noweights")),
                                     cwd=ROOT, start_new_session=True)
    try:
        run = subprocess.run([sys.executable, "-m", "worker", "worker", "-c", "1"], capture_output=True, text=True,
                             env=_env(own, MOODQ_MODEL=str(corrupt)), cwd=ROOT, timeout=300)
        assert run.returncode == 2 and "is not a readable GGUF" in run.stderr, run.stderr[-2000:]
        assert noweights.wait(300) == 1, log.read_text()[-3000:]
    finally:
        launch.stop(noweights, grace=10)  # its process group, if an assertion above failed first
    assert "stopping this worker so it takes no messages" in log.read_text()
    from worker.jobs.upkeep import health

    why = [h["why"] for h in health(own).values()]  # what `moodq check` prints, after the worker is gone
    assert why and "no file named model.safetensors" in why[0], why
    store = Store(own)
    assert [(r.status, r.attempts) for r in store.get_many(ids)] == [("pending", {})] * 3
    assert task_queue.depth(make_app(own), own.queue) == 3  # handed back, for a healthy worker


@pytest.mark.worker
@pytest.mark.model
def test_records_whose_task_was_never_published_are_swept(worker, store, settings):
    """The state a producer killed between writing records and publishing leaves (Store.add without a
    publish): `moodq sweep` publishes them again, once, and the worker finishes them."""
    store.published(store.unpublished(0, now=time.time() + 1))  # marks other tests' bare Store.add calls left
    msgs = [Message(id=f"unpub-{RUN}-{i}", text=f"The parcel {i} never arrived.") for i in range(3)]
    accepted, _ = store.add(msgs, replace=True)
    assert len(accepted) == 3
    young = CliRunner().invoke(main, ["sweep"])  # younger than MOODQ_SWEEP_AFTER_S: a producer may be publishing
    assert young.exit_code == 0 and "republished 0" in young.output, young.output
    out = CliRunner().invoke(main, ["sweep", "--older-than", "0"])
    assert out.exit_code == 0 and "republished 3" in out.output, out.output
    recs = wait_final(store, [m.id for m in msgs])
    assert all(r.status in FINISHED and r.republished == 1 for r in recs.values()), recs
    again = CliRunner().invoke(main, ["sweep", "--older-than", "0"])
    assert "republished 0" in again.output  # their marks were cleared: no second task


@pytest.mark.worker
@pytest.mark.model
def test_kill_9_of_the_whole_worker_loses_nothing(own, store, tmp_path, small_model):
    """SIGKILL of the main process and its pool mid-task: with a short MOODQ_VISIBILITY_TIMEOUT (4 s: the longest
    hard limit, 3 s, plus the retry countdown's 1 s), Redis hands the unacknowledged task to the next worker, and
    every message ends with exactly one final record. On the small model (conftest.small_model): what is tested
    is the queue's, not the model's."""
    soft, hard = limit(2.5, small_model.slowness), limit(3, small_model.slowness)
    limits = {"MOODQ_SENTIMENT_SOFT_LIMIT": soft, "MOODQ_SENTIMENT_HARD_LIMIT": hard, "MOODQ_REPLY_SOFT_LIMIT": soft,
              "MOODQ_REPLY_HARD_LIMIT": hard, "MOODQ_VISIBILITY_TIMEOUT": limit(4, small_model.slowness),
              "MOODQ_REPLY_LABELS": "none"}
    env = {"MOODQ_KEY_PREFIX": own.key_prefix, "MOODQ_QUEUE": own.queue, **small_model.env, **limits}
    s = load_settings(**{k[6:].lower(): v for k, v in env.items()})
    first, second = start_with_standby("kill9", env, tmp_path)  # the second takes over once the first is killed
    try:
        hold = f"{held(1.2, small_model.slowness)} The screen cracked the first day."
        ids = send(s, {"id": "k9-hold", "text": hold},
                   *[{"id": f"k9-{i}", "text": f"Lovely shop, order {i}"} for i in range(4)])
        key = Store(s).k.test("fault", "holding", hold)
        eventually(lambda: Store(s).r.get(key) or first.poll() is not None, timeout=300, interval=0.05,
                   what="the held message reaching the model")
        assert first.poll() is None
        os.killpg(first.pid, signal.SIGKILL)  # main process and pool, as the OOM killer or a host crash would
        first.wait(30)
        take_over(s, "kill9")
        recs = wait_final(Store(s), ids, timeout=300)
    finally:
        launch.stop(first)
        launch.stop(second)
    assert_one_final_record_each(Store(s), ids)
    assert all(r.status == "done" for r in recs.values()), {i: (r.status, r.error) for i, r in recs.items()}
    assert recs["k9-hold"].attempts["sentiment"] == 2  # the interrupted delivery, then the redelivery


@pytest.mark.worker
@pytest.mark.model
def test_conversation_turns_are_replied_in_order_under_triage(small_fault_worker, store):
    """With MOODQ_HISTORY_REPLIES (the reply sees the replies to earlier turns): turn 2 is far more negative (the
    labels the texts name, tests/faults.py), so triage serves its reply first; it must still see turn 1's reply,
    drafted first."""
    cid = f"conv-order-{RUN}"
    ids = send(small_fault_worker,
               {"id": f"{cid}-1", "text": "[as:positive] Thanks, it arrived and it is lovely!", "conversation_id": cid},
               {"id": f"{cid}-2", "text": "[as:negative] Actually it is broken, a disgrace!", "conversation_id": cid})
    recs = wait_final(store, ids)
    first, second = recs[ids[0]], recs[ids[1]]
    assert first.status in FINISHED and second.status in FINISHED and first.reply and second.reply
    assert first.finished_at <= second.finished_at  # turn 1's reply was drafted first
    assert second.context_ids == [first.id]


def test_a_stream_consumers_unacknowledged_entries_survive_its_crash(own):
    """A consumer that read entries and died before acknowledging them: the next follower takes them over
    (XAUTOCLAIM after a minimum idle time) and enqueues each once."""
    store = Store(own)
    stream = own.keys.test("stream-crash")
    store.r.xgroup_create(stream, "moodq", id="0", mkstream=True)
    for i in range(3):
        store.r.xadd(stream, {"text": f"entry {i}"})
    store.r.xreadgroup("moodq", "crashed-consumer", {stream: ">"}, count=10)  # delivered, never acknowledged
    follower = Follower(own, make_app(own), on_event=lambda m: None)
    follower.follow_redis_stream(stream, until=lambda: len(store.ids()) >= 3, reclaim_idle_s=0.2)
    assert sorted(r.text for r in store.iter_records()) == ["entry 0", "entry 1", "entry 2"]
    assert store.r.xpending(stream, "moodq")["pending"] == 0


def test_check_exit_codes_follow_the_heartbeats(own, cli_on):
    """`moodq check`: 1 with no heartbeat, 0 when every worker has its model loaded, 1 with the reason when a
    process failed to load (heartbeats written as a worker writes them; real Redis)."""
    cli_on(own)
    runner = CliRunner()
    assert runner.invoke(main, ["check"]).exit_code == 1
    r, key = Store(own).r, own.keys.heartbeat(f"w1-{RUN}@host")
    r.hset(key, mapping={"beat": time.time(), "host": "host", "queue": own.queue, "proc:11": "ready"})
    out = runner.invoke(main, ["check", "--json"])
    assert out.exit_code == 0 and json.loads(out.output.splitlines()[0])[f"w1-{RUN}@host"]["ok"], out.output
    r.hset(key, "proc:12", "failed: GGUF file x is truncated")
    out = runner.invoke(main, ["check"])
    assert out.exit_code == 1 and "NOT OK" in out.output and "pid 12: GGUF file x is truncated" in out.output
    r.hset(key, mapping={"proc:12": "ready", "beat": time.time() - 3600})
    out = runner.invoke(main, ["check"])
    assert out.exit_code == 1 and "no heartbeat for" in out.output


@pytest.mark.worker
@pytest.mark.model
def test_a_live_worker_beats_and_checks_ok(worker, settings):
    out = CliRunner().invoke(main, ["check", "--json"])
    nodes = json.loads(out.output.splitlines()[0])
    mine = next(h for node, h in nodes.items() if node.startswith(f"main-{RUN}@"))
    assert mine["ok"] and mine["ready"] == 1 and mine["queue"] == settings.queue
    assert out.exit_code == (0 if all(h["ok"] for h in nodes.values()) else 1)


@pytest.mark.worker
@pytest.mark.model
def test_replace_of_an_id_in_flight_ends_in_one_status_with_the_new_text(small_fault_worker, small_model, store):
    """`enqueue --replace` while the old text is being labeled: the old task's label is not written onto
    the new text, the old chain's reply does not fail the new record, and the id sits in one status set. The
    labels are the ones the texts name (tests/faults.py)."""
    hold = f"{held(1.2, small_model.slowness)} [as:positive] I love this, thank you so much!"
    send(small_fault_worker, {"id": "inflight-1", "text": hold})
    key = store.k.test("fault", "holding", hold)

    eventually(lambda: store.r.get(key), timeout=120, what="the old text reaching the model")
    send(small_fault_worker, {"id": "inflight-1", "text": "[as:negative] Broken on arrival, I want a refund."})  # replace=True
    rec = wait_final(store, ["inflight-1"])["inflight-1"]
    assert rec.status in FINISHED and rec.text.startswith("[as:negative] Broken") and rec.label == "negative", rec
    assert_one_final_record_each(store, ["inflight-1"])
