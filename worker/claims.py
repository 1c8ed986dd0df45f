"""Which waiting messages a running task takes on with its own, so the model runs them as one batch.

A sentiment task takes pending messages of the same language (up to a character budget); a reply
task takes labeled messages outside conversations (those go one at a time, in turn order). Their
own tasks still run and find the work done. A message not taken goes back with its rank.
"""

from __future__ import annotations

from collections.abc import Callable

from worker.errors import BadMessage
from worker.prompts import PromptSet
from worker.schemas import FINAL, Record
from worker.settings import Settings
from worker.store import Store


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


def claim(store: Store, stage: str, own: Record, n: int, accept: Callable[[Record], bool],
          chars: int | None = None) -> list[Record]:
    """Up to ``n`` waiting messages of ``stage`` to process with ``own`` in one go.

    A waiting message not accepted (another language, bad input, over the ``chars`` budget) goes
    back to the list with its rank; a corrupt stored record is left to its own task, which fails
    it alone.
    """
    ranked = store.claim(stage, n)
    taken, back = [], {}
    for rec in store.get_many([i for i in ranked if i != own.id], skip_corrupt=True):  # in rank order
        if accept(rec) and (chars is None or len(rec.text) <= chars):
            taken.append(rec)
            chars = None if chars is None else chars - len(rec.text)
        elif rec.status not in FINAL:
            back[rec.id] = ranked[rec.id]
    store.give_back(stage, back)
    return taken


def same_language(lang: str, prompts: PromptSet, max_chars: int) -> Callable[[Record], bool]:
    def accept(rec: Record) -> bool:
        if rec.status != "pending":
            return False
        try:
            return language(rec, prompts, max_chars) == lang
        except BadMessage:
            return False  # its own task records the reason
    return accept


def replyable(settings: Settings) -> Callable[[Record], bool]:
    def accept(rec: Record) -> bool:
        return (rec.status == "labeled" and not rec.conversation_id and rec.label is not None
                and settings.replies_for(rec.label))
    return accept


def reply_rank(settings: Settings, seq: int, probs: dict[str, float] | None) -> float:
    """Order of replies waiting to be batched: triage priority first, then arrival."""
    return (settings.reply_priority(probs) or 5) * 1e12 + seq
