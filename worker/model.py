"""The resident model's two jobs: score labels for a message, draft a reply.

Sentiment is decided by *scoring*, not by generating and parsing text: one forward
pass over [cached prefix | message | cue] and the log-probability of each label's
full token sequence. The answer is always a configured label. The fixed prefix
(system text + demonstrations) is encoded once per process and its KV cache reused.
Contextual calibration divides out the label prior measured on content-free inputs.
"""

from __future__ import annotations

import copy
import functools
import math
import time
from dataclasses import dataclass, field

import torch
from torch.nn import functional as F

from worker.loading import Loaded
from worker.prompts import Language, PromptSet
from worker.quant import decoding

SENTINEL = "\u2063MOODQ_TEXT\u2063"


@dataclass
class Judgement:
    label: str
    confidence: float
    probs: dict[str, float]
    scores: dict[str, float]


@dataclass
class Draft:
    text: str
    truncated: bool  # cut by the token cap or the deadline, not ended by the model
    tokens: int
    stop: str = "end"  # "end" (the model's end of turn), "cap" (max_new_tokens) or "deadline"


@dataclass
class _Plan:
    """Everything fixed for one language's sentiment prompt, computed at load."""

    prefix_ids: list[int]
    suffix_ids: list[int]
    label_ids: list[list[int]]
    groups: dict[tuple[int, ...], list[int]]  # label token prefix -> labels sharing it
    cache: object = None
    head_tokens: list[int] = field(default_factory=list)  # every token of every label word
    head_rows: torch.Tensor | None = None  # their output-matrix rows in float32
    head_bias: torch.Tensor | float = 0.0  # and the head's bias for them, if it has one
    bias: list[float] = field(default_factory=list)  # log p(label | content-free), subtracted


class Engine:
    def __init__(self, loaded: Loaded, prompts: PromptSet, use_cache: bool = True, max_text_tokens: int = 0):
        self.model, self.tok = loaded.model, loaded.tokenizer
        self.max_text_tokens = max_text_tokens  # sentiment reads at most this many (0 = all)
        self.model_id = loaded.model_id
        self.path = str(loaded.path) if loaded.path else None  # e.g. avx2/float32+int8-decode
        self.prompts = prompts
        self.labels = prompts.labels
        self.use_cache = use_cache
        self._specials = sorted(
            {t for t in self.tok.all_special_tokens + list(self.tok.get_added_vocab()) if len(t) > 1},
            key=len, reverse=True)
        self.plans = {code: self._plan(lang) for code, lang in prompts.languages.items()}
        for code, lang in prompts.languages.items():
            if lang.sentiment.calibration:
                self._calibration(code)

    # --- public
    def judge(self, texts: list[str], lang: str, calibrate: bool | None = None, max_batch: int = 16) -> list[Judgement]:
        """Label each text (same language). Always returns configured labels.

        Texts are sorted by token length and scored in buckets of similar length, so a
        batch pays little padding (padding to the longest message made CPU batches slower).
        A text longer than ``max_text_tokens`` is read as its first and last halves of that.
        """
        plan = self.plans[lang]
        if calibrate is None:
            calibrate = self.prompts.languages[lang].sentiment.calibration
        bias = self._calibration(lang) if calibrate else []
        encoded = [_head_and_tail(self._encode(self.clean(t)), self.max_text_tokens) for t in texts]
        results: list[Judgement | None] = [None] * len(texts)
        for bucket in _buckets(encoded, max_batch):
            raw = self._label_logprobs(plan, [encoded[i] for i in bucket])
            for i, scores in zip(bucket, raw):
                results[i] = self._decide(scores, bias)
        return results

    def draft(self, text: str, label: str, lang: str, history: list[tuple[str, str | None]],
              *, max_new_tokens: int, deadline_s: float, sampling: dict) -> Draft:
        """Draft a reply that knows the label and the conversation's earlier turns."""
        return self.draft_many([(text, label, lang, history)], max_new_tokens=max_new_tokens,
                               deadline_s=deadline_s, sampling=sampling)[0]

    def draft_many(self, items: list[tuple[str, str, str, list[tuple[str, str | None]]]], *,
                   max_new_tokens: int, deadline_s: float, sampling: dict) -> list[Draft]:
        """Draft several replies; each stops at its own end of turn.

        Replies run in buckets of similar prompt length, shortest first, so a long message
        never pads a short one's batch nor uses up its time; each bucket may use what is left of
        ``deadline_s`` (transformers' ``max_time``). A reply cut by the deadline or the token
        cap is ``truncated``, and ``stop`` says which.
        """
        openings = [self.opening(label, lang) for _, label, lang, _ in items]
        prompts = [self._encode(self._render(self._reply_chat(*item), generation=True) + opening)
                   for item, opening in zip(items, openings)]
        drafts: list[Draft | None] = [None] * len(items)
        end = time.monotonic() + deadline_s
        for bucket in _buckets(prompts, len(prompts), slack=1.5, extra=32):
            made = self._generate([prompts[i] for i in bucket], max_new_tokens, end, sampling)
            for i, draft in zip(bucket, made):
                draft.text = (openings[i] + draft.text).strip()
                drafts[i] = draft
        return drafts

    def opening(self, label: str, lang: str) -> str:
        return self.prompts.languages[lang].reply.openings.get(label, "")

    @functools.cached_property
    def _bad_words(self) -> list[list[int]] | None:
        """Token sequences no reply may produce: the prompt files' banned phrases (as they tokenize
        alone and after a space) and, where a language asks for one paragraph, every line break."""
        replies = [lang.reply for lang in self.prompts.languages.values()]
        seqs = {tuple(self._encode(v)) for r in replies for p in r.banned for v in (p, " " + p)}
        if any(r.one_paragraph for r in replies):
            vocab = self.tok.convert_ids_to_tokens(list(range(len(self.tok))))
            seqs |= {(i,) for i, t in enumerate(vocab) if t and ("\u010a" in t or "\n" in t)}  # byte-level "\n" is U+010A
        return [list(s) for s in sorted(seqs) if s] or None

    def _generate(self, prompts: list[list[int]], max_new_tokens: int, end: float, sampling: dict) -> list[Draft]:
        """One left-padded ``generate`` over prompts of similar length, stopping at ``end`` (monotonic)."""
        width = max(len(p) for p in prompts)
        pad = self.tok.pad_token_id
        input_ids = torch.tensor([[pad] * (width - len(p)) + p for p in prompts])
        mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in prompts])
        stops = self._stop_ids()
        with torch.inference_mode(), decoding():
            out = self.model.generate(
                input_ids, attention_mask=mask, max_new_tokens=max_new_tokens,
                max_time=max(0.5, end - time.monotonic()), eos_token_id=stops, pad_token_id=pad,
                bad_words_ids=self._bad_words, **sampling,
            )
        drafts = []
        for row in out[:, width:].tolist():
            ended = next((k for k, t in enumerate(row) if t in stops), None)
            new = row[:ended] if ended is not None else row
            text = self.tok.decode(new, skip_special_tokens=True)  # stripped by the caller, after the opening
            stop = "end" if ended is not None else "cap" if len(new) >= max_new_tokens else "deadline"
            drafts.append(Draft(text, truncated=ended is None, tokens=len(new), stop=stop))
        return drafts

    def _reply_chat(self, text: str, label: str, lang: str, history: list[tuple[str, str | None]]) -> list[dict]:
        conf = self.prompts.languages[lang]
        word = conf.sentiment.label_words[label]
        chat = [{"role": "system", "content": conf.reply.render_system(label, word)}]
        for past_text, past_reply in history:
            chat.append({"role": "user", "content": self.clean(past_text)})
            if past_reply:
                chat.append({"role": "assistant", "content": self.clean(past_reply)})
        chat.append({"role": "user", "content": self.clean(text)})
        return chat

    def clean(self, text: str) -> str:
        """Remove special-token strings from user text so it cannot forge chat turns."""
        for special in self._specials:
            if special in text:
                text = text.replace(special, "")
        return text

    # --- scoring internals
    def _render(self, chat: list[dict], generation: bool) -> str:
        return self.tok.apply_chat_template(chat, tokenize=False, add_generation_prompt=generation)

    def _encode(self, text: str) -> list[int]:
        return self.tok(text, add_special_tokens=False)["input_ids"]

    def _stop_ids(self) -> list[int]:
        ids = {self.tok.eos_token_id, self.tok.convert_tokens_to_ids("<|im_end|>"),
               self.tok.convert_tokens_to_ids("<|endoftext|>")}
        eos = self.model.generation_config.eos_token_id
        ids.update(eos if isinstance(eos, list) else [eos])
        unk = self.tok.unk_token_id
        return sorted(i for i in ids if isinstance(i, int) and i >= 0 and i != unk)

    def _plan(self, lang: Language) -> _Plan:
        s = lang.sentiment
        chat = [{"role": "system", "content": s.system}]
        for ex in s.examples:
            chat += [{"role": "user", "content": s.render_user(ex.text)},
                     {"role": "assistant", "content": s.label_words[ex.label]}]
        chat.append({"role": "user", "content": s.render_user(SENTINEL)})
        prefix, suffix = self._render(chat, generation=True).split(SENTINEL)
        label_ids = [self._encode(s.label_words[label]) for label in self.labels]
        groups: dict[tuple[int, ...], list[int]] = {}
        for j, ids in enumerate(label_ids):
            groups.setdefault(tuple(ids[:-1]), []).append(j)
        plan = _Plan(self._encode(prefix), self._encode(suffix), label_ids, groups)
        plan.head_tokens = sorted({t for ids in label_ids for t in ids})
        head = self.model.get_output_embeddings()
        plan.head_rows = head.weight.detach()[plan.head_tokens].float()
        if getattr(head, "bias", None) is not None:  # e.g. Phi-2, GPT-J
            plan.head_bias = head.bias.detach()[plan.head_tokens].float()
        if self.use_cache:
            with torch.inference_mode():
                out = self.model(torch.tensor([plan.prefix_ids]), use_cache=True)
            plan.cache = out.past_key_values
        return plan

    def _calibration(self, lang: str) -> list[float]:
        """log p(label | content-free input), averaged over the prompt's inputs; computed once."""
        plan = self.plans[lang]
        inputs = self.prompts.languages[lang].sentiment.calibrate
        if not plan.bias and inputs:
            probs = [_softmax(s) for s in self._label_logprobs(plan, [self._encode(t) for t in inputs])]
            mean = [sum(p[j] for p in probs) / len(probs) for j in range(len(self.labels))]
            plan.bias = [math.log(max(m, 1e-9)) for m in mean]
        return plan.bias

    def _decide(self, scores: list[float], bias: list[float]) -> Judgement:
        adjusted = [s - b for s, b in zip(scores, bias)] if bias else scores
        probs = _softmax(adjusted)
        best = max(range(len(probs)), key=probs.__getitem__)
        return Judgement(
            label=self.labels[best], confidence=probs[best],
            probs={lab: round(p, 6) for lab, p in zip(self.labels, probs)},
            scores={lab: round(s, 4) for lab, s in zip(self.labels, scores)},
        )

    def _label_logprobs(self, plan: _Plan, encoded: list[list[int]]) -> list[list[float]]:
        """Log P(label tokens | prompt + text) for every encoded text and every label."""
        if self.use_cache:
            per_group = self._label_states_cached(plan, encoded)
        else:
            per_group = self._label_states_reference(plan, encoded)
        # One head matmul for all positions: the 152k-row output matrix is read once per batch.
        # Its normaliser (logsumexp) is shared by every label at a position; the label tokens'
        # own logits are recomputed in float32, because bfloat16 logits are rounded to steps
        # of 1/8-1/16 and two labels would often tie.
        groups = list(plan.groups)
        stacked = torch.cat([per_group[pre].reshape(-1, per_group[pre].shape[-1]) for pre in groups])
        head = self.model.get_output_embeddings()
        with torch.inference_mode():  # the float head, even where decoding reads an int8 copy
            norm = torch.logsumexp(F.linear(stacked, head.weight, getattr(head, "bias", None)).float(), dim=-1)
            exact = stacked.float() @ plan.head_rows.T + plan.head_bias - norm.unsqueeze(1)  # [positions, label tokens]
        column = {tok: c for c, tok in enumerate(plan.head_tokens)}
        out = [[0.0] * len(self.labels) for _ in encoded]
        offset = 0
        for pre in groups:
            steps = len(pre) + 1
            for i in range(len(encoded)):
                rows = exact[offset + i * steps: offset + (i + 1) * steps]
                for j in plan.groups[pre]:
                    out[i][j] = float(sum(rows[k, column[tok]] for k, tok in enumerate(plan.label_ids[j])))
            offset += steps * len(encoded)
        return out

    def _label_states_cached(self, plan: _Plan, encoded: list[list[int]]) -> dict[tuple, torch.Tensor]:
        """Hidden states that predict each label token: [texts, len(label prefix)+1, hidden] per group.

        The texts run once on top of the cached prompt prefix (right-padded batch); the
        tokens after a multi-token label's first one run as a second, tiny pass on that cache.
        """
        rows = [ids + plan.suffix_ids for ids in encoded]
        n, p, width = len(rows), len(plan.prefix_ids), max(len(r) for r in rows)
        lengths = torch.tensor([len(r) for r in rows])
        pad = self.tok.pad_token_id
        ids = torch.tensor([r + [pad] * (width - len(r)) for r in rows])
        mask = torch.cat([torch.ones(n, p, dtype=torch.long),
                          (torch.arange(width).unsqueeze(0) < lengths.unsqueeze(1)).long()], dim=1)
        out: dict[tuple, torch.Tensor] = {}
        with torch.inference_mode():
            cache = copy.deepcopy(plan.cache)
            if n > 1:
                cache.batch_repeat_interleave(n)
            states = self.model.base_model(
                input_ids=ids, attention_mask=mask, past_key_values=cache, use_cache=True,
                position_ids=torch.arange(p, p + width).unsqueeze(0).expand(n, -1)).last_hidden_state
            last = states[torch.arange(n), lengths - 1].unsqueeze(1)
            for pre in plan.groups:
                if not pre:
                    out[pre] = last
                    continue
                k = len(pre)
                more = self.model.base_model(
                    input_ids=torch.tensor([list(pre)] * n), past_key_values=cache, use_cache=True,
                    attention_mask=torch.cat([mask, torch.ones(n, k, dtype=torch.long)], dim=1),
                    position_ids=(p + lengths).unsqueeze(1) + torch.arange(k).unsqueeze(0)).last_hidden_state
                cache.crop(-k)  # drop the label tokens again, for the next group
                out[pre] = torch.cat([last, more], dim=1)
        return out

    def _label_states_reference(self, plan: _Plan, encoded: list[list[int]]) -> dict[tuple, torch.Tensor]:
        """The same states the plain way: the whole prompt + text + label prefix, no cache, per group."""
        out: dict[tuple, torch.Tensor] = {}
        pad = self.tok.pad_token_id
        for pre in plan.groups:
            rows = [plan.prefix_ids + ids + plan.suffix_ids + list(pre) for ids in encoded]
            width = max(len(r) for r in rows)
            ids = torch.tensor([r + [pad] * (width - len(r)) for r in rows])
            mask = torch.tensor([[1] * len(r) + [0] * (width - len(r)) for r in rows])
            with torch.inference_mode():
                states = self.model.base_model(input_ids=ids, attention_mask=mask).last_hidden_state
            first = [len(r) - len(pre) - 1 for r in rows]
            out[pre] = torch.stack([states[i, f: f + len(pre) + 1] for i, f in enumerate(first)])
        return out


def _head_and_tail(ids: list[int], limit: int) -> list[int]:
    """At most ``limit`` tokens (0 = no limit): the opening and the ending of a long message."""
    if not limit or len(ids) <= limit:
        return ids
    head = (limit + 1) // 2
    return ids[:head] + ids[len(ids) - (limit - head):]


def _buckets(encoded: list[list[int]], max_batch: int, slack: float = 1.25, extra: int = 8) -> list[list[int]]:
    """Indices grouped by similar token length: a bucket's longest is at most ``slack`` x its shortest + ``extra``."""
    order = sorted(range(len(encoded)), key=lambda i: len(encoded[i]))
    buckets: list[list[int]] = []
    for i in order:
        if buckets and len(buckets[-1]) < max_batch and len(encoded[i]) <= slack * len(encoded[buckets[-1][0]]) + extra:
            buckets[-1].append(i)
        else:
            buckets.append([i])
    return buckets


def _softmax(xs: list[float]) -> list[float]:
    top = max(xs)
    exps = [math.exp(x - top) for x in xs]
    total = sum(exps)
    return [e / total for e in exps]
