"""Quality and speed of drafted replies on a file, through the worker's own path (`moodq eval --replies`).

Every line is labeled as a worker labels it; the lines whose label gets a reply
(``MOODQ_REPLY_LABELS``) are drafted as a reply task drafts them: continuous batching with as many
slots as this process's measured pace allows (up to ``MOODQ_REPLY_BATCH_SIZE``), a freed slot taking
the next line, every draft checked by ``worker.quality.reply_checks`` and drafted again while flagged
(``worker.quality.replying.checked``). Lines of a graded file (bench/data/desk_graded.jsonl: ``must`` /
``must_not``) are also checked for substance (``worker.quality.substance``); "sendable" is a reply that
breaks no form rule and no substance rule.
"""

from __future__ import annotations

import json
import statistics
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass

from worker.common.settings import Settings
from worker.engine.model import Engine
from worker.quality import reply_checks, substance
from worker.quality.evaluate import judge_all, languages
from worker.quality.replying import CUT, Request, checked, slots_for

RULES = (*reply_checks.RULES, *substance.NEVER, CUT)


@dataclass
class LanguageFigures:
    replies: int
    rates: dict[str, float]  # rule -> share of stored replies it still flags (after redrafts)
    first_draft_rates: dict[str, float]  # ... and of first drafts, before any redraft
    needs_review: float  # share stored as `review`
    redrafted: float  # share that needed more than one draft
    sendable: float | None  # share with no form and no substance miss (graded lines only)
    judge_sendable: float | None  # share the opt-in grader calls sendable (`--judge`)
    substance: dict[str, float]  # substance code -> share of graded replies that miss it
    tokens_p50: float
    tokens_p95: float
    tokens_per_s: float  # every drafted token, redrafts included
    seconds: float


@dataclass
class ReplyReport:
    messages: int
    languages: dict[str, LanguageFigures]
    batch_size: int
    max_reply_tokens: int
    redrafts: int
    temperature: float  # of first drafts (0: greedy)
    redraft_temperature: float
    prompt_version: str
    model: str
    path: str | None

    def as_json(self) -> str:
        return json.dumps(asdict(self), ensure_ascii=False, indent=2)

    def as_text(self) -> str:
        lines = [f"model {self.model} ({self.path})  prompts {self.prompt_version}",
                 f"{self.messages} messages; replies drafted {self.batch_size} at a time, up to {self.max_reply_tokens} "
                 f"tokens, {_picking(self.temperature)}; flagged ones drafted again up to {self.redrafts} times, "
                 f"{_picking(self.redraft_temperature)}",
                 "", "share of stored replies a rule still flags (first drafts in brackets)",
                 f"{'lang':<6}{'replies':>8}" + "".join(f"{n:>18}" for n in RULES)
                 + f"{'needs review':>14}{'sendable':>10}{'tokens p50/p95':>16}{'tok/s':>8}"]
        for code, f in self.languages.items():
            sendable = "-" if f.sendable is None else f"{f.sendable:.1%}"
            if f.judge_sendable is not None:
                sendable += f" (judge {f.judge_sendable:.0%})"
            lines.append(f"{code:<6}{f.replies:>8}"
                         + "".join(f"{f'{f.rates[n]:.1%} ({f.first_draft_rates[n]:.1%})':>18}" for n in RULES)
                         + f"{f.needs_review:>14.1%}{sendable:>10}{f'{f.tokens_p50:.0f}/{f.tokens_p95:.0f}':>16}"
                         + f"{f.tokens_per_s:>8.1f}")
        for code, f in self.languages.items():
            if f.substance:
                lines.append(f"{code} substance misses: " + ", ".join(f"{k} {v:.1%}" for k, v in f.substance.items()))
        return "\n".join(lines)


def evaluate_replies(engine: Engine, rows: list[dict], settings: Settings, *, lang: str | None = None,
                     progress: Callable[[int], None] | None = None) -> tuple[ReplyReport, list[dict]]:
    """The report, and one dict per message: text, lang, label, gold, reply, stop, tokens, flags, drafts, ..."""
    langs = languages(engine, rows, lang)
    judged = judge_all(engine, rows, langs, batch_size=settings.sentiment_batch_size)
    out = [{"id": r.get("id"), "text": r["text"], "lang": code, "label": j.label, "confidence": round(j.confidence, 4),
            "tone": engine.chat.tone(j.label, code, j.confidence), "gold": r.get("label"), "reply": None, "stop": None,
            "tokens": 0, "flags": [], "first_flags": [], "drafts": 0}
           for r, code, j in zip(rows, langs, judged)]
    options = settings.draft_options()
    slots = slots_for(engine, settings.reply_batch_size, settings.max_reply_tokens, options["deadline_s"])
    figures = {}
    for code in dict.fromkeys(langs):
        todo = [i for i, o in enumerate(out) if o["lang"] == code and settings.replies_for(o["label"])]
        requests = (Request(out[i]["text"], out[i]["label"], code, confidence=judged[i].confidence) for i in todo)
        started, drafted = time.perf_counter(), 0
        for k, reply in checked(engine, requests, slots=slots, redrafts=settings.redrafts, **options):
            line, draft = out[todo[k]], reply.draft
            line.update(reply=draft.text, stop=draft.stop, tokens=draft.tokens, flags=reply.flags,
                        first_flags=reply.first_flags, drafts=reply.drafts)
            drafted += reply.tokens_drafted
            if rows[todo[k]].get("must") is not None:
                line["misses"] = substance.misses(draft.text, rows[todo[k]])
                line["sendable"] = substance.sendable(reply.flags, line["misses"])
            if progress:
                progress(1)
        figures[code] = _figures([out[i] for i in todo], time.perf_counter() - started, drafted)
    report = ReplyReport(messages=len(rows), languages=figures, batch_size=slots,
                         max_reply_tokens=settings.max_reply_tokens, redrafts=settings.redrafts,
                         temperature=settings.temperature, redraft_temperature=settings.redraft_temperature,
                         prompt_version=engine.prompts.version, model=engine.model_id, path=engine.path)
    return report, out


def _picking(temperature: float) -> str:
    return f"sampled at {temperature:g}" if temperature > 0 else "greedy"


def _share(lines: list[dict], hit: Callable[[dict], bool]) -> float:
    return sum(map(hit, lines)) / len(lines) if lines else 0.0


def _figures(done: list[dict], seconds: float, drafted: int) -> LanguageFigures:
    graded = [d for d in done if "misses" in d]
    tokens = sorted(d["tokens"] for d in done) or [0]
    p95 = statistics.quantiles(tokens, n=20, method="inclusive")[-1] if len(tokens) > 1 else tokens[0]
    return LanguageFigures(
        replies=len(done),
        rates={rule: _share(done, lambda d, r=rule: r in d["flags"]) for rule in RULES},
        first_draft_rates={rule: _share(done, lambda d, r=rule: r in d["first_flags"]) for rule in RULES},
        needs_review=_share(done, lambda d: bool(d["flags"])), redrafted=_share(done, lambda d: d["drafts"] > 1),
        sendable=_share(graded, lambda d: d["sendable"]) if graded else None, judge_sendable=None,
        substance={code: _share(graded, lambda d, c=code: c in d["misses"]) for code in substance.FAILS} if graded else {},
        tokens_p50=statistics.median(tokens), tokens_p95=p95,
        tokens_per_s=drafted / seconds if seconds else 0.0, seconds=round(seconds, 1))


def add_judge(report: ReplyReport, lines: list[dict], model: str) -> None:
    """Grade every drafted reply with the opt-in grader (worker.quality.grader): ``judge_sendable`` per line and share."""
    from worker.quality.grader import Grader

    drafted = [line for line in lines if line["reply"]]
    for line, p in zip(drafted, Grader(model).sendable([(d["text"], d["reply"], d["lang"]) for d in drafted])):
        line["judge_sendable"] = round(p, 4)
    for code, figures in report.languages.items():
        mine = [d for d in drafted if d["lang"] == code]
        figures.judge_sendable = _share(mine, lambda d: d["judge_sendable"] >= 0.5) if mine else None
