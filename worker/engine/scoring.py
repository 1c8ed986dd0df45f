"""Sentiment by scoring: one forward pass over [cached prefix | message | cue] and the
log-probability of each label's full token sequence. The answer is always a configured label.

The fixed prefix (system text + demonstrations) is encoded once per process and its KV cache
reused. Contextual calibration divides out the label prior measured on content-free inputs.
"""

from __future__ import annotations

import copy
import math
import time
from collections.abc import Iterator
from dataclasses import dataclass, field

import torch
from torch.nn import functional as F
from transformers import PreTrainedModel

from worker.common.prompts import PromptSet
from worker.engine import kvcache, lastrows
from worker.engine.batching import buckets, head_and_tail
from worker.engine.chat import Chat
from worker.engine.pace import Pace
from worker.engine.prefixes import Prefixes


@dataclass
class Judgement:
    label: str
    confidence: float
    probs: dict[str, float]
    scores: dict[str, float]


@dataclass
class Frame:
    """Everything fixed for one language's sentiment prompt, computed at load."""

    prefix_ids: list[int]
    suffix_ids: list[int]
    label_ids: list[list[int]]
    groups: dict[tuple[int, ...], list[int]]  # label token prefix -> labels sharing it
    cache: object = None
    head_tokens: list[int] = field(default_factory=list)  # every token of every label word
    head_rows: torch.Tensor | None = None  # their output-matrix rows in float32
    head_bias: torch.Tensor | float = 0.0  # and the head's bias for them, if it has one
    content_free: list[float] = field(default_factory=list)  # log p(label | content-free input), subtracted


class Scorer:
    cached = True  # reuse the prefix's KV cache (tests/reference.py overrides this with the plain way)

    def __init__(self, model: PreTrainedModel, chat: Chat, prompts: PromptSet, max_text_tokens: int = 0,
                 pace: Pace | None = None, prefixes: Prefixes | None = None):
        self.model, self.chat, self.prompts = model, chat, prompts
        self.prefixes = prefixes or Prefixes(model)
        self.labels = prompts.labels
        self.max_text_tokens = max_text_tokens  # sentiment reads at most this many (0 = all)
        self.pace = pace or Pace(max_text_tokens=max_text_tokens)
        self.frames = {code: self._frame(code) for code in prompts.languages}
        for code, lang in prompts.languages.items():
            if lang.sentiment.calibration:
                self.calibration(code)

    def judge(self, texts: list[str], lang: str, calibrate: bool | None = None, max_batch: int = 16) -> list[Judgement]:
        """Label each text (same language). Always returns configured labels; see :meth:`passes`."""
        results: list[Judgement | None] = [None] * len(texts)
        for bucket, judgements in self.passes(texts, lang, calibrate, max_batch):
            for i, judgement in zip(bucket, judgements):
                results[i] = judgement
        return results

    def passes(self, texts: list[str], lang: str, calibrate: bool | None = None, max_batch: int = 16,
               first: int = 0) -> Iterator[tuple[list[int], list[Judgement]]]:
        """Label texts pass by pass: (indices, judgements) of each forward pass, the one holding text
        ``first`` first, so a caller can store what is done and stop between passes.

        Texts are sorted by token length and scored in buckets of similar length, so a batch
        pays little padding. A text longer than ``max_text_tokens`` is read as its first and
        last halves of that. Each pass is timed into the process's pace.
        """
        frame = self.frames[lang]
        if calibrate is None:
            calibrate = self.prompts.languages[lang].sentiment.calibration
        offsets = self.calibration(lang) if calibrate else []  # subtracted from each label's log-probability
        prior = self.prompts.languages[lang].sentiment.label_prior
        if prior:  # a per-label log-prior from the prompt file, added
            offsets = [b - prior.get(label, 0.0) for b, label in zip(offsets or [0.0] * len(self.labels), self.labels)]
        full = [self.chat.encode(self.chat.clean(t)) for t in texts]
        encoded = [head_and_tail(ids, self.max_text_tokens) for ids in full]
        for bucket in sorted(buckets(encoded, max_batch), key=lambda b: first not in b):
            started = time.perf_counter()
            raw = self.label_logprobs(frame, [encoded[i] for i in bucket])
            chars, tokens = sum(len(texts[i]) for i in bucket), sum(len(full[i]) for i in bucket)
            read = sum(len(texts[i]) * len(encoded[i]) / max(1, len(full[i])) for i in bucket)  # of a long text: its part read
            self.pace.scored(lang, read, time.perf_counter() - started, chars_per_token=chars / max(1, tokens))
            yield bucket, [self.decide(scores, offsets) for scores in raw]

    def calibration(self, lang: str) -> list[float]:
        """log p(label | content-free input), averaged over the prompt's inputs; computed once."""
        frame = self.frames[lang]
        inputs = self.prompts.languages[lang].sentiment.calibrate
        if not frame.content_free and inputs:
            scores = torch.tensor(self.label_logprobs(frame, [self.chat.encode(t) for t in inputs]), dtype=torch.float64)
            mean = torch.softmax(scores, dim=-1).mean(dim=0)
            frame.content_free = [math.log(max(float(m), 1e-9)) for m in mean]
        return frame.content_free

    def decide(self, scores: list[float], offsets: list[float]) -> Judgement:
        """The label with the highest (calibrated) probability."""
        adjusted = torch.tensor(scores, dtype=torch.float64) - (torch.tensor(offsets, dtype=torch.float64) if offsets else 0)
        probs = torch.softmax(adjusted, dim=-1).tolist()
        best = max(range(len(probs)), key=probs.__getitem__)
        return Judgement(
            label=self.labels[best], confidence=probs[best],
            probs={lab: round(p, 6) for lab, p in zip(self.labels, probs)},
            scores={lab: round(s, 4) for lab, s in zip(self.labels, scores)},
        )

    def _frame(self, code: str) -> Frame:
        lang = self.prompts.languages[code]
        prefix, suffix = self.chat.sentiment_frame(lang)
        label_ids = [self.chat.encode(lang.sentiment.label_words[label]) for label in self.labels]
        groups: dict[tuple[int, ...], list[int]] = {}
        for j, ids in enumerate(label_ids):
            groups.setdefault(tuple(ids[:-1]), []).append(j)
        frame = Frame(prefix, suffix, label_ids, groups)
        frame.head_tokens = sorted({t for ids in label_ids for t in ids})
        head = self.model.get_output_embeddings()
        frame.head_rows = head.weight.detach()[frame.head_tokens].float()
        if getattr(head, "bias", None) is not None:  # e.g. Phi-2, GPT-J
            frame.head_bias = head.bias.detach()[frame.head_tokens].float()
        if self.cached:
            frame.cache = self.prefixes.get(frame.prefix_ids)
        return frame

    def label_logprobs(self, frame: Frame, encoded: list[list[int]]) -> list[list[float]]:
        """Log P(label tokens | prompt + text) for every encoded text and every label."""
        per_group = self.label_states(frame, encoded)
        # One head matmul for all positions: the 152k-row output matrix is read once per batch.
        # Its normaliser (logsumexp) is shared by every label at a position; the label tokens'
        # own logits are recomputed in float32, because bfloat16 logits are rounded to steps
        # of 1/8-1/16 and two labels would often tie. Every label's first token is predicted at the
        # same position (the cue's end): that row is computed once, then each group's later ones.
        groups, n = list(frame.groups), len(encoded)
        later = [per_group[pre][:, 1:].reshape(-1, per_group[pre].shape[-1]) for pre in groups]
        stacked = torch.cat([per_group[groups[0]][:, 0], *later])
        head = self.model.get_output_embeddings()
        column = {tok: c for c, tok in enumerate(frame.head_tokens)}
        out = torch.zeros(n, len(self.labels), dtype=torch.float64)
        with torch.inference_mode():  # the float head, even where decoding reads an int8 copy
            norm = torch.logsumexp(F.linear(stacked, head.weight, getattr(head, "bias", None)).float(), dim=-1)
            exact = stacked.float() @ frame.head_rows.T + frame.head_bias - norm.unsqueeze(1)  # [positions, label tokens]
            offset = n
            for pre in groups:
                k = len(pre)
                rows = torch.cat([exact[:n].unsqueeze(1), exact[offset: offset + k * n].view(n, k, exact.shape[1])], dim=1)
                for j in frame.groups[pre]:
                    cols = torch.tensor([column[tok] for tok in frame.label_ids[j]])
                    out[:, j] = rows[:, torch.arange(k + 1), cols].sum(dim=-1).double()
                offset += k * n
        return out.tolist()

    def label_states(self, frame: Frame, encoded: list[list[int]]) -> dict[tuple, torch.Tensor]:
        """Hidden states that predict each label token: [texts, len(label prefix)+1, hidden] per group.

        The texts run once on top of the cached prompt prefix (right-padded batch); the
        tokens after a multi-token label's first one run as a second, tiny pass on that cache.
        """
        rows = [ids + frame.suffix_ids for ids in encoded]
        n, p = len(rows), len(frame.prefix_ids)
        batch = self.chat.tok.pad({"input_ids": rows}, padding_side="right", return_tensors="pt")
        ids, text_mask = batch["input_ids"], batch["attention_mask"]
        width, lengths = ids.shape[1], text_mask.sum(dim=1)
        mask = torch.cat([torch.ones(n, p, dtype=text_mask.dtype), text_mask], dim=1)
        out: dict[tuple, torch.Tensor] = {}
        with torch.inference_mode():
            cache = copy.deepcopy(frame.cache)
            if n > 1:
                cache.batch_repeat_interleave(n)
            with lastrows.reading(self.model, lengths - 1):  # the one row per text read below
                states = self.model.base_model(
                    input_ids=ids, attention_mask=mask, use_cache=True, **kvcache.cache_arg(self.model, cache),
                    position_ids=torch.arange(p, p + width).unsqueeze(0).expand(n, -1)).last_hidden_state
            last = states[torch.arange(n), lengths - 1].unsqueeze(1)
            for pre in frame.groups:
                if not pre:
                    out[pre] = last
                    continue
                k = len(pre)
                more = self.model.base_model(
                    input_ids=torch.tensor([list(pre)] * n), use_cache=True, **kvcache.cache_arg(self.model, cache),
                    attention_mask=torch.cat([mask, torch.ones(n, k, dtype=mask.dtype)], dim=1),
                    position_ids=(p + lengths).unsqueeze(1) + torch.arange(k).unsqueeze(0)).last_hidden_state
                cache.crop(-k)  # drop the label tokens again, for the next group
                out[pre] = torch.cat([last, more], dim=1)
        return out
