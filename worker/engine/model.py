"""The resident model's two jobs behind one object: score labels for a message (worker.engine.scoring),
draft a reply (worker.engine.drafting), both on the chat prompts of worker.engine.chat."""

from __future__ import annotations

from worker.common.prompts import PromptSet
from worker.engine import kernels
from worker.engine.chat import Chat, History
from worker.engine.drafting import Draft, Drafter, Request
from worker.engine.loading import Loaded
from worker.engine.pace import Pace
from worker.engine.prefixes import Prefixes
from worker.engine.scoring import Judgement, Scorer

__all__ = ["Draft", "Engine", "Judgement"]


class Engine:
    def __init__(self, loaded: Loaded, prompts: PromptSet, max_text_tokens: int | None = 0,
                 scorer: type[Scorer] = Scorer):
        """``max_text_tokens``: tokens of a message sentiment reads (0: all; None: what its scoring path was measured best
        with, worker.engine.kernels.score_max_tokens)."""
        if max_text_tokens is None:
            max_text_tokens = kernels.score_max_tokens(loaded.plan)
        self.model, self.tok = loaded.model, loaded.tokenizer
        self.model_id = loaded.model_id
        self.plan = loaded.plan
        self.path = str(loaded.plan) if loaded.plan else None  # e.g. avx2/float32 score:int8-fbgemm decode:int8-fbgemm
        self.pace = Pace(loaded.plan, max_text_tokens)  # this process's measured speed (sizes claims and reply batches)
        self.prompts = prompts
        self.labels = prompts.labels
        self.chat = Chat(self.tok, prompts)
        self.prefixes = Prefixes(self.model, loaded.prefix_folder)  # the prompts' fixed prefixes, shared by both jobs
        self.scorer = scorer(self.model, self.chat, prompts, max_text_tokens, pace=self.pace, prefixes=self.prefixes)
        self.drafter = Drafter(self.model, self.chat, pace=self.pace, prefixes=self.prefixes)

    def judge(self, texts: list[str], lang: str, calibrate: bool | None = None, max_batch: int = 16) -> list[Judgement]:
        """Label each text (same language); see :meth:`worker.engine.scoring.Scorer.judge`."""
        return self.scorer.judge(texts, lang, calibrate, max_batch)

    def passes(self, texts: list[str], lang: str, max_batch: int = 16):
        """Label texts pass by pass, the first text's pass first; see :meth:`worker.engine.scoring.Scorer.passes`."""
        return self.scorer.passes(texts, lang, max_batch=max_batch)

    def draft(self, text: str, label: str, lang: str, history: History, *, confidence: float | None = None,
              **options) -> Draft:
        """Draft a reply that knows the label (and how sure it is) and the conversation's earlier turns."""
        return self.draft_many([Request(text, label, lang, history, confidence)], **options)[0]

    def draft_many(self, items: list[Request], **options) -> list[Draft]:
        """Draft several replies; see :meth:`worker.engine.drafting.Drafter.draft_many`."""
        return self.drafter.draft_many(items, **options)
