"""The record store against the real Redis: idempotent creation, status moves, history."""

from __future__ import annotations

from worker.schemas import Message


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


def test_a_sentiment_claim_stays_within_its_character_budget(settings, monkeypatch):
    """A task takes waiting messages in rank order while they fit its budget; the rest, and
    what it does not accept, go back with their ranks (real Redis; the claim logic only)."""
    from worker import tasks
    from worker.settings import load_settings
    from worker.store import Store

    own = Store(load_settings(redis_url=settings.redis_url, key_prefix=f"{settings.key_prefix}-claim"))
    monkeypatch.setattr(tasks, "_store", own)
    texts = {"c-0": "a" * 10, "c-1": "b" * 50, "c-2": "c" * 30, "c-3": "d" * 5, "c-4": "skip me"}
    own.add([Message(id=i, text=t) for i, t in texts.items()])
    leader = own.get("c-0")
    own.offer("sentiment", {i: n for n, i in enumerate(texts)})
    try:
        taken = tasks._claim("sentiment", leader, 10, lambda r: r.text != "skip me", chars=40)
        assert [r.id for r in taken] == ["c-2", "c-3"]  # c-0 is the leader itself, c-1 (50) does not fit
        assert own.claim("sentiment", 10) == {"c-1": 1.0, "c-4": 4.0}
    finally:
        own.delete_all()  # everything under its own prefix, todo list included
