"""Drafting replies: batched ``generate`` in buckets of similar prompt length, each reply ending at
its own end of turn, with the token cap and the deadline said out loud when they cut one."""

from __future__ import annotations

import functools
import time
from dataclasses import dataclass

import torch
from transformers import PreTrainedModel

from worker.batching import buckets
from worker.chat import Chat, History
from worker.quant import decoding

Item = tuple[str, str, str, History]  # (text, label, lang, history)


@dataclass
class Draft:
    text: str
    truncated: bool  # cut by the token cap or the deadline, not ended by the model
    tokens: int
    stop: str = "end"  # "end" (the model's end of turn), "cap" (max_new_tokens) or "deadline"


class Drafter:
    def __init__(self, model: PreTrainedModel, chat: Chat):
        self.model, self.chat = model, chat
        self.stops = chat.stop_ids(model.generation_config.eos_token_id)

    def draft_many(self, items: list[Item], *, max_new_tokens: int, deadline_s: float, sampling: dict) -> list[Draft]:
        """Draft several replies; each stops at its own end of turn.

        Replies run in buckets of similar prompt length, shortest first, so a long message
        never pads a short one's batch nor uses up its time; each bucket may use what is left of
        ``deadline_s`` (transformers' ``max_time``). A reply cut by the deadline or the token
        cap is ``truncated``, and ``stop`` says which.
        """
        openings = [self.chat.opening(label, lang) for _, label, lang, _ in items]
        prompts = [self.chat.reply_prompt(*item) for item in items]
        drafts: list[Draft | None] = [None] * len(items)
        end = time.monotonic() + deadline_s
        for bucket in buckets(prompts, len(prompts), slack=1.5, extra=32):
            made = self._generate([prompts[i] for i in bucket], max_new_tokens, end, sampling)
            for i, draft in zip(bucket, made):
                draft.text = (openings[i] + draft.text).strip()
                drafts[i] = draft
        return drafts

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

    def _generate(self, prompts: list[list[int]], max_new_tokens: int, end: float, sampling: dict) -> list[Draft]:
        """One left-padded ``generate`` over prompts of similar length, stopping at ``end`` (monotonic)."""
        tok = self.chat.tok
        batch = tok.pad({"input_ids": prompts}, padding_side="left", return_tensors="pt")
        width = batch["input_ids"].shape[1]
        with torch.inference_mode(), decoding():
            out = self.model.generate(
                **batch, max_new_tokens=max_new_tokens, max_time=max(0.5, end - time.monotonic()),
                eos_token_id=self.stops, pad_token_id=tok.pad_token_id, bad_words_ids=self.bad_words, **sampling,
            )
        drafts = []
        for row in out[:, width:].tolist():
            ended = next((k for k, t in enumerate(row) if t in self.stops), None)
            new = row[:ended] if ended is not None else row
            text = tok.decode(new, skip_special_tokens=True)  # stripped by the caller, after the opening
            stop = "end" if ended is not None else "cap" if len(new) >= max_new_tokens else "deadline"
            drafts.append(Draft(text, truncated=ended is None, tokens=len(new), stop=stop))
        return drafts
