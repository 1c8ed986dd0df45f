"""The opt-in reply grader: a larger model (by default the embedded 1.5B) reads the customer's message and
the drafted reply and is scored on "sendable" / "not sendable", as labels are scored (worker.engine.scoring), with
the prompts of prompts/judge.yaml. Slower than the rules (worker.quality.reply_checks, worker.quality.substance) and not
exact either; its agreement with hand grades is measured by bench/grader.py."""

from __future__ import annotations

from worker.common.prompts import load_prompts
from worker.common.settings import PROMPTS_FILE

JUDGE_PROMPTS = PROMPTS_FILE.parent / "judge.yaml"
DRAFT = {"zh": "\n回复草稿：", "en": "\nDraft reply: "}  # between the message and the reply in the prompt's $text


class Grader:
    def __init__(self, model: str = "embedded-large", threads: int = 0):
        from worker.common.settings import load_settings
        from worker.engine.loading import load
        from worker.engine.model import Engine

        settings = load_settings(model=model, threads=threads or 0)
        self.engine = Engine(load(settings), load_prompts(JUDGE_PROMPTS), max_text_tokens=0)

    def sendable(self, pairs: list[tuple[str, str, str]], batch: int = 8) -> list[float]:
        """P(sendable) for each (message, reply, lang)."""
        out: list[float] = [0.0] * len(pairs)
        for lang in {p[2] for p in pairs}:
            idx = [i for i, p in enumerate(pairs) if p[2] == lang]
            texts = [f"{pairs[i][0]}{DRAFT[lang]}{pairs[i][1]}" for i in idx]
            for i, j in zip(idx, self.engine.judge(texts, lang, max_batch=batch)):
                out[i] = j.probs["sendable"]
        return out
