"""Rules that flag drafted replies no agent should send as they are. Pure functions, no model.

Each rule is deliberately simple and written down here, so a person can check a flag by eye:

- refusal: the reply declines to help ("抱歉，我不能…", "I'm sorry, but I can't assist…") or
  talks about being an AI or a language model, or about not having feelings ("As an artificial
  language model, I don't have feelings…", "作为一个人工智能…", "我没有感情") — a phrase from ``_REFUSAL``.
- wrong_language: a zh reply with less than 30 % CJK among its letters, or an en reply with
  more than 10 % CJK.
- echo: the reply contains, verbatim, a stretch of the message at least half as long as the
  message and at least 8 characters (zh) / 16 (en) long; case and spaces ignored.
- not_addressing: the reply does not speak to the customer: no second-person word (您/你/you/your),
  or it talks about the customer in the third person ("用户表示…", "The customer is…",
  "这条评论…", "This review…").
- loop: three or more numbered/bulleted list lines, or a stretch of 8+ characters (zh) / 4+ words
  (en) repeated three times.
- prompt_leak: the reply repeats the instructions it was given instead of following them
  ('speak directly to the customer as "you"', "one concrete next step", "直接对这位顾客说话", "称呼「您」").
- empty: nothing but white space.
- end_of_turn: the model ended the reply itself (not cut by the token cap or the deadline).
"""

from __future__ import annotations

import re
from difflib import SequenceMatcher

from worker.common.prompts import CJK, LETTER

_REFUSAL = re.compile(
    r"(抱歉|对不起|很遗憾)[，,]?\s*(但|但是)?(我|我们)?(不能|无法|没办法)(为您|为你|协助|提供|回答|帮助|帮您|帮你|完成|处理这个请求)"
    r"|我(们)?(不能|无法)(为您|为你|帮您|帮你)?(提供任何|回答这个|协助完成|继续这个)"
    r"|作为(一个|一名)?(AI|人工智能|语言模型|AI助手|机器人|智能助手)|我(只)?是(一个)?(AI|人工智能|语言模型|机器人|虚拟助手)"
    r"|(我|AI|人工智能)(并)?没有(个人)?(感情|情感|情绪|感受)|语言模型|人工智能(助手|模型|程序)"
    r"|我(们)?(不能|无法)(帮助|支持|鼓励|协助|参与)您?(进行|做|这)?|不道德|违法的行为"
    r"|涉及(版权|知识产权)"
    r"|I('m| am) sorry,? but I (can('|’)?t|cannot|am unable to|won('|’)?t)"
    r"|I (can('|’)?t|cannot|am unable to) (assist|help) with (that|this)"
    r"|as an? (AI|artificial|virtual)|I('m| am) (just |only )?an? (AI|artificial|virtual|language model|bot|chatbot)"
    r"|language model|artificial intelligence|AI (assistant|model)"
    r"|I (don('|’)?t|do not) have (personal )?(feelings|emotions|experiences|a body|opinions)",
    re.IGNORECASE)
_SECOND_PERSON = {"zh": re.compile(r"[您你]"), "en": re.compile(r"\b(you|your|you're|yours)\b", re.IGNORECASE)}
_THIRD_PERSON = {
    "zh": re.compile(r"^\W*(用户|顾客|客户|该用户|这位用户|这条评论|该评论|评论者|这段评论|此评论)"
                     r"|(用户|顾客|客户|评论者)(表示|认为|觉得|提到|反映|说|对)"),
    "en": re.compile(r"^\W*(the|this) (user|customer|review|reviewer|text|message|comment)\b"
                     r"|\b(the (user|customer|reviewer)) (is|was|seems|feels|says|said|expresses|mentions|thinks)\b",
                     re.IGNORECASE),
}
_PROMPT_LEAK = re.compile(
    r"speak directly to the customer|as \"you\"|typing \"you\"|(one|a) concrete next step|in two or three short"
    r"|this (review|message) is (positive|negative)|the customer as \"?you"
    r"|直接对这位顾客说话|称呼「您」|两三句|具体的下一步|这条(评价|留言)是「", re.IGNORECASE)
_LIST_LINE = re.compile(r"^\s*(\d+[.、)）]|[-*•])\s*\S", re.MULTILINE)

RULES = ("refusal", "wrong_language", "echo", "not_addressing", "loop", "prompt_leak", "empty")


def refusal(reply: str) -> bool:
    return bool(_REFUSAL.search(reply))


def wrong_language(reply: str, lang: str) -> bool:
    letters = len(LETTER.findall(reply))
    if not letters:
        return False
    share = len(CJK.findall(reply)) / letters
    return share < 0.3 if lang == "zh" else share > 0.1


def echo(reply: str, text: str) -> bool:
    a, b = _squash(text), _squash(reply)
    shortest = 8 if CJK.search(text) else 16  # characters: a few words, not one shared word
    if len(a) < shortest or not b:
        return False
    match = SequenceMatcher(None, a, b, autojunk=False).find_longest_match(0, len(a), 0, len(b))
    return match.size >= max(len(a) / 2, shortest)


def not_addressing(reply: str, lang: str) -> bool:
    """In either language: a reply in the wrong one is flagged for that, not for this."""
    second = any(p.search(reply) for p in _SECOND_PERSON.values())
    return not second or any(p.search(reply) for p in _THIRD_PERSON.values())


def loop(reply: str, lang: str) -> bool:
    if len(_LIST_LINE.findall(reply)) >= 3:
        return True
    if lang == "zh":
        units, size = [c for c in _squash(reply)], 8
    else:
        units, size = re.findall(r"\w+", reply.lower()), 4
    seen: dict[tuple, int] = {}
    for i in range(len(units) - size + 1):
        gram = tuple(units[i:i + size])
        seen[gram] = seen.get(gram, 0) + 1
        if seen[gram] >= 3:
            return True
    return False


def empty(reply: str) -> bool:
    return not reply.strip()


def flags(reply: str, text: str, lang: str, opening: str = "") -> list[str]:
    """The names of the rules this reply breaks (empty list: nothing flagged).

    ``opening`` is the prompt file's response priming; it is not the model's doing, so the
    rules read the reply without it (a primed "您好，" does not count as addressing anyone).
    """
    if opening and reply.startswith(opening.strip()):
        reply = reply[len(opening.strip()):]
    if empty(reply):
        return ["empty"]
    found = {"refusal": refusal(reply), "wrong_language": wrong_language(reply, lang), "echo": echo(reply, text),
             "not_addressing": not_addressing(reply, lang), "loop": loop(reply, lang),
             "prompt_leak": bool(_PROMPT_LEAK.search(reply))}
    return [name for name, hit in found.items() if hit]


def _squash(text: str) -> str:
    return re.sub(r"\s+", "", text.lower())
