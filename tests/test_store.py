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
