"""Which waiting messages a running task takes on with its own, so the model runs them as one batch.

A sentiment task takes pending messages of the same language (up to a character budget); a reply
task takes labeled messages whose label gets a reply (a conversation's turns too, unless their replies
show the earlier replies, MOODQ_HISTORY_REPLIES: those go one at a time, in turn order). Their
own tasks still run and find the work done. A claim looks at the first WINDOW x n waiting ids and
removes only those it takes: a message a sentiment claim does not accept (another language, over its
budget) stays where it is for another claim, without blocking this one; one no claim can take (its
record is gone, corrupt, or no longer waiting for this stage; for replies, anything not accepted: a
reply claim's rules are the same for every task) is dropped from the list.
"""

from __future__ import annotations

from collections.abc import Callable

from worker.common.errors import BadMessage
from worker.common.prompts import PromptSet
from worker.common.schemas import Record
from worker.common.settings import Settings
from worker.common.store import Store


def language(rec: Record, prompts: PromptSet, max_chars: int) -> str:
    """The prompt language of a message, or BadMessage if the worker refuses it."""
    if not isinstance(rec.text, str) or not rec.text.strip():
        raise BadMessage("text is empty or only whitespace")
    if len(rec.text) > max_chars:
        raise BadMessage(f"text is {len(rec.text)} characters, over the limit of {max_chars}")
    try:
        return prompts.language_of(rec.text, rec.lang)
    except KeyError:
        raise BadMessage(f"no prompts for language {rec.lang!r} (have {', '.join(prompts.languages)})") from None


WINDOW = 4  # a claim for n messages looks at the first WINDOW x n waiting ids (at least MIN_WINDOW)
MIN_WINDOW = 32
WAITS_FOR = {"sentiment": "pending", "reply": "labeled"}  # the status a message waiting for each stage has


def claim(store: Store, stage: str, own: Record, n: int, accept: Callable[[Record], bool],
          chars: float | None = None, keep_rejected: bool = True,
          cost: Callable[[Record], float] = lambda r: len(r.text),
          lease: tuple[str, float] | None = None) -> list[Record]:
    """Up to ``n`` waiting messages of ``stage`` to process with ``own`` in one go, first-ranked first,
    within ``chars`` characters if given, each message counted as ``cost`` says; with ``lease`` (holder,
    seconds) each taken message is leased to the holder (Store.take). A corrupt stored record is left to
    its own task, which fails it alone."""
    if n <= 0:
        return []
    ids = [i for i in store.waiting(stage, max(WINDOW * n, MIN_WINDOW)) if i != own.id]
    records = {r.id: r for r in store.get_many(ids, skip_corrupt=True)}
    picked, dead = [], []
    for mid in ids:
        rec = records.get(mid)
        if rec is None or rec.status != WAITS_FOR[stage] or not (keep_rejected or accept(rec)):
            dead.append(mid)
        elif len(picked) < n and accept(rec) and (chars is None or cost(rec) <= chars):
            picked.append(rec)
            chars = None if chars is None else chars - cost(rec)
    store.take(stage, dead)
    taken = store.take(stage, [r.id for r in picked], lease)
    return [r for r in picked if r.id in taken]


def same_language(lang: str, prompts: PromptSet, max_chars: int) -> Callable[[Record], bool]:
    def accept(rec: Record) -> bool:
        if rec.status != "pending":
            return False
        try:
            return language(rec, prompts, max_chars) == lang
        except BadMessage:
            return False  # its own task records the reason
    return accept


def replyable(settings: Settings) -> Callable[..., bool]:
    """Whether a reply task may take this message on: labeled (or about to be, with ``label``), its label gets
    a reply, and it is not a conversation turn whose reply must wait for the earlier replies
    (MOODQ_HISTORY_REPLIES: those go one at a time, in turn order)."""
    def accept(rec: Record, label: str | None = None) -> bool:
        if label is None:  # a waiting message: it must be labeled
            if rec.status != "labeled" or rec.label is None:
                return False
            label = rec.label
        return settings.replies_for(label) and not (rec.conversation_id and settings.history_replies)
    return accept


def reply_rank(settings: Settings, seq: int, probs: dict[str, float] | None) -> float:
    """Order of replies waiting to be batched: triage priority first, then arrival."""
    return (settings.reply_priority(probs) or 5) * 1e12 + seq
