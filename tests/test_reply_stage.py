"""The reply stage on real workers: what a reply task takes on, how long it may take, what it stores, and the
races a review found (a replaced message, a running task's own id, ids no batch can take)."""

from __future__ import annotations

import time

import pytest

from tests.conftest import (
    EXTRA_QUEUES,
    FINISHED,
    eventually,
    held,
    limit,
    send,
    start_fault_worker,
    wait_final,
)
from worker.common.schemas import Message
from worker.common.settings import load_settings
from worker.common.store import Store
from worker.jobs import launch
from worker.jobs.app import make_app

pytestmark = [pytest.mark.worker, pytest.mark.model]


def _worker(settings, tmp_path, name: str, concurrency: int = 1, **env):
    """A fault-app worker on a queue of its own (removed at the end with the run's other extra queues)."""
    assert name in EXTRA_QUEUES
    env = {"MOODQ_QUEUE": f"{settings.queue}-{name}", **{f"MOODQ_{k.upper()}": str(v) for k, v in env.items()}}
    proc = start_fault_worker(name, env, tmp_path / f"{name}.log", concurrency)
    return proc, load_settings(**{k[6:].lower(): v for k, v in env.items()})


@pytest.fixture(scope="module")
def stage(settings, small_model, tmp_path_factory):
    """Two processes, two reply slots each, replies of at most 6 tokens (every draft is cut), one redraft;
    the upkeep thread sweeps every 0.5 s what was written over 1 s ago and never published. On the small
    model (`small_model`): these tests are about leases, slots and sweeps; where one needs a label, its
    text names it (`[as:LABEL]`, tests/faults.py)."""
    proc, s = _worker(settings, tmp_path_factory.mktemp("stage"), "stage", concurrency=2, triage_label="",
                      reply_batch_size=2, max_reply_tokens=6, redrafts=1, sweep_interval_s=0.5, sweep_after_s=1,
                      model=small_model.env["MOODQ_MODEL"], cache_dir=small_model.env["MOODQ_CACHE_DIR"])
    yield s
    launch.stop_idle(proc)


def test_a_reply_to_replaced_text_is_never_stored_on_the_new_record(store, stage, small_model):
    """Two processes: the old text's reply is still drafting when the message is replaced and labeled again;
    the new text's reply task waits for the old task's lease, then drafts. The old reply, which ends first,
    must not land on the new record."""
    old = f"[draft-hold:{limit(1.5, small_model.slowness)}] [as:negative] My parcel arrived broken, no answer."
    new = "[as:positive] Lovely service, thank you so much!"
    send(stage, {"id": "race-1", "text": old})
    eventually(lambda: store.r.get(store.k.test("fault", "drafting", old)), timeout=120, what="the old reply drafting")
    send(stage, {"id": "race-1", "text": new})  # replace=True
    rec = wait_final(store, ["race-1"])["race-1"]
    assert rec.text == new and rec.label == "positive", rec
    assert rec.reply.startswith("Thank you so much"), rec.reply  # the new text's opening, not "I'm so sorry"


def test_a_message_a_batch_took_is_drafted_once_while_its_own_task_waits(stage, small_model):
    """Two processes: a reply task takes a waiting message into its batch (leasing it) and holds before
    drafting; the message's own reply task starts on the other process meanwhile. It must wait for the
    batch, not draft the message again: one process drafts it, its own task counts one attempt, and
    every lease is gone at the end."""
    st = Store(stage)
    first, mate = f"[draft-hold:{limit(1.5, small_model.slowness)}] The lamp arrived broken.", "[draft-count] My parcel is late again."
    st.r.delete(st.k.test("fault", "drafted-by", mate))
    st.add([Message(id="lease-mate", text=mate)], replace=True)  # labeled and waiting for a reply; its own
    st.published(["lease-mate"])  # reply task is sent by hand below, while the other batch drafts it
    st.take("sentiment", ["lease-mate"])

    def labeled(r):
        r.status, r.label, r.lang, r.labeled_at = "labeled", "negative", "en", time.time()
    st.update("lease-mate", labeled)
    st.offer("reply", {"lease-mate": 0})
    send(stage, {"id": "lease-first", "text": first})
    eventually(lambda: st.r.get(st.k.test("fault", "drafting", first)), timeout=120, what="the first reply drafting")
    holder = st.r.get(st.k.lease("reply", "lease-mate"))
    assert holder, "the first reply's task took the waiting message into its batch"
    make_app(stage).send_task("reply", args=["lease-mate"], queue=stage.queue)
    recs = wait_final(st, ["lease-first", "lease-mate"])
    # one process drafted it (a second draft could only run concurrently, so in the other process: a later
    # task in the same process finds it done; counting drafts would count the batch's own redraft too)
    assert len(st.r.smembers(st.k.test("fault", "drafted-by", mate))) == 1
    assert recs["lease-mate"].timings.reply_batch == 2, recs  # stored by the first reply's batch
    eventually(lambda: st.get("lease-mate").attempts.get("reply"), what="the mate's own task, once the batch is over")
    assert st.get("lease-mate").attempts == {"reply": 1}  # it waited without counting attempts, then found it done
    eventually(lambda: not st.r.exists(st.k.lease("reply", "lease-mate"), st.k.lease("reply", "lease-first")),
               what="every lease released")


def test_freed_slots_take_waiting_replies_and_flagged_ones_are_drafted_again(store, stage):
    """Two slots per task, seven replies of at most 6 tokens (so every draft is cut): a freed slot takes the
    next waiting message, every reply is drafted twice (one redraft) and stored for review, flagged cut."""
    texts = ["Broken again.", "Late again.", "Missing parts.", "Never arrived.", "Rude staff.", "Wrong colour.",
             "Cracked screen."]
    recs = wait_final(store, send(stage, *[{"id": f"refill-{i}", "text": t} for i, t in enumerate(texts)]))
    assert max(r.timings.reply_batch or 0 for r in recs.values()) > 2  # more than its two slots: refilled
    for rec in recs.values():
        assert rec.status == "review" and "cut" in rec.flags and rec.drafts == 2 and rec.reply_truncated, rec


def test_a_worker_sweeps_and_prunes_on_its_own(stage):
    """Without `moodq sweep`: a running worker publishes what a dead producer wrote but never sent, and
    clears the ids of expired records from the sets, in its upkeep thread, while it keeps consuming."""
    own = Store(stage)
    own.add([Message(id="orphan-1", text="The parcel never came."), Message(id="ghost-1", text="gone")], replace=True)
    own.r.delete(own.k.rec("ghost-1"))  # expired: only its ids are left
    orphan = wait_final(own, ["orphan-1"])["orphan-1"]
    assert orphan.status in FINISHED and orphan.republished == 1
    eventually(lambda: "ghost-1" not in own.ids() and "ghost-1" not in own.ids("pending")
               and "ghost-1" not in own.unpublished(0), timeout=60, what="the expired id pruned")
    later = send(stage, {"id": "after-upkeep", "text": "Thanks, all fine."})
    assert wait_final(own, later)["after-upkeep"].status in FINISHED


def test_earlier_turns_and_the_reply_share_one_time_budget(store, small_fault_worker):
    """Turn 2's reply (more negative: triage serves it first) drafts turn 1's missing reply first. Both
    draft slowly (injected: every decode step sleeps a tenth of the soft limit). Turn 2 gets what is left of
    one budget and is stored for review, cut, inside its soft limit; a fresh deadline after turn 1 would
    overrun the limit and retry. On the small model, the labels named in the texts (tests/faults.py)."""
    soft = small_fault_worker.reply_soft_limit
    slow, cid = f"[draft-slow:{soft / 10:g}]", "budget-chat"
    ids = send(small_fault_worker,
               {"id": "budget-1", "text": f"{slow} [as:positive] Thanks, lovely shop!", "conversation_id": cid},
               {"id": "budget-2", "text": f"{slow} [as:negative] Now it is broken!", "conversation_id": cid})
    second = wait_final(store, ids)["budget-2"]
    assert second.status == "review" and second.context_ids == ["budget-1"], second
    assert second.attempts["reply"] == 1 and second.timings.reply_ms < soft * 1000, second


def test_a_running_tasks_own_message_cannot_be_claimed(small_fault_worker, small_model, store):
    """While a sentiment task runs, its message is out of the waiting list another task claims from."""
    hold = f"{held(1.2, small_model.slowness)} The lid does not close."  # inside the soft limit (2 s, scaled)
    ids = send(small_fault_worker, {"id": "own-1", "text": hold})
    eventually(lambda: store.r.get(store.k.test("fault", "holding", hold)), timeout=120, what="the task running")
    assert Store(small_fault_worker).r.zscore(small_fault_worker.keys.todo("sentiment"), "own-1") is None
    assert wait_final(store, ids)["own-1"].status in FINISHED


def test_ids_no_reply_batch_can_take_do_not_shrink_the_batches(worker, store, settings):
    """Six labeled conversation messages (which go one at a time) sit at the head of the reply waiting list:
    the reply tasks still draft the other messages together, and those ids leave the list."""
    junk = [Message(id=f"hol-{i}", text="turn", conversation_id=f"hol-chat-{i}") for i in range(6)]
    store.add(junk, replace=True)
    store.published([m.id for m in junk])
    for m in junk:
        store.update(m.id, lambda r: setattr(r, "status", "labeled"))
    store.r.zadd(store.k.todo("reply"), {m.id: 0 for m in junk})
    texts = ["Broken on arrival.", "The box was crushed.", "Wrong size sent.", "Still no refund.", "Rude driver."]
    try:
        ids = send(settings, *[{"id": f"hol-msg-{i}", "text": t} for i, t in enumerate(texts)])
        recs = wait_final(store, ids)
        assert max(r.timings.reply_batch or 0 for r in recs.values()) >= 4
        assert not {m.id for m in junk} & set(store.waiting("reply", 1000))
    finally:
        for m in junk:
            store.update(m.id, lambda r: setattr(r, "status", "done"))


def test_a_batch_mate_the_deadline_cut_is_drafted_afresh_by_its_own_task(store, small_fault_worker):
    """Two negative messages drafted in one batch, every decode step slow (injected), so the task's deadline cuts
    both: the task stores its own message's reply (for review, cut) but not its batch-mate's, which its own
    reply task drafts afresh, alone, with a budget of its own. On the small model, labeled as the texts say."""
    soft = small_fault_worker.reply_soft_limit
    slow = f"[draft-slow:{soft / 10:.2f}]"  # the fault worker takes at most 60 characters
    ids = send(small_fault_worker, {"id": "mate-1", "text": f"{slow} [as:negative] Broken, I am furious."},
               {"id": "mate-2", "text": f"{slow} [as:negative] Late again, box crushed."})
    recs = wait_final(store, ids)
    assert all(r.label == "negative" and r.status == "review" and "cut" in r.flags for r in recs.values()), recs
    assert sorted(r.timings.reply_batch for r in recs.values()) == [1, 2], recs  # the mate: by its own task
    assert all(r.attempts["reply"] == 1 and r.timings.reply_ms < soft * 1000 for r in recs.values()), recs
