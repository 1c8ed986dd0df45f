"""The ``moodq`` command: enqueue, watch, export (here) and worker, ask, eval, demo (worker.cli).

Every option can also come from the environment: ``MOODQ_<COMMAND>_<OPTION>`` for command
options, and the settings' ``MOODQ_*`` variables for everything else (see the README).
"""

from __future__ import annotations

import csv
import functools
import json
import os
import sys
import time

import click
import kombu.exceptions
import redis
from tqdm import tqdm

from producer import sources
from producer.enqueue import enqueue as enqueue_messages
from producer.enqueue import retry_failed as retry_messages
from worker.errors import MoodqError
from worker.schemas import EXPORT_COLUMNS, FINAL, Record
from worker.settings import get_settings
from worker.store import Store

option = functools.partial(click.option, show_envvar=True, show_default=True)


def safe_url(url: str) -> str:
    """The URL without its password, for messages and logs."""
    from urllib.parse import urlsplit

    parts = urlsplit(url)
    if parts.password:
        return url.replace(f":{parts.password}@", ":***@", 1)
    return url


class Group(click.Group):
    """Turns expected failures into one line on stderr and a non-zero exit, no traceback."""

    def invoke(self, ctx):
        try:
            return super().invoke(ctx)
        except (redis.ConnectionError, redis.TimeoutError, kombu.exceptions.OperationalError) as exc:
            click.echo(f"error: cannot reach Redis at {safe_url(get_settings().redis_url)} ({exc}). "
                       "Start it (redis-server) or set MOODQ_REDIS_URL.", err=True)
            sys.exit(2)
        except MoodqError as exc:
            click.echo(f"error: {exc}", err=True)
            sys.exit(2)


@click.group(cls=Group, context_settings={"auto_envvar_prefix": "MOODQ", "help_option_names": ["-h", "--help"]})
def main():
    """Label message sentiment and draft replies with one small language model, via Redis + Celery.

    Settings (Redis URL, model, limits, ...) come from MOODQ_* environment variables;
    see the README's configuration table.
    """


def _quiet() -> bool:
    return not sys.stderr.isatty()


@main.command()
@click.argument("files", nargs=-1, type=click.Path(exists=True, dir_okay=False, allow_dash=True))
@option("--format", "fmt", type=click.Choice(["auto", "jsonl", "csv", "text"]), default="auto", envvar="MOODQ_ENQUEUE_FORMAT",
        help="Input format; auto picks by file suffix (text = one message per line; stdin is text).")
@option("--replace/--no-replace", default=False, help="Re-process ids that already have a record.")
@option("--batch-size", type=click.IntRange(1, 10000), default=500, help="Messages per Redis round trip.")
@option("--watch/--no-watch", default=False, help="Watch progress after enqueueing.")
def enqueue(files, fmt, replace, batch_size, watch):
    """Enqueue messages from JSONL/CSV files or stdin ('-').

    Fields: text (required), id, conversation_id, lang, metadata; other fields are kept
    as metadata. Bad lines are reported with file and line number; good lines still go in.
    """
    from worker.app import make_app

    s = get_settings()
    app = make_app(s)
    errors: list[sources.LineError] = []
    totals = {"accepted": 0, "duplicates": 0}
    bar = tqdm(desc="enqueue", unit="line", total=_lines(files), disable=_quiet() or None)

    def messages(stream, name):
        for item in sources.read(stream, name, fmt, s.max_chars):
            if isinstance(item, sources.LineError):
                errors.append(item)
                click.echo(f"skipped {item}", err=True)
            else:
                yield item

    for name in files or ("-",):
        with sources.open_text(name) as stream:
            res = enqueue_messages(messages(stream, name), s, app, replace=replace, batch=batch_size,
                                   on_batch=bar.update)
        totals["accepted"] += len(res.accepted)
        totals["duplicates"] += len(res.duplicates)
    bar.close()
    click.echo(f"enqueued {totals['accepted']}, already known {totals['duplicates']} "
               f"(use --replace to redo them), rejected {len(errors)}")
    if watch:
        _watch(Store(s), timeout=0, interval=1.0)


def _lines(files) -> int | None:
    """Lines in the input files, for the progress bar's ETA (None for stdin or when quiet)."""
    if _quiet() or not files or not all(os.path.isfile(f) for f in files):
        return None
    total = 0
    for name in files:
        with open(name, "rb") as f:
            total += sum(1 for _ in f)
    return total


def _watch(store: Store, timeout: float, interval: float) -> dict[str, int]:
    started = time.monotonic()
    counts = store.counts()
    with tqdm(total=sum(counts.values()), desc="processed", unit="msg", disable=_quiet() or None) as bar:
        while True:
            counts = store.counts()
            bar.total = sum(counts.values())
            bar.n = counts["done"] + counts["failed"]
            bar.set_postfix(done=counts["done"], failed=counts["failed"],
                            pending=counts["pending"] + counts["labeled"], refresh=True)
            if counts["pending"] + counts["labeled"] == 0:
                break
            if timeout and time.monotonic() - started > timeout:
                break
            time.sleep(interval)
    return counts


@main.command()
@option("--timeout", type=float, default=0, help="Give up after this many seconds (0 = wait until done).")
@option("--interval", type=float, default=1.0, help="Seconds between updates.")
def watch(timeout, interval):
    """Show progress (done / failed / pending) until every record is final."""
    counts = _watch(Store(get_settings()), timeout, interval)
    click.echo(" ".join(f"{k}={v}" for k, v in counts.items()))
    if counts["pending"] + counts["labeled"]:
        sys.exit(1)


def flat(rec: Record) -> dict:
    row = rec.model_dump()
    row["attempts_sentiment"] = rec.attempts.get("sentiment", 0)
    row["attempts_reply"] = rec.attempts.get("reply", 0)
    row.update({k: v for k, v in rec.timings.model_dump().items()})
    row["metadata"] = json.dumps(rec.metadata, ensure_ascii=False)
    return {k: row.get(k) for k in EXPORT_COLUMNS}


@main.command()
@option("--format", "fmt", type=click.Choice(["jsonl", "csv"]), default="jsonl", envvar="MOODQ_EXPORT_FORMAT")
@option("-o", "--output", type=click.File("w", encoding="utf-8", lazy=True), default="-")
@option("--status", type=click.Choice(["pending", "labeled", "done", "failed"]), default=None,
        help="Only records in this status.")
@option("--sort", type=click.Choice(["order", "negativity"]), default="order",
        help="Enqueue order, or most likely MOODQ_TRIAGE_LABEL first (what a person should read first).")
def export(fmt, output, status, sort):
    """Write the labeled records as JSONL (full) or CSV (flat)."""
    s = get_settings()
    store = Store(s)
    ids = store.ids()
    if status:
        wanted = set(store.ids(status))
        ids = [i for i in ids if i in wanted]
    records = store.iter_records(ids)
    if sort == "negativity":
        records = sorted(records, key=lambda r: -(r.probs or {}).get(s.triage_label, -1.0))
    writer = None
    for rec in tqdm(records, total=len(ids), desc="export", unit="rec", disable=_quiet() or None):
        if fmt == "jsonl":
            output.write(rec.model_dump_json() + "\n")
            continue
        if writer is None:
            writer = csv.DictWriter(output, fieldnames=EXPORT_COLUMNS)
            writer.writeheader()
        writer.writerow(flat(rec))


def _failed(store: Store, stage: str | None, contains: str | None) -> list[Record]:
    records = sorted(store.iter_records(store.ids("failed")), key=lambda r: r.seq)
    return [r for r in records if r.status == "failed" and (not stage or r.error_stage == stage)
            and (not contains or contains.lower() in (r.error or "").lower())]


def _when(ts: float | None) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(ts)) if ts else "-"


stage_option = option("--stage", type=click.Choice(["sentiment", "reply"]), default=None, help="Only failures of this stage.")
contains_option = option("--error-contains", "contains", default=None, help="Only failures whose error contains this text.")


@main.command()
@stage_option
@contains_option
@option("--json", "as_json", is_flag=True, help="One JSON record per line instead of a table.")
def failed(stage, contains, as_json):
    """List failed messages (the dead letters): id, stage, attempts, times and the reason."""
    records = _failed(Store(get_settings()), stage, contains)
    if as_json:
        for rec in records:
            click.echo(rec.model_dump_json())
        return
    for rec in records:
        tries = ", ".join(f"{k} {v}" for k, v in rec.attempts.items()) or "-"
        click.echo(f"{rec.id}\t{rec.error_stage or '-'}\tattempts: {tries}\tenqueued {_when(rec.enqueued_at)}\t"
                   f"failed {_when(rec.finished_at)}\t{rec.error}")
    click.echo(f"{len(records)} failed", err=True)


@main.command("retry-failed")
@click.argument("ids", nargs=-1)
@option("--all", "everything", is_flag=True, help="Every failed message (with --stage/--error-contains: every match).")
@stage_option
@contains_option
@option("--dry-run", is_flag=True, help="Only say what would be re-queued.")
def retry_failed(ids, everything, stage, contains, dry_run):
    """Re-queue failed messages from their stored records, resuming at the stage that failed.

    Give ids, or --all (optionally narrowed by --stage / --error-contains).
    """
    s = get_settings()
    store = Store(s)
    if not ids and not everything:
        raise click.UsageError("give message ids, or --all")
    chosen = list(ids) if ids else [r.id for r in _failed(store, stage, contains)]
    if dry_run:
        click.echo(f"would re-queue {len(chosen)}: {' '.join(chosen[:20])}{' ...' if len(chosen) > 20 else ''}")
        return
    from worker.app import make_app

    res = retry_messages(tqdm(chosen, desc="retry-failed", unit="msg", disable=_quiet() or None), s, make_app(s))
    click.echo(f"re-queued {len(res.accepted)}, not failed (skipped) {len(res.duplicates)}")


@main.command()
@option("--yes", is_flag=True, help="Do not ask.")
def purge(yes):
    """Delete every record under the configured key prefix."""
    s = get_settings()
    if not yes:
        click.confirm(f"delete all records under '{s.key_prefix}:' in {safe_url(s.redis_url)}?", abort=True)
    click.echo(f"deleted {Store(s).delete_all()} keys")


def wait_for(store: Store, ids: list[str], timeout: float, on_change=None) -> list[Record]:
    """Poll until every id's record is final (or the timeout passes); returns the records.

    Polls the status sets (cheap even for 10,000 ids); whole records are read only for
    ``on_change`` (meant for a few ids) and at the end.
    """
    deadline = time.monotonic() + timeout
    seen: dict[str, str] = {}
    while True:
        if on_change:
            for rec in store.get_many(ids):
                if seen.get(rec.id) != rec.status:
                    on_change(rec)
                seen[rec.id] = rec.status
        if store.count_final(ids) == len(ids) or time.monotonic() > deadline:
            return list(store.iter_records(ids))
        time.sleep(0.2 if len(ids) <= 100 else 1.0)


from worker import cli as _worker_cli  # noqa: E402  (registers worker, ask, eval, demo)

_worker_cli.register(main)

from producer import operate as _operate  # noqa: E402  (registers follow, stats, report, flower, workers)

_operate.register(main, option)
