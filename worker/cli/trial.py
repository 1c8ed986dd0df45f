"""Commands for trying moodq end to end: ask (one message) and demo (a worker and the sample messages)."""

from __future__ import annotations

import os
import sys
import tempfile
import time
import uuid
from pathlib import Path

import click

from producer.clitools import option, reach
from producer.commands.feed import prompt_languages
from producer.enqueue import enqueue
from producer.progress import wait_for
from producer.sources import to_message
from worker.common.prompts import load_prompts
from worker.common.settings import get_settings

DEMO_MESSAGES = [
    {"id": "demo-1", "text": "今天的实验终于成功了，太棒了！"},
    {"id": "demo-2", "text": "我感觉很累，工作压力太大了。", "conversation_id": "demo-chat"},
    {"id": "demo-3", "text": "这个天气真让人烦躁。", "conversation_id": "demo-chat"},
    {"id": "demo-4", "text": "The replacement arrived broken again and nobody answers my emails."},
]


@click.command()
@click.argument("text")
@option("--local/--queue", default=None,
        help="Run in this process, or through the queue (default: the queue if a worker answers).")
@option("--lang", default=None, help="Prompt language (default: detected).")
@option("--timeout", type=float, default=300, help="Seconds to wait for the result through the queue.")
def ask(text, local, lang, timeout):
    """Label one message, printing the label as soon as it is known, then the reply."""
    from worker.jobs.app import app

    s = get_settings()
    try:
        msg = to_message({"text": text, "lang": lang, "id": f"ask-{uuid.uuid4().hex[:12]}"}, s.max_chars,
                         prompt_languages(s))
    except ValueError as exc:
        raise click.UsageError(str(exc).splitlines()[-1]) from None
    if local is None:
        local = not app.control.ping(timeout=1.0)
        if local:
            click.echo("(no worker answered; running in this process)", err=True)
    if local:
        _ask_local(msg, s)
        return
    store = reach(s)
    enqueue([msg], s, app, store=store)

    def show(rec):
        if rec.status in ("labeled", "done", "review") and not getattr(show, "labeled", False):
            show.labeled = True
            click.echo(f"label: {rec.label} ({rec.confidence:.2f})")
        if rec.status in ("done", "review"):
            click.echo(f"reply: {rec.reply or '(no reply drafted for this label)'}{_review_note(rec)}")
        if rec.status == "failed":
            click.echo(f"failed: {rec.error}", err=True)

    rec = wait_for(store, [msg.id], timeout, show)[0]
    if rec.status not in ("done", "review"):
        sys.exit(1)


def _review_note(rec) -> str:
    """What a person must know before sending a stored reply: it needs review, and why."""
    if rec.status == "review":
        return f"  [NEEDS REVIEW: {', '.join(rec.flags)}]"
    return "  [cut before its end]" if rec.reply_truncated else ""


def _ask_local(msg, s) -> None:
    from worker.jobs.resident import engine

    eng = engine(s)
    lang = eng.prompts.language_of(msg.text, msg.lang)
    j = eng.judge([msg.text], lang)[0]
    click.echo(f"label: {j.label} ({j.confidence:.2f})")
    if s.replies_for(j.label):
        from worker.quality.replying import Request, checked

        request = Request(msg.text, j.label, lang, confidence=j.confidence)
        _, reply = next(checked(eng, [request], slots=1, redrafts=s.redrafts, **s.draft_options()))
        click.echo(f"reply: {reply.draft.text}" + (f"  [NEEDS REVIEW: {', '.join(reply.flags)}]" if reply.flags else ""))


def _table(records) -> str:
    """What a person wants from the demo: text, label, confidence, reply, timings."""
    lines = []
    for rec in records:
        t = rec.timings
        lines += [f"{rec.id}  {rec.status}  {rec.label or '-'} ({rec.confidence or 0:.2f})  "
                  f"sentiment {t.sentiment_ms or 0:.0f} ms, reply {t.reply_ms or 0:.0f} ms",
                  f"  message: {rec.text}",
                  f"  reply:   {rec.reply or rec.error or '(none)'}{_review_note(rec)}",
                  ""]
    return "\n".join(lines).rstrip()


@click.command()
@option("--timeout", type=float, default=900, help="Seconds to wait for the worker and the results.")
@option("--json", "as_json", is_flag=True, help="Print the full records as JSON lines instead of a table.")
def demo(timeout, as_json):
    """Start a worker, run the sample messages end to end, print the results, stop the worker."""
    from worker.common.procinfo import tree_peak_rss_mb
    from worker.jobs import launch
    from worker.jobs.app import app

    s = get_settings()
    load_prompts(s.prompts)  # a broken prompt file fails here; the model is checked by the worker's own start-up
    store = reach(s)
    started = time.perf_counter()
    click.echo("starting a worker; the first start on a machine de-quantises the GGUF (about a minute) ...",
               err=True)
    log = Path(tempfile.gettempdir()) / f"moodq-demo-{os.getpid()}.log"
    click.echo(f"worker log: {log}", err=True)
    proc = launch.start([sys.executable, "-m", "worker", "worker", "-c", "1", "-l", "INFO"], {}, log,
                        f"demo-{os.getpid()}@%h", timeout=timeout, ready_text="ready in", progress=_first_start)
    try:
        msgs = [to_message(m, s.max_chars) for m in DEMO_MESSAGES]
        enqueue(msgs, s, app, replace=True, store=store)
        click.echo(f"worker ready after {time.perf_counter() - started:.1f} s; enqueued {len(msgs)} messages",
                   err=True)
        records = wait_for(store, [m.id for m in msgs], timeout,
                           lambda r: click.echo(f"  {r.id}: {r.status}", err=True))
        results_s = time.perf_counter() - started
        rss = tree_peak_rss_mb(proc.pid)
        if as_json:  # the results first: the worker's stop (~1-2 s) need not hold them back
            for rec in records:
                click.echo(rec.model_dump_json())
        else:
            click.echo(_table(records))
    finally:  # every message is final (or the wait gave up): nothing for a warm shutdown to finish
        launch.stop_idle(proc)
    click.echo(f"results after {results_s:.1f} s, demo finished in {time.perf_counter() - started:.1f} s "
               "(worker start, model load and stop included); "
               "peak RSS of the worker processes: "
               + ", ".join(f"pid {p} {mb:.0f} MB" for p, mb in sorted(rss.items())), err=True)
    if any(r.status not in ("done", "review") for r in records):
        sys.exit(1)


# What a first start on a host logs while `moodq demo` waits for it (the kernel probe, the GGUF's conversion).
FIRST_START_LINES = ("assembled", "kernel probe:", "de-quantis")


def _first_start(line: str) -> None:
    """Shows the worker's first-start steps as they end, so a minute's wait is not silent."""
    if any(text in line for text in FIRST_START_LINES):
        click.echo("  worker: " + line.split("] ", 1)[-1], err=True)
