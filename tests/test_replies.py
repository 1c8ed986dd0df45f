"""Drafting replies: batches never cut a neighbour, greedy batches equal one at a time, eval --replies."""

from __future__ import annotations

import json

import pytest
from click.testing import CliRunner

from tests.conftest import DATA
from tests.test_model import _tiny
from worker.engine.model import Engine

pytestmark = pytest.mark.model

GREEDY = {"do_sample": False}
SHORT = ["Where is my order? It has been a week.", "The charger stopped working after two days.",
         "Can I change the delivery address?", "Thanks, the refund arrived!", "My parcel came open and wet."]


def test_batched_greedy_replies_equal_one_at_a_time_on_a_tiny_float32_model(engine):
    """Exact check: joining a running batch (left padding), leaving it, and taking a freed slot
    change nothing in a float32 greedy draft."""
    tiny = Engine(_tiny(engine.tok), engine.prompts)
    items = [(t, "negative", "en", []) for t in SHORT] + [("很好", "positive", "zh", []),
                                                          ("My sofa came in June. " * 30, "negative", "en", [])]
    opts = {"deadline_s": 60, "sampling": GREEDY}
    alone = [tiny.draft_many([it], max_new_tokens=12, **opts)[0].text for it in items]
    assert len(set(alone)) > 1  # the tiny model's replies differ, so a mix-up of rows would show
    together = [d.text for d in tiny.draft_many(items, max_new_tokens=12, **opts)]
    assert together == alone
    # Two slots for seven replies of different lengths: rows leave at different steps and the next
    # message takes the freed slot while the other row keeps going.
    caps = [3, 12, 5, 12, 7, 2, 12]
    mixed = [tiny.draft_many([it], max_new_tokens=c, **opts)[0].text for it, c in zip(items, caps)]
    staggered = _staggered(tiny, items, caps, slots=2, **opts)
    assert staggered == mixed


def _staggered(tiny, items, caps, **opts):
    """Draft with a different token cap per item (to make rows leave at different steps)."""
    drafter, stop = tiny.drafter, tiny.drafter._stop
    cap_of = {i: c for i, c in enumerate(caps)}
    drafter._stop = lambda row, _cap, end_after=0: stop(row, cap_of[row.index], end_after)
    try:
        return [d.text for d in tiny.draft_many(items, max_new_tokens=max(caps), **opts)]
    finally:
        drafter._stop = stop


def test_the_cached_system_prompt_gives_the_same_greedy_reply_as_none(engine):
    """The reply's system turn is prefilled once per (language, label) and its KV cache reused; on the
    tiny float32 model a greedy draft is exactly what the whole prompt prefilled from scratch gives."""
    tiny = Engine(_tiny(engine.tok), engine.prompts)
    items = [(SHORT[0], "negative", "en", []), ("很好", "positive", "zh", []),
             (SHORT[1], "negative", "en", [("Hello?", "Hi, how can I help?")])]
    opts = {"max_new_tokens": 10, "deadline_s": 60, "sampling": GREEDY}
    cached = [tiny.draft_many([it], **opts)[0].text for it in items]
    assert [phase for _, phase in tiny.drafter.prefixes.held].count("decode") == 2  # en/negative (with or without
    # history) and zh/positive; the rest are the sentiment frames
    tiny.chat.reply_prefix = lambda label, lang: ()  # no cached prefix: the whole prompt prefilled
    tiny.drafter.prefixes.held.clear()
    assert [tiny.draft_many([it], **opts)[0].text for it in items] == cached
    assert not tiny.drafter.prefixes.held


def test_a_long_message_never_cuts_its_short_batch_mates(engine):
    """One 1,900-character message and five short ones in one call: the short ones end at their own
    end of turn, as they do without it (in one call of their own: batched and one-at-a-time drafting agree,
    test_batched_greedy_replies_equal_one_at_a_time_on_a_tiny_float32_model); the long one runs in its own bucket."""
    long = ("I ordered a sofa in March and it is now June. " * 45)[:1900]
    items = [(long, "negative", "en", [])] + [(t, "positive" if "Thanks" in t else "negative", "en", []) for t in SHORT]
    opts = {"max_new_tokens": 96, "deadline_s": 120, "sampling": GREEDY}
    alone = engine.draft_many(items[1:], **opts)
    together = engine.draft_many(items, **opts)
    assert all(d.stop == "end" for d in alone), [d.text for d in alone]
    for a, t in zip(alone, together[1:]):
        assert t.stop == "end" and not t.truncated and t.text, t.text
        assert t.tokens >= 0.5 * a.tokens  # not shortened by the long neighbour


def test_a_cut_reply_says_why(engine):
    capped = engine.draft_many([("Tell me a long story about the sea.", "positive", "en", [])],
                               max_new_tokens=3, deadline_s=60, sampling=GREEDY)[0]
    assert capped.truncated and capped.stop == "cap" and capped.tokens == 3


def test_eval_replies_writes_one_line_per_message(engine, tmp_path):
    from worker.cli.main import main

    out = tmp_path / "replies.jsonl"
    result = CliRunner().invoke(main, ["eval", str(DATA / "eval_small.jsonl"), "--replies", "--out", str(out),
                                       "--json"])
    assert result.exit_code == 0, result.output
    report = json.loads(result.output[: result.output.rindex("}") + 1])
    assert report["sentiment"]["n"] == 4
    figures = report["replies"]["languages"]
    assert set(figures) == {"zh", "en"} and all(f["replies"] == 2 for f in figures.values())
    assert {"refusal", "wrong_language", "echo", "not_addressing", "loop", "empty", "cut"} <= set(
        figures["en"]["rates"])
    assert {"needs_review", "redrafted", "first_draft_rates", "sendable"} <= set(figures["en"])
    lines = [json.loads(line) for line in out.read_text(encoding="utf-8").splitlines()]
    assert len(lines) == 4
    for line in lines:
        assert {"text", "label", "reply", "stop", "flags", "first_flags", "drafts", "lang", "gold"} <= set(line)
        assert line["reply"] and line["stop"] in ("end", "cap", "deadline")
