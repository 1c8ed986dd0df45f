"""Commands that need the model or start workers: worker, ask, eval, demo.

torch is imported inside the commands, so ``moodq enqueue`` stays light.
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
import time
import uuid
from pathlib import Path

import click

from worker.settings import get_settings

DEMO_MESSAGES = [
    {"id": "demo-1", "text": "今天的实验终于成功了，太棒了！"},
    {"id": "demo-2", "text": "我感觉很累，工作压力太大了。", "conversation_id": "demo-chat"},
    {"id": "demo-3", "text": "这个天气真让人烦躁。", "conversation_id": "demo-chat"},
    {"id": "demo-4", "text": "The replacement arrived broken again and nobody answers my emails."},
]


def preflight() -> None:
    """Fail fast, in the main process, on a broken prompt file or a missing model."""
    from worker.loading import check_model
    from worker.prompts import load_prompts

    s = get_settings()
    load_prompts(s.prompts)
    check_model(s)


def register(main: click.Group) -> None:
    from producer.cli import option

    @main.command(context_settings={"ignore_unknown_options": True})
    @option("-c", "--concurrency", type=click.IntRange(1), default=1,
            help="Worker processes, each with its own resident model (~1.3 GB in bfloat16).")
    @option("-l", "--loglevel", default="INFO")
    @click.argument("celery_args", nargs=-1, type=click.UNPROCESSED)
    def worker(concurrency, loglevel, celery_args):
        """Start a Celery worker (prefork pool; each process loads the model once).

        Extra arguments go to `celery worker` (e.g. --hostname, --max-tasks-per-child).
        """
        preflight()
        from worker.app import app

        s = get_settings()
        # --without-mingle: the start-up sync with other workers (revoked ids, clocks) costs a
        # full second before the worker takes tasks; moodq does not revoke tasks.
        app.worker_main(["worker", "-Q", s.queue, "-c", str(concurrency), "-P", "prefork",
                         "-l", loglevel, "-E", "--without-mingle", *celery_args])

    @main.command()
    @click.argument("text")
    @option("--local/--queue", default=None,
            help="Run in this process, or through the queue (default: the queue if a worker answers).")
    @option("--lang", default=None, help="Prompt language (default: detected).")
    @option("--timeout", type=float, default=300)
    def ask(text, local, lang, timeout):
        """Label one message, printing the label as soon as it is known, then the reply."""
        from producer.cli import wait_for
        from producer.enqueue import enqueue
        from producer.sources import to_message
        from worker.app import app
        from worker.store import Store

        s = get_settings()
        try:
            msg = to_message({"text": text, "lang": lang, "id": f"ask-{uuid.uuid4().hex[:12]}"}, s.max_chars)
        except ValueError as exc:
            raise click.UsageError(str(exc).splitlines()[-1]) from None
        if local is None:
            local = not app.control.ping(timeout=1.0)
            if local:
                click.echo("(no worker answered; running in this process)", err=True)
        if local:
            _ask_local(msg, s)
            return
        enqueue([msg], s, app)

        def show(rec):
            if rec.status in ("labeled", "done") and not getattr(show, "labeled", False):
                show.labeled = True
                click.echo(f"label: {rec.label} ({rec.confidence:.2f})")
            if rec.status == "done":
                click.echo(f"reply: {rec.reply or '(no reply drafted for this label)'}")
            if rec.status == "failed":
                click.echo(f"failed: {rec.error}", err=True)

        rec = wait_for(Store(s), [msg.id], timeout, show)[0]
        if rec.status != "done":
            sys.exit(1)

    @main.command(name="eval")
    @click.argument("file", type=click.Path(exists=True, dir_okay=False))
    @option("--json", "as_json", is_flag=True, help="Print the report as JSON.")
    @option("--calibrate/--no-calibrate", default=None,
            help="Force contextual calibration on or off (default: as the prompt file says).")
    @option("--batch-size", type=click.IntRange(1, 256), default=8)
    @option("--lang", default=None, help="Force a prompt language (default: per line, detected).")
    @option("--limit", type=click.IntRange(0), default=0, help="Only the first N lines (0 = all).")
    @option("--replies", is_flag=True,
            help="Also draft replies as a worker does and report their quality per language "
                 "(refusals, wrong language, echo, not addressing the customer, loops, end of turn, tok/s).")
    @option("--out", type=click.Path(dir_okay=False, writable=True), default=None,
            help="With --replies: write one JSON line per message (text, lang, label, gold, reply, stop, flags).")
    def evaluate(file, as_json, calibrate, batch_size, lang, limit, replies, out):
        """Accuracy of the sentiment path on a JSONL file with `text` and `label` fields."""
        from tqdm import tqdm

        from worker.evaluate import evaluate as run_eval
        from worker.evaluate import read_labeled
        from worker.resident import engine

        if out and not replies:
            raise click.UsageError("--out needs --replies")
        rows = read_labeled(file)
        rows = rows[:limit] if limit else rows
        eng = engine()
        with tqdm(total=len(rows), desc="eval", unit="msg", disable=not sys.stderr.isatty() or None) as bar:
            report = run_eval(eng, rows, batch_size=batch_size, calibrate=calibrate, lang=lang,
                              progress=bar.update)
        if not replies:
            click.echo(report.as_json() if as_json else report.as_text())
            return
        from worker.reply_eval import evaluate_replies

        with tqdm(desc="replies", unit="reply", disable=not sys.stderr.isatty() or None) as bar:
            replies_report, lines = evaluate_replies(eng, rows, get_settings(), lang=lang, progress=bar.update)
        if as_json:  # one document: {"sentiment": ..., "replies": ...}
            click.echo(f'{{"sentiment": {report.as_json()},\n"replies": {replies_report.as_json()}}}')
        else:
            click.echo(report.as_text() + "\n\n" + replies_report.as_text())
        if out:
            with open(out, "w", encoding="utf-8") as f:
                f.writelines(json.dumps(line, ensure_ascii=False) + "\n" for line in lines)
            click.echo(f"wrote {len(lines)} lines to {out}", err=True)

    @main.command()
    @option("--timeout", type=float, default=900)
    def demo(timeout):
        """Start a worker, run the sample messages end to end, print the records, stop the worker."""
        from producer.cli import wait_for
        from producer.enqueue import enqueue
        from producer.sources import to_message
        from worker import launch
        from worker.app import app
        from worker.procinfo import tree_peak_rss_mb
        from worker.store import Store

        s = get_settings()
        preflight()
        store = Store(s)
        store.r.ping()
        started = time.perf_counter()
        click.echo("starting a worker; the first start on a machine de-quantises the GGUF (about a minute) ...",
                   err=True)
        log = Path(tempfile.gettempdir()) / f"moodq-demo-{os.getpid()}.log"
        proc = launch.start([sys.executable, "-m", "producer", "worker", "-c", "1", "-l", "INFO"], {}, log,
                            f"demo-{os.getpid()}@%h", timeout=timeout, ready_text="ready in")
        try:
            msgs = [to_message(m, s.max_chars) for m in DEMO_MESSAGES]
            enqueue(msgs, s, app, replace=True)
            click.echo(f"worker ready after {time.perf_counter() - started:.1f} s; enqueued {len(msgs)} messages",
                       err=True)
            records = wait_for(store, [m.id for m in msgs], timeout,
                               lambda r: click.echo(f"  {r.id}: {r.status}", err=True))
            rss = tree_peak_rss_mb(proc.pid)
        finally:
            launch.stop(proc)
        for rec in records:
            click.echo(rec.model_dump_json(indent=2, include={
                "id", "text", "status", "label", "confidence", "reply", "error", "attempts", "timings",
                "model", "prompt_version"}))
        click.echo(f"demo finished in {time.perf_counter() - started:.1f} s (worker start and model load included); "
                   "peak RSS of the worker processes: "
                   + ", ".join(f"pid {p} {mb:.0f} MB" for p, mb in sorted(rss.items())), err=True)
        if any(r.status != "done" for r in records):
            sys.exit(1)


def _ask_local(msg, s) -> None:
    from worker.resident import engine

    eng = engine(s)
    lang = eng.prompts.language_of(msg.text, msg.lang)
    j = eng.judge([msg.text], lang)[0]
    click.echo(f"label: {j.label} ({j.confidence:.2f})")
    if s.replies_for(j.label):
        d = eng.draft(msg.text, j.label, lang, [], **s.draft_options())
        click.echo(f"reply: {d.text}" + (f"  [cut: {d.stop}]" if d.truncated else ""))

