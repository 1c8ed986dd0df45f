"""Drafting replies by continuous batching. Each reply is prefilled alone, on top of the cached KV of
its system prompt (fixed per language and tone: a label, or 'unsure'; encoded once per process), then joins the running
batch; every decode step reads the weights once for all running replies, and a reply leaves the
batch at its own end of turn, token cap or deadline, its slot taken by the next waiting message.
So no reply pads, waits for, or shortens another, and a long prompt costs only its own prefill."""

from __future__ import annotations

import copy
import functools
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import NamedTuple

import torch
from transformers import (
    LogitsProcessorList,
    NoBadWordsLogitsProcessor,
    NoRepeatNGramLogitsProcessor,
    PreTrainedModel,
    RepetitionPenaltyLogitsProcessor,
    TemperatureLogitsWarper,
    TopPLogitsWarper,
)

from worker.engine import kvcache, lastrows
from worker.engine.chat import Chat, History
from worker.engine.kernels import decoding
from worker.engine.pace import Pace
from worker.engine.prefixes import Prefixes


class Request(NamedTuple):
    """What one reply is drafted from (a plain 4-tuple in this order works too)."""

    text: str
    label: str
    lang: str
    history: History = ()
    confidence: float | None = None  # the label's: a label the model was unsure of gets the 'unsure' reply tone
    redraft: bool = False  # drafted again because a rule flagged its draft: picks with the redraft sampling


@dataclass
class Draft:
    text: str
    truncated: bool  # cut by the token cap or the deadline, not ended by the model
    tokens: int
    stop: str = "end"  # "end" (the model's end of turn), "sentence" (a sentence's end past ``end_after``
    # tokens), "cap" (max_new_tokens) or "deadline"


@dataclass
class _Row:
    index: int  # which item
    tokens: list[int]  # prompt, then the reply so far (its last token not yet in the cache)
    start: int  # where the reply begins
    deadline: float  # monotonic
    opening: str  # the primed first words: part of the reply
    redraft: bool = False
    stop: str | None = None

    @property
    def reply(self) -> list[int]:
        return self.tokens[self.start:]


@dataclass
class _Batch:
    """The replies being drafted together: their rows, their joined KV cache and attention mask."""

    rows: list[_Row] = field(default_factory=list)
    cache: object = None
    mask: torch.Tensor | None = None


class Drafter:
    def __init__(self, model: PreTrainedModel, chat: Chat, pace: Pace | None = None, prefixes: Prefixes | None = None):
        self.model, self.chat = model, chat
        self.pace = pace or Pace()
        self.stops = chat.stop_ids(model.generation_config.eos_token_id)
        self.rows_join = kvcache.rows_can_join(model)
        self.prefixes = prefixes or Prefixes(model)  # each system prompt's KV cache
        self._texts: dict[int, str] = {}  # token id -> its text, for the sentence ends

    def draft_many(self, items: list[Request], *, slots: int | None = None, **options) -> list[Draft]:
        """A reply for every item, in order, at most ``slots`` (default: all) drafted at a time; see :meth:`stream`."""
        drafts: list[Draft | None] = [None] * len(items)
        for i, draft in self.stream(items, slots=slots or len(items), **options):
            drafts[i] = draft
        return drafts

    def stream(self, items: Iterable[Request], *, slots: int, max_new_tokens: int, deadline_s: float, sampling: dict,
               until: float | None = None, end_after: int = 0,
               resampling: dict | None = None) -> Iterator[tuple[int, Draft]]:
        """(index, draft) for each item as its reply ends, at most ``slots`` drafted at a time.

        ``items`` is read lazily: the next item is taken only when a slot is free, so a caller can
        hand out work as it arrives. Each reply may take ``deadline_s`` from the moment it starts,
        and none runs past ``until`` (monotonic); a reply cut by a deadline or the token cap is
        ``truncated``, and ``stop`` says which. With ``end_after``, a reply that has that many tokens ends
        at its next sentence end (not truncated: every sentence is whole). Items marked ``redraft`` pick
        their tokens by ``resampling`` (default: ``sampling``). The model runs its decode kernels only
        inside each step, never while the caller holds a draft.
        """
        slots = max(1, slots) if self.rows_join else 1
        choose, pending = self._chooser(sampling, resampling), iter(enumerate(items))
        batch = _Batch()
        while True:
            with torch.inference_mode(), decoding():
                self._fill(batch, pending, slots, choose, deadline_s, until)
                if not batch.rows:
                    return
                ended = self._drop_ended(batch, max_new_tokens, end_after)
                if batch.rows and not ended:
                    self._step(batch, choose)
            yield from ended

    def _fill(self, batch: _Batch, pending, slots: int, choose, deadline_s: float, until: float | None) -> None:
        """Free slots take the next items: each prompt prefilled alone, then joined to the batch."""
        while len(batch.rows) < slots and (nxt := next(pending, None)) is not None:
            i, item = nxt[0], Request(*nxt[1])
            tone = self.chat.tone(item.label, item.lang, item.confidence)
            prompt = self.chat.reply_prompt(item.text, tone, item.lang, item.history)
            row_cache, logits = self._prefill(prompt, self.chat.reply_prefix(tone, item.lang))
            deadline = time.monotonic() + deadline_s
            row = _Row(i, list(prompt), len(prompt), min(deadline, until or deadline),
                       self.chat.opening(tone, item.lang), item.redraft)
            row.tokens += choose([row], logits)
            batch.cache, batch.mask = kvcache.join(batch.cache, row_cache), self._join_masks(batch.mask, len(prompt))
            batch.rows.append(row)

    def _drop_ended(self, batch: _Batch, max_new_tokens: int, end_after: int = 0) -> list[tuple[int, Draft]]:
        """The drafts of rows that ended (end of turn, a sentence past ``end_after``, token cap, deadline),
        taken out of the batch."""
        for r in batch.rows:
            r.stop = self._stop(r, max_new_tokens, end_after)
        ended = [(r.index, self._draft(r)) for r in batch.rows if r.stop]
        if ended:
            kept = [j for j, r in enumerate(batch.rows) if not r.stop]
            batch.rows = [batch.rows[j] for j in kept]
            if not batch.rows:
                batch.cache = batch.mask = None
            else:
                mask = batch.mask[kept]
                first = int(mask.any(dim=0).nonzero()[0])  # columns before it pad every kept row
                batch.cache, batch.mask = kvcache.keep(batch.cache, kept, first), mask[:, first:]
        return ended

    def _step(self, batch: _Batch, choose) -> None:
        """One decode step for every running row (timed into the process's pace)."""
        started = time.perf_counter()
        rows = batch.rows
        batch.mask = torch.cat([batch.mask, batch.mask.new_ones(len(rows), 1)], dim=1)
        out = self.model(
            input_ids=torch.tensor([[r.tokens[-1]] for r in rows]), attention_mask=batch.mask,
            position_ids=torch.tensor([[len(r.tokens) - 1] for r in rows]), use_cache=True, logits_to_keep=1,
            **kvcache.cache_arg(self.model, batch.cache))
        batch.cache = kvcache.returned(out)
        for r, token in zip(rows, choose(rows, out.logits[:, -1])):
            r.tokens.append(token)
        self.pace.stepped(len(rows), time.perf_counter() - started)

    def _prefill(self, prompt: list[int], prefix: tuple[int, ...]):
        """One prompt's KV cache and its next-token logits, reusing the cached system prompt when the
        prompt starts with it."""
        cache, done = None, 0
        if 0 < len(prefix) < len(prompt) and tuple(prompt[:len(prefix)]) == prefix:
            cache, done = copy.deepcopy(self.prefixes.get(prefix)), len(prefix)
        started = time.perf_counter()
        with lastrows.reading(self.model, torch.tensor([len(prompt) - done - 1])):  # only the last row's logits are read
            out = self.model(input_ids=torch.tensor([prompt[done:]]), position_ids=torch.arange(done, len(prompt))[None],
                             use_cache=True, logits_to_keep=1, **kvcache.cache_arg(self.model, cache))
        self.pace.prefilled(len(prompt) - done, time.perf_counter() - started)
        return kvcache.returned(out), out.logits[:, -1]

    @staticmethod
    def _join_masks(mask: torch.Tensor | None, length: int) -> torch.Tensor:
        """The running batch's attention mask with one more row of ``length`` tokens, right-aligned."""
        row = torch.ones(1, length, dtype=torch.long)
        if mask is None:
            return row
        width = max(mask.shape[1], length)
        pad = lambda m: torch.cat([m.new_zeros(m.shape[0], width - m.shape[1]), m], dim=1)  # noqa: E731
        return torch.cat([pad(mask), pad(row)])

    def _stop(self, row: _Row, max_new_tokens: int, end_after: int = 0) -> str | None:
        if row.reply and row.reply[-1] in self.stops:
            return "end"
        if end_after and len(row.reply) >= end_after and self._ends_sentence(row.reply):
            return "sentence"
        if len(row.reply) >= max_new_tokens:
            return "cap"
        return "deadline" if time.monotonic() > row.deadline else None

    def _draft(self, row: _Row) -> Draft:
        new = row.reply[:-1] if row.stop == "end" else row.reply
        text = self.chat.tok.decode(new, skip_special_tokens=True)
        return Draft((row.opening + text).strip(), truncated=row.stop not in ("end", "sentence"), tokens=len(new),
                     stop=row.stop)

    def _chooser(self, sampling: dict, resampling: dict | None = None):
        """The next token of each row: by ``sampling``, or by ``resampling`` for a redraft's row."""
        first = self._picker(sampling)
        again = self._picker(resampling) if resampling and resampling != sampling else first

        def choose(rows: list[_Row], logits: torch.Tensor) -> list[int]:
            if again is first or not any(r.redraft for r in rows):
                return first(rows, logits)
            picked = [0] * len(rows)
            for pick, redraft in ((first, False), (again, True)):
                where = [j for j, r in enumerate(rows) if r.redraft == redraft]
                if where:
                    for j, token in zip(where, pick([rows[j] for j in where], logits[where])):
                        picked[j] = token
            return picked

        return choose

    def _picker(self, sampling: dict):
        """The next token of each row: the model's generation config with ``sampling`` on top, as
        transformers' logits processors (banned phrases, repetition penalty, n-gram bans), then
        greedy, or temperature and top-p sampling among the top-k tokens."""
        cfg = copy.deepcopy(self.model.generation_config)
        cfg.update(**sampling)
        rules = LogitsProcessorList()
        if self.bad_words:
            rules.append(NoBadWordsLogitsProcessor(self.bad_words, eos_token_id=self.stops))
        if cfg.repetition_penalty and cfg.repetition_penalty != 1.0:
            rules.append(RepetitionPenaltyLogitsProcessor(cfg.repetition_penalty))
        if cfg.no_repeat_ngram_size:
            rules.append(NoRepeatNGramLogitsProcessor(cfg.no_repeat_ngram_size))
        warpers = LogitsProcessorList()
        if cfg.temperature and cfg.temperature != 1.0:
            warpers.append(TemperatureLogitsWarper(cfg.temperature))
        if cfg.top_p is not None and cfg.top_p < 1.0:
            warpers.append(TopPLogitsWarper(cfg.top_p))

        def choose(rows: list[_Row], logits: torch.Tensor) -> list[int]:
            width = max(len(r.tokens) for r in rows)  # left-padded with each row's own first token,
            ids = torch.tensor([[r.tokens[0]] * (width - len(r.tokens)) + r.tokens for r in rows])  # a no-op pad
            scores = rules(ids, logits.float())
            if not cfg.do_sample:
                return scores.argmax(dim=-1).tolist()
            top, where = scores.topk(min(cfg.top_k or scores.shape[-1], scores.shape[-1]), dim=-1)
            picked = torch.multinomial(torch.softmax(warpers(ids, top), dim=-1), 1)  # top-p over the top k only:
            return where.gather(1, picked).squeeze(1).tolist()  # the same draw, without sorting the vocabulary

        return choose

    def _ends_sentence(self, reply: list[int]) -> bool:
        """Whether the reply's last token ends a sentence: its text ends in 。！？!?…, or in a full stop after a
        letter (not "1." of a list or "3." of a number). Each token's text is decoded once per process."""
        last = self._texts.get(reply[-1])
        if last is None:
            last = self._texts[reply[-1]] = self.chat.tok.decode(reply[-1:]).rstrip()
        if last.endswith(("。", "！", "？", "!", "?", "…")):
            return True
        if not last.endswith("."):
            return False
        tail = self.chat.tok.decode(reply[-2:]).rstrip()  # the full stop may be a token of its own
        return len(tail) > 1 and tail[-2].isalpha()

    @functools.cached_property
    def bad_words(self) -> list[list[int]] | None:
        """Token sequences no reply may produce: the prompt files' banned phrases (as they tokenize
        alone and after a space) and, where a language asks for one paragraph, every line break."""
        replies = [lang.reply for lang in self.chat.prompts.languages.values()]
        seqs = {tuple(self.chat.encode(v)) for r in replies for p in r.banned for v in (p, " " + p)}
        if any(r.one_paragraph for r in replies):
            tok = self.chat.tok
            vocab = tok.convert_ids_to_tokens(list(range(len(tok))))
            seqs |= {(i,) for i, t in enumerate(vocab) if t and ("\u010a" in t or "\n" in t)}  # byte-level "\n" is U+010A
        return [list(s) for s in sorted(seqs) if s] or None
