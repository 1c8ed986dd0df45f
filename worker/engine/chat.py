"""Chat prompts as token ids: the sentiment prompt around a message, the reply conversation, and
the sanitising that keeps user text from forging chat turns. Needs a tokenizer, never a model."""

from __future__ import annotations

import functools

from transformers import PreTrainedTokenizerBase

from worker.common.prompts import UNSURE, Language, PromptSet

SENTINEL = "\u2063MOODQ_TEXT\u2063"

History = list[tuple[str, str | None]]  # earlier turns of a conversation: (message, reply or None)


class Chat:
    def __init__(self, tok: PreTrainedTokenizerBase, prompts: PromptSet):
        self.tok, self.prompts = tok, prompts
        self._specials = sorted(
            {t for t in tok.all_special_tokens + list(tok.get_added_vocab()) if len(t) > 1}, key=len, reverse=True)

    def clean(self, text: str) -> str:
        """Remove special-token strings from user text so it cannot forge chat turns."""
        for special in self._specials:
            if special in text:
                text = text.replace(special, "")
        return text

    def encode(self, text: str) -> list[int]:
        return self.tok(text, add_special_tokens=False)["input_ids"]

    def render(self, chat: list[dict], generation: bool) -> str:
        return self.tok.apply_chat_template(chat, tokenize=False, add_generation_prompt=generation)

    def sentiment_frame(self, lang: Language) -> tuple[list[int], list[int]]:
        """Token ids before and after the message in a language's sentiment prompt (system text,
        demonstrations, the user turn's template, the assistant turn's opening)."""
        s = lang.sentiment
        chat = [{"role": "system", "content": s.system}]
        for ex in s.examples:
            chat += [{"role": "user", "content": s.render_user(ex.text)},
                     {"role": "assistant", "content": s.label_words[ex.label]}]
        chat.append({"role": "user", "content": s.render_user(SENTINEL)})
        prefix, suffix = self.render(chat, generation=True).split(SENTINEL)
        return self.encode(prefix), self.encode(suffix)

    def reply_messages(self, text: str, label: str, lang: str, history: History) -> list[dict]:
        """The reply conversation: the warm system prompt for this label, its demonstrations, earlier turns,
        the message."""
        conf = self.prompts.languages[lang]
        word = conf.reply.unsure_word if label == UNSURE else conf.sentiment.label_words[label]
        chat = [{"role": "system", "content": conf.reply.render_system(label, word)}]
        for ex in conf.reply.examples_for(label):
            chat += [{"role": "user", "content": ex.text}, {"role": "assistant", "content": ex.reply}]
        for past_text, past_reply in history:
            chat.append({"role": "user", "content": self.clean(past_text)})
            if past_reply:
                chat.append({"role": "assistant", "content": self.clean(past_reply)})
        chat.append({"role": "user", "content": self.clean(text)})
        return chat

    @functools.lru_cache(maxsize=None)  # noqa: B019 (a Chat lives as long as its process; few label x language keys)
    def reply_prefix(self, label: str, lang: str) -> tuple[int, ...]:
        """Token ids of the reply conversation's fixed start, its system turn and demonstrations for (tone, language):
        the same for every message, so it is tokenized once and its KV cache computed once (worker.engine.drafting)."""
        return tuple(self.encode(self.render(self.reply_messages("", label, lang, [])[:-1], generation=False)))

    def tone(self, label: str, lang: str, confidence: float | None) -> str:
        """The label whose hint and opening a reply gets: its own, or 'unsure' (worker.common.prompts.ReplyPrompt.tone)."""
        return self.prompts.languages[lang].reply.tone(label, confidence)

    def opening(self, label: str, lang: str) -> str:
        """The words the assistant turn starts with (response priming), from the prompt file."""
        return self.prompts.languages[lang].reply.openings.get(label, "")

    def reply_prompt(self, text: str, label: str, lang: str, history: History) -> list[int]:
        """Token ids of the reply conversation up to and including the opening."""
        rendered = self.render(self.reply_messages(text, label, lang, history), generation=True)
        return self.encode(rendered + self.opening(label, lang))

    def stop_ids(self, model_eos: int | list[int] | None) -> list[int]:
        """Every token that ends a turn: the tokenizer's and the model's end-of-sequence tokens."""
        tok = self.tok
        ids = {tok.eos_token_id, tok.convert_tokens_to_ids("<|im_end|>"), tok.convert_tokens_to_ids("<|endoftext|>")}
        ids.update(model_eos if isinstance(model_eos, list) else [model_eos])
        return sorted(i for i in ids if isinstance(i, int) and i >= 0 and i != tok.unk_token_id)
