"""Replies as the worker stores them: checked as each draft ends, drafted again while flagged, and the
drafter's own rules (sampling, banned phrases, one paragraph, one slot, decode kernels kept inside each
step). On a tiny random float32 Qwen2 unless said: exact and fast."""

from __future__ import annotations

import time

import pytest
import torch

from tests.test_model import _tiny
from worker.engine import gemms, kernels
from worker.engine.model import Engine
from worker.quality import replying
from worker.quality.replying import Request, checked

pytestmark = pytest.mark.model  # the embedded tokenizer

GREEDY = {"do_sample": False}
OPTS = {"max_new_tokens": 8, "deadline_s": 60}
REQUESTS = [Request("Where is my order?", "negative", "en"), Request("很好", "positive", "zh"),
            Request("The charger broke.", "negative", "en")]


@pytest.fixture
def tiny(engine):
    return Engine(_tiny(engine.tok), engine.prompts)


def test_a_flagged_draft_is_drafted_again_until_it_passes(tiny, monkeypatch):
    """TEST-ONLY rule (the redraft logic does not depend on what the rules look for): each request's first
    two drafts are flagged. Every reply ends after its third draft, kept, with what the first was flagged for."""
    seen: dict[str, int] = {}

    def first_two_flagged(draft, request, opening):
        seen[request.text] = seen.get(request.text, 0) + 1
        return ["refusal"] if seen[request.text] <= 2 else []

    monkeypatch.setattr(replying, "flags_of", first_two_flagged)
    got = dict(checked(tiny, REQUESTS, slots=2, sampling={"do_sample": True, "temperature": 1.0}, redrafts=2, **OPTS))
    assert sorted(got) == [0, 1, 2]
    for reply in got.values():
        assert reply.drafts == 3 and reply.flags == [] and reply.first_flags == ["refusal"] and not reply.needs_review
        assert reply.tokens_drafted >= reply.draft.tokens
    assert seen == {r.text: 3 for r in REQUESTS}


def test_a_redraft_is_sampled_while_first_drafts_stay_greedy(tiny, monkeypatch):
    """TEST-ONLY rule: the first request's first draft is flagged. Its redraft shares a batch with the third
    request's first draft: that one is greedy (the same under any seed), the redraft is sampled by
    ``resampling`` (seeds differ). Without ``resampling`` the redraft would be the greedy draft again."""
    drafts: list[tuple[str, str]] = []

    def first_flagged(draft, request, opening):
        drafts.append((request.text, draft.text))
        first_of_mine = request.text == REQUESTS[0].text and [d[0] for d in drafts].count(request.text) == 1
        return ["refusal"] if first_of_mine else []

    monkeypatch.setattr(replying, "flags_of", first_flagged)
    hot = {"do_sample": True, "temperature": 1.5, "top_p": 1.0, "top_k": 0}

    def run(seed, resampling):
        drafts.clear()
        torch.manual_seed(seed)
        got = dict(checked(tiny, REQUESTS, slots=2, sampling=GREEDY, resampling=resampling, redrafts=1, **OPTS))
        assert got[0].drafts == 2 and [d[0] for d in drafts].count(REQUESTS[0].text) == 2
        mine = [text for who, text in drafts if who == REQUESTS[0].text]
        return mine[0], mine[1], got[2].draft.text

    runs = [run(seed, hot) for seed in range(3)]
    assert len({first for first, _, _ in runs}) == 1 and len({third for _, _, third in runs}) == 1  # greedy
    assert len({again for _, again, _ in runs}) > 1 and all(again != first for first, again, _ in runs)
    first, again, _ = run(0, None)
    assert again == first


def test_an_unsure_label_is_drafted_with_the_unsure_opening(tiny):
    """The request's confidence reaches the drafter: below unsure_below the reply starts with the 'unsure'
    opening, above it with its label's."""
    openings = tiny.prompts.languages["en"].reply.openings
    asked = [Request("Do you ship to Canada?", "positive", "en", (), confidence) for confidence in (0.97, 0.55)]
    sure, unsure = tiny.draft_many(asked, sampling=GREEDY, **OPTS)
    assert sure.text.startswith(openings["positive"]) and unsure.text.startswith(openings["unsure"])


def test_a_draft_still_flagged_after_its_redrafts_needs_review(tiny):
    """The real rules on the random model's replies (gibberish: wrong language, not addressing anyone)."""
    got = dict(checked(tiny, REQUESTS, slots=3, sampling=GREEDY, redrafts=1, **OPTS))
    for reply in got.values():
        assert reply.drafts == 2 and reply.flags and reply.needs_review


def test_no_redraft_once_a_full_reply_cannot_end_before_the_deadline(tiny):
    got = dict(checked(tiny, REQUESTS[:1], slots=1, sampling=GREEDY, redrafts=3, until=time.monotonic() + 0.01,
                       **OPTS))
    assert got[0].drafts == 1 and got[0].needs_review


def test_sampling_is_the_configured_one(tiny):
    """Sampling draws differ between seeds and repeat with the same seed; top-k 1 is greedy."""
    items = [(r.text, r.label, r.lang, r.history) for r in REQUESTS[:1]]
    sample = {"do_sample": True, "temperature": 1.5, "top_p": 1.0, "top_k": 0}

    def draft(seed, sampling):
        torch.manual_seed(seed)
        return tiny.draft_many(items, sampling=sampling, **{**OPTS, "max_new_tokens": 16})[0].text

    assert draft(1, sample) == draft(1, sample)
    assert len({draft(seed, sample) for seed in range(4)}) > 1
    assert draft(2, {**sample, "top_k": 1}) == draft(3, GREEDY)


def test_banned_phrases_and_line_breaks_are_never_generated(tiny):
    """The tiny model is pushed to say a banned word and a line break at every step: it says neither."""
    head = tiny.model.get_output_embeddings()
    newline = tiny.chat.encode("\n")[0]
    banned = tiny.chat.encode(" refund")  # one token in Qwen's vocabulary
    assert len(banned) == 1
    tiny.drafter.bad_words = tiny.drafter.bad_words + [banned]
    with torch.no_grad():
        head.bias = torch.nn.Parameter(torch.zeros(head.out_features))
        head.bias[[newline, banned[0]]] = 1e4
    draft = tiny.draft_many([(r.text, r.label, r.lang, []) for r in REQUESTS[:1]], sampling=GREEDY, **OPTS)[0]
    ids = tiny.chat.encode(draft.text)
    assert newline not in ids and banned[0] not in ids and "\n" not in draft.text


def test_a_model_whose_rows_cannot_join_drafts_one_at_a_time(tiny):
    """Sliding-window or recurrent caches cannot be joined: the drafter then runs a single slot, with the
    same greedy replies as one call per message."""
    items = [(r.text, r.label, r.lang, []) for r in REQUESTS]
    alone = [tiny.draft_many([it], sampling=GREEDY, **OPTS)[0].text for it in items]
    tiny.drafter.rows_join = False
    rows = []
    tiny.drafter.pace.stepped = lambda n, seconds: rows.append(n)
    assert [d.text for d in tiny.draft_many(items, slots=3, sampling=GREEDY, **OPTS)] == alone
    assert rows and set(rows) == {1}


def test_decode_kernels_run_only_inside_each_drafting_step(tiny):
    """Between two drafts the caller holds the generator: a model call it makes there runs the scoring
    kernels (here float32), not the drafting ones (int8)."""
    x = torch.randn(1, 5, tiny.model.config.hidden_size)
    kernels.apply(tiny.model, "float32", "float32", gemms.INTMM)
    layer = tiny.model.model.layers[1].mlp.up_proj
    with torch.inference_mode():
        expected = torch.nn.functional.linear(x, layer.kernels["score"][1])
    stream = tiny.drafter.stream([(r.text, r.label, r.lang, []) for r in REQUESTS], slots=1, sampling=GREEDY, **OPTS)
    next(stream)
    with torch.inference_mode():
        between = layer(x)
    assert torch.equal(between, expected)
    list(stream)
