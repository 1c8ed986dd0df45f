"""Quality and speed of drafted replies on a file, through the worker's own path (`moodq eval --replies`).

Every line is labeled as a worker labels it; the lines whose label gets a reply
(``MOODQ_REPLY_LABELS``) are drafted in batches of ``MOODQ_REPLY_BATCH_SIZE`` with the
worker's prompts, token cap, deadline and sampling (``Settings.draft_options``), and every
reply is checked by the rules in ``worker.reply_checks``.
"""

from __future__ import annotations

import json
import statistics
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass

from worker import reply_checks
from worker.evaluate import judge_all, languages
from worker.model import Engine
from worker.settings import Settings


@dataclass
class LanguageFigures:
    replies: int
    rates: dict[str, float]  # rule -> share of replies it flags; end_of_turn -> share ended by the model
    tokens_p50: float
    tokens_p95: float
    tokens_per_s: float
    seconds: float


@dataclass
class ReplyReport:
    messages: int
    languages: dict[str, LanguageFigures]
    batch_size: int
    max_reply_tokens: int
    prompt_version: str
    model: str
    path: str | None

    def as_json(self) -> str:
        return json.dumps(asdict(self), ensure_ascii=False, indent=2)

    def as_text(self) -> str:
        names = [*reply_checks.RULES, "end_of_turn"]
        lines = [f"model {self.model} ({self.path})  prompts {self.prompt_version}",
                 f"{self.messages} messages; replies in batches of {self.batch_size}, up to {self.max_reply_tokens} tokens",
                 "", f"{'lang':<6}{'replies':>8}" + "".join(f"{n:>16}" for n in names)
                 + f"{'tokens p50/p95':>16}{'tok/s':>8}"]
        for code, f in self.languages.items():
            lines.append(f"{code:<6}{f.replies:>8}" + "".join(f"{f.rates[n]:>16.1%}" for n in names)
                         + f"{f'{f.tokens_p50:.0f}/{f.tokens_p95:.0f}':>16}{f.tokens_per_s:>8.1f}")
        return "\n".join(lines)


def evaluate_replies(engine: Engine, rows: list[dict], settings: Settings, *, lang: str | None = None,
                     progress: Callable[[int], None] | None = None) -> tuple[ReplyReport, list[dict]]:
    """The report, and one dict per message: text, lang, label, gold, reply, stop, tokens, flags."""
    langs = languages(engine, rows, lang)
    judged = judge_all(engine, rows, langs, batch_size=settings.sentiment_batch_size)
    out = [{"text": r["text"], "lang": code, "label": j.label, "gold": r.get("label"), "reply": None,
            "stop": None, "tokens": 0, "flags": []} for r, code, j in zip(rows, langs, judged)]
    figures = {}
    size = settings.reply_batch_size
    for code in dict.fromkeys(langs):
        todo = [i for i, o in enumerate(out) if o["lang"] == code and settings.replies_for(o["label"])]
        started = time.perf_counter()
        for start in range(0, len(todo), size):
            part = todo[start:start + size]
            drafts = engine.draft_many([(out[i]["text"], out[i]["label"], code, []) for i in part],
                                       **settings.draft_options())
            for i, d in zip(part, drafts):
                out[i].update(reply=d.text, stop=d.stop, tokens=d.tokens,
                              flags=reply_checks.flags(d.text, out[i]["text"], code,
                                                       opening=engine.chat.opening(out[i]["label"], code)))
            if progress:
                progress(len(part))
        figures[code] = _figures([out[i] for i in todo], time.perf_counter() - started)
    report = ReplyReport(messages=len(rows), languages=figures, batch_size=size,
                         max_reply_tokens=settings.max_reply_tokens, prompt_version=engine.prompts.version,
                         model=engine.model_id, path=engine.path)
    return report, out


def _figures(done: list[dict], seconds: float) -> LanguageFigures:
    n = len(done)
    rates = {rule: sum(rule in d["flags"] for d in done) / n if n else 0.0 for rule in reply_checks.RULES}
    rates["end_of_turn"] = sum(d["stop"] == "end" for d in done) / n if n else 0.0
    tokens = sorted(d["tokens"] for d in done) or [0]
    p95 = statistics.quantiles(tokens, n=20, method="inclusive")[-1] if len(tokens) > 1 else tokens[0]
    return LanguageFigures(replies=n, rates=rates, tokens_p50=statistics.median(tokens), tokens_p95=p95,
                           tokens_per_s=sum(tokens) / seconds if seconds else 0.0, seconds=round(seconds, 1))
