"""The record store against the real Redis: idempotent creation, status moves, history."""

from __future__ import annotations

import time

from worker.common.keys import STATUSES
from worker.common.schemas import Message


def test_adding_a_known_id_is_a_duplicate_unless_replaced(store):
    """Creating records is idempotent by id."""
    m = Message(id="st-1", text="hello")
    accepted, dupes = store.add([m])
    assert [r.id for r in accepted] == ["st-1"] and dupes == []
    accepted, dupes = store.add([m, m])
    assert accepted == [] and dupes == ["st-1", "st-1"]
    store.update("st-1", lambda r: setattr(r, "status", "done"))
    accepted, _ = store.add([m], replace=True)
    assert [r.id for r in accepted] == ["st-1"] and store.get("st-1").status == "pending"
    assert "st-1" in store.ids("pending") and "st-1" not in store.ids("done")


def test_status_sets_follow_updates(store):
    store.add([Message(id="st-2", text="x")])
    store.update("st-2", lambda r: setattr(r, "status", "labeled"))
    store.update("st-2", lambda r: setattr(r, "status", "failed"))
    assert "st-2" in store.ids("failed")
    assert "st-2" not in store.ids("labeled") and "st-2" not in store.ids("pending")
    assert store.update("missing-id", lambda r: None) is None


def test_history_is_the_earlier_turns_of_the_same_conversation(store):
    msgs = [Message(id=f"h-{i}", text=f"turn {i}", conversation_id="conv-h") for i in range(4)]
    store.add(msgs)
    store.add([Message(id="h-other", text="elsewhere", conversation_id="conv-other")])
    third = store.get("h-2")
    assert [r.id for r in store.history(third, turns=5)] == ["h-0", "h-1"]
    assert [r.id for r in store.history(store.get("h-3"), turns=2)] == ["h-1", "h-2"]
    assert store.history(store.get("h-0"), turns=5) == []


def test_a_sentiment_claim_stays_within_its_character_budget(settings):
    """A task takes waiting messages in rank order while they fit its budget; the rest, and
    what it does not accept, keep their ranks; a corrupt record is left out, to fail
    alone in its own task, and dropped from the list (real Redis; the claim logic only)."""
    from worker.common.settings import load_settings
    from worker.common.store import Store
    from worker.jobs.claims import claim

    own = Store(load_settings(redis_url=settings.redis_url, key_prefix=f"{settings.key_prefix}-claim"))
    texts = {"c-0": "a" * 10, "c-1": "b" * 50, "c-2": "c" * 30, "c-bad": "x", "c-3": "d" * 5, "c-4": "skip me"}
    own.add([Message(id=i, text=t) for i, t in texts.items()])
    own.r.set(own.k.rec("c-bad"), '{"id": 5, "status": "weird"}')
    leader = own.get("c-0")
    own.offer("sentiment", {i: n for n, i in enumerate(texts)})
    try:
        taken = claim(own, "sentiment", leader, 10, lambda r: r.text != "skip me", chars=40)
        assert [r.id for r in taken] == ["c-2", "c-3"]  # c-0 is the leader itself, c-1 (50) does not fit
        assert own.waiting("sentiment", 10) == {"c-0": 0.0, "c-1": 1.0, "c-4": 5.0}  # the leader's task removes c-0
    finally:
        own.delete_all()  # everything under its own prefix, todo list included


def test_add_is_atomic_and_marks_records_until_their_task_is_published(store):
    """Record, index, status and the unpublished mark are written in one step; published() clears the mark."""
    accepted, dupes = store.add([Message(id="atom-1", text="hello"), Message(id="atom-2", text="again")])
    assert [r.id for r in accepted] == ["atom-1", "atom-2"] and dupes == []
    assert set(store.unpublished(0, now=time.time() + 1)) >= {"atom-1", "atom-2"}
    store.published(["atom-1"])
    marked = store.unpublished(0, now=time.time() + 1)
    assert "atom-1" not in marked and "atom-2" in marked
    assert "atom-2" not in store.unpublished(60)  # too young for the sweep
    _, dupes = store.add([Message(id="atom-1", text="hello")])
    assert dupes == ["atom-1"]


def test_replace_moves_the_id_to_pending_in_one_step(store):
    """--replace of a finished id: exactly one status set afterwards, and the new text."""
    store.add([Message(id="rep-1", text="first text")])
    store.update("rep-1", lambda r: setattr(r, "status", "done"))
    store.add([Message(id="rep-1", text="second text")], replace=True)
    sets = [s for s in STATUSES if store.r.sismember(store.k.status(s), "rep-1")]
    assert sets == ["pending"] and store.get("rep-1").text == "second text"


def test_prune_drops_the_ids_of_expired_records_from_every_set(settings):
    """A record that expired (TTL) leaves no ghost: status sets, index and waiting lists lose its id."""
    from worker.common.settings import load_settings
    from worker.common.store import Store

    own = Store(load_settings(redis_url=settings.redis_url, key_prefix=f"{settings.key_prefix}-prune"))
    try:
        own.add([Message(id=f"p-{i}", text=f"text {i}") for i in range(5)])
        own.update("p-1", lambda r: setattr(r, "status", "failed"))
        own.r.delete(own.k.rec("p-0"), own.k.rec("p-1"))  # as the TTL would
        assert own.prune(chunk=2) == 2 + 2 + 2 + 2  # pending/failed, index, todo:sentiment, unpublished
        assert own.counts() == {"pending": 3, "labeled": 0, "done": 0, "review": 0, "failed": 0}
        assert own.ids() == ["p-2", "p-3", "p-4"] and own.prune() == 0
    finally:
        own.delete_all()


def test_two_sweepers_never_take_the_same_unpublished_record(store):
    """Every worker sweeps; a record written but never published is handed to one of them only."""
    store.add([Message(id=f"sw-{i}", text="hello") for i in range(5)])
    first = store.take_unpublished(0)
    assert {f"sw-{i}" for i in range(5)} <= set(first)
    assert not {f"sw-{i}" for i in range(5)} & set(store.take_unpublished(0.5))  # renewed: not old enough again
    store.published([f"sw-{i}" for i in range(5)])


def test_update_returns_the_record_it_wrote_after_a_watch_conflict(store):
    """redis-py runs the change again when another client wrote the record between our read and our write
    (WATCH): the record returned is the one finally written, not the aborted attempt's."""
    import redis

    store.add([Message(id="st-watch", text="x")], replace=True)
    other = redis.Redis.from_url(store.s.redis_url, decode_responses=True)
    calls = []

    def count(rec):
        calls.append(1)
        if len(calls) == 1:  # a concurrent writer bumps the count under our feet
            bumped = store.get("st-watch")
            bumped.attempts["sentiment"] = 5
            other.set(store.k.rec("st-watch"), bumped.model_dump_json())
        rec.attempts["sentiment"] = rec.attempts.get("sentiment", 0) + 1

    rec = store.update("st-watch", count)
    assert len(calls) == 2
    assert rec.attempts["sentiment"] == store.get("st-watch").attempts["sentiment"] == 6


def test_prune_keeps_an_id_that_is_added_again_while_it_runs(settings):
    """Follow and stream ids are deterministic, so an expired id can come back while prune runs: the check
    that its record is gone and the removal are one step, and the new record keeps its status and places."""
    from worker.common.settings import load_settings
    from worker.common.store import Store

    s = load_settings(redis_url=settings.redis_url, key_prefix=f"{settings.key_prefix}-prune-race")
    own = Store(s)
    try:
        own.add([Message(id="pr-1", text="old")])
        own.r.delete(own.k.rec("pr-1"))  # expired
        real, hooked = own.r.execute_command, []

        def add_again_before_the_first_removal(*args, **options):
            if not hooked and args[0] in ("SREM", "ZREM", "EVALSHA", "EVAL"):
                hooked.append(args[0])
                Store(s).add([Message(id="pr-1", text="new")])  # another producer, between check and removal
            return real(*args, **options)

        own.r.execute_command = add_again_before_the_first_removal
        own.prune()
        assert hooked and own.get("pr-1").text == "new"
        assert own.ids("pending") == ["pr-1"] and own.ids() == ["pr-1"]
        assert own.r.zscore(own.k.todo("sentiment"), "pr-1") is not None and own.unpublished(0)
    finally:
        own.delete_all()


def test_replace_keeps_a_conversation_turn_in_its_place(store):
    """`enqueue --replace` of an earlier turn re-processes it where it was: it does not become the newest."""
    msgs = [Message(id=f"rt-{i}", text=f"turn {i}", conversation_id="conv-rt") for i in range(3)]
    store.add(msgs)
    seqs = [store.get(m.id).seq for m in msgs]
    store.add([Message(id="rt-1", text="turn 1, corrected", conversation_id="conv-rt")], replace=True)
    assert store.get("rt-1").seq == seqs[1] and store.get("rt-1").text == "turn 1, corrected"
    assert [r.id for r in store.history(store.get("rt-2"), turns=5)] == ["rt-0", "rt-1"]
    assert [r.id for r in store.history(store.get("rt-1"), turns=5)] == ["rt-0"]


def test_messages_a_claim_rejects_do_not_block_the_ones_behind_them(settings):
    """Ten waiting messages no claim of this kind accepts sit at the head of the list: a claim still takes
    the acceptable ones behind them, leaves the rejected in place, and drops ids nothing waits for any more."""
    from worker.common.settings import load_settings
    from worker.common.store import Store
    from worker.jobs.claims import claim

    own = Store(load_settings(redis_url=settings.redis_url, key_prefix=f"{settings.key_prefix}-hol"))
    try:
        own.add([Message(id=f"en-{i}", text=f"English {i}") for i in range(10)]
                + [Message(id=f"zh-{i}", text=f"中文消息 {i}") for i in range(4)] + [Message(id="done-1", text="x")])
        own.update("done-1", lambda r: setattr(r, "status", "done"))
        own.r.zadd(own.k.todo("sentiment"), {"done-1": -1})
        leader = own.get("zh-0")
        taken = claim(own, "sentiment", leader, 2, lambda r: r.text.startswith("中文"))
        assert [r.id for r in taken] == ["zh-1", "zh-2"]
        left = own.waiting("sentiment", 100)
        assert [f"en-{i}" for i in range(10)] == [i for i in left if i.startswith("en-")]  # rejected: kept in place
        assert "done-1" not in left and "zh-3" in left and "zh-1" not in left
    finally:
        own.delete_all()


def test_a_leased_take_leases_what_it_removed_and_skips_what_its_own_task_holds(settings):
    """A reply batch takes waiting ids leased to its task, in one step; an id whose own task already holds
    it (leased when that task started) leaves the list but is not taken; released leases are gone."""
    from worker.common.settings import load_settings
    from worker.common.store import Store

    store = Store(load_settings(redis_url=settings.redis_url, key_prefix=f"{settings.key_prefix}-leases"))
    ids = ["ls-1", "ls-2", "ls-3"]
    store.release("reply", ids)
    store.offer("reply", {mid: i for i, mid in enumerate(ids)})
    assert store.lease("reply", "ls-2", "own-task-2", 30) == "own-task-2"
    assert store.lease("reply", "ls-2", "another-task", 30) == "own-task-2"  # held: the holder is returned
    assert store.take("reply", ids, ("batch-task", 30)) == {"ls-1", "ls-3"}
    assert not store.waiting("reply", 10).keys() & set(ids)
    assert [store.r.get(store.k.lease("reply", mid)) for mid in ids] == ["batch-task", "own-task-2", "batch-task"]
    assert 0 < store.r.pttl(store.k.lease("reply", "ls-1")) <= 30_000
    assert store.take("reply", ["ls-1"], ("late-task", 30)) == set()  # not waiting any more
    store.release("reply", ids)
    assert not store.r.exists(*(store.k.lease("reply", mid) for mid in ids))
    store.delete_all()
