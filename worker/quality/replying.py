"""Replies as they are stored: drafted by continuous batching, checked by the reply rules as each one
ends, and drafted again while a rule flags it and time allows. The worker's reply task and
``moodq eval --replies`` both draft through :func:`checked`, so eval measures what a worker stores.

A draft is flagged by ``worker.quality.reply_checks`` (refusal or talk of being an AI, wrong language, echo,
not addressing the customer, loop, repeating its instructions, empty), by what no reply may do whatever the
message (``substance.NEVER``: blaming the customer, promising money, inventing facts), or as ``cut`` (ended
by the token cap or the deadline, not by the model). A flagged draft is drafted again, sampled by
``resampling`` (a first draft is greedy by default, and greedy would draft the same reply again), up to
``redrafts`` times while a full-length reply still fits before ``until`` at the measured pace. One
still flagged after that is returned with its flags: the worker stores it as ``review``, never ``done``.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field

from worker.engine.drafting import Draft, Request
from worker.quality import reply_checks, substance

CUT = "cut"
FIT_SHARE = 0.5  # replies drafted at once: as many as let a full-length one take at most this share of the deadline


@dataclass
class Reply:
    """The draft that is kept for a request, the rules it still breaks, and how many drafts it took."""

    draft: Draft
    flags: list[str]
    drafts: int = 1
    first_flags: list[str] = field(default_factory=list)  # what the first draft was flagged for
    tokens_drafted: int = 0  # over every draft, the ones thrown away included

    @property
    def needs_review(self) -> bool:
        return bool(self.flags)


def slots_for(engine, most: int, max_tokens: int, deadline_s: float) -> int:
    """Replies to draft at once (up to ``most``): as many as let a full-length reply end in FIT_SHARE of
    the deadline at this process's measured pace."""
    return engine.pace.reply_slots(most, max_tokens, FIT_SHARE * deadline_s)


def flags_of(draft: Draft, request: Request, opening: str) -> list[str]:
    """The reply rules a draft breaks: the form rules, what no reply may do whatever the message (blame
    the customer, promise money, invent facts: worker.quality.substance), and ``cut``."""
    found = reply_checks.flags(draft.text, request.text, request.lang, opening=opening)
    found += substance.misses(draft.text, {"lang": request.lang, "text": request.text, "must_not": substance.NEVER})
    return found + [CUT] if draft.truncated else found


class _Feed:
    """The requests as the drafter takes them (lazily, one per free slot), with redrafts first. It can
    run dry and be fed again: a flagged draft comes back while the drafter still runs."""

    def __init__(self, requests: Iterable[Request]):
        self.requests = iter(requests)
        self.again: deque[int] = deque()
        self.known: list[Request] = []  # by request index
        self.order: list[int] = []  # the drafter's item index -> request index

    def __iter__(self):
        return self

    def __next__(self) -> Request:
        redraft = bool(self.again)
        if redraft:
            index = self.again.popleft()
        else:
            request = Request(*next(self.requests))  # StopIteration: nothing waiting (for now)
            self.known.append(request)
            index = len(self.known) - 1
        self.order.append(index)
        return self.known[index]._replace(redraft=redraft)


def checked(engine, requests: Iterable[Request], *, slots: int, max_new_tokens: int, deadline_s: float,
            sampling: dict, until: float | None = None, redrafts: int = 2, end_after: int = 0,
            resampling: dict | None = None) -> Iterator[tuple[int, Reply]]:
    """(request index, reply) for each request as its kept draft ends; see the module's doc."""
    feed = _Feed(requests)
    made: dict[int, Reply] = {}
    for item, draft in engine.drafter.stream(feed, slots=slots, max_new_tokens=max_new_tokens,
                                             deadline_s=deadline_s, sampling=sampling, until=until,
                                             end_after=end_after, resampling=resampling):
        index = feed.order[item]
        request = feed.known[index]
        tone = engine.chat.tone(request.label, request.lang, request.confidence)
        flags = flags_of(draft, request, engine.chat.opening(tone, request.lang))
        reply = made.get(index)
        if reply is None:
            reply = made[index] = Reply(draft, flags, 1, list(flags), draft.tokens)
        else:
            reply.drafts, reply.tokens_drafted = reply.drafts + 1, reply.tokens_drafted + draft.tokens
            if draft.stop != "deadline":  # a redraft the deadline cut is worse than the draft it replaces
                reply.draft, reply.flags = draft, flags
        fits = until is None or until - time.monotonic() > engine.pace.reply_seconds(max_new_tokens, slots)
        if flags and reply.drafts <= redrafts and fits:
            feed.again.append(index)
            continue
        yield index, made.pop(index)
