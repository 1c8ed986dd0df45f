"""Commands that put work on the queue or take it off: enqueue, follow, retry-failed, sweep, purge."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import click
from kombu.utils.url import maybe_sanitize_url
from tqdm import tqdm

from producer import sources
from producer.clitools import option, quiet, reach
from producer.enqueue import enqueue as enqueue_messages
from producer.enqueue import retry_failed as retry_messages
from producer.progress import watch
from worker.common.settings import get_settings

stage_option = option("--stage", type=click.Choice(["sentiment", "reply"]), default=None,
                      help="Only failures of this stage.")
contains_option = option("--error-contains", "contains", default=None,
                         help="Only failures whose error contains this text.")


def prompt_languages(settings) -> set[str]:
    """The languages the workers have prompts for; a message asking for another is refused at enqueue."""
    from worker.common.prompts import load_prompts

    return set(load_prompts(settings.prompts).languages)


@click.command()
@click.argument("files", nargs=-1, type=click.Path(exists=True, dir_okay=False, allow_dash=True))
@option("--format", "fmt", type=click.Choice(["auto", "jsonl", "csv", "tsv", "text"]), default="auto",
        envvar="MOODQ_ENQUEUE_FORMAT",
        help="Input format; auto picks by file suffix (.jsonl/.ndjson/.json, .csv, .tsv), else JSONL when "
             "the first line is a JSON object, else one message per line.")
@option("--replace/--no-replace", default=False, help="Re-process ids that already have a record.")
@option("--batch-size", type=click.IntRange(1, 10000), default=500,
        help="Messages written and published per Redis round trip.")
@option("--watch/--no-watch", "watch_after", default=False, help="Watch progress after enqueueing.")
def enqueue(files, fmt, replace, batch_size, watch_after):
    """Enqueue messages from JSONL/CSV/TSV/text FILES, or '-' for stdin.

    Fields: text (required), id, conversation_id, lang, metadata; other fields are kept
    as metadata. Bad lines are reported with file and line number; good lines still go in.
    Exits 1 when nothing valid went in (every line rejected, or no lines).
    """
    if not files:
        raise click.UsageError("give one or more files, or '-' to read stdin")
    from worker.jobs.app import make_app

    s = get_settings()
    store, app, languages = reach(s), make_app(s), prompt_languages(s)
    rejected = 0
    totals = {"accepted": 0, "duplicates": 0}
    bar = tqdm(desc="enqueue", unit="line", total=_lines(files), disable=quiet() or None)

    def messages(stream, name):
        nonlocal rejected
        for item in sources.read(stream, name, fmt, s.max_chars, languages):
            if isinstance(item, sources.LineError):
                rejected += 1
                click.echo(f"skipped {item}", err=True)
            else:
                yield item

    for name in files:
        with sources.open_text(name) as stream:
            res = enqueue_messages(messages(stream, name), s, app, replace=replace, batch=batch_size,
                                   on_batch=bar.update, store=store)
        totals["accepted"] += len(res.accepted)
        totals["duplicates"] += len(res.duplicates)
    bar.close()
    click.echo(f"enqueued {totals['accepted']}, already known {totals['duplicates']} "
               f"(use --replace to redo them), rejected {rejected}")
    if totals["accepted"] + totals["duplicates"] == 0:
        click.echo("error: nothing valid to enqueue" + (" (every line was rejected)" if rejected else ""), err=True)
        sys.exit(1)
    if watch_after:
        watch(store, timeout=0, interval=1.0)




def _lines(files) -> int | None:
    """Lines in the input files, for the progress bar's ETA (None for stdin or when quiet)."""
    if quiet() or not all(os.path.isfile(f) for f in files):
        return None
    total = 0
    for name in files:
        with open(name, "rb") as f:
            total += sum(1 for _ in f)
    return total


@click.command()
@click.argument("source")
@option("--format", "fmt", type=click.Choice(["jsonl", "text"]), default="jsonl", envvar="MOODQ_FOLLOW_FORMAT",
        help="Line format of stdin or the file (a Redis Stream's entries are field maps).")
@option("--max-queue", type=click.IntRange(1), default=1000, help="Pause reading while more tasks than this wait.")
def follow(source, fmt, max_queue):
    """Enqueue from a never-ending SOURCE as messages arrive: '-' (stdin), a growing file,
    or redis-stream:KEY (a Redis Stream on the configured Redis, consumer group 'moodq')."""
    from producer.follow import Follower
    from worker.jobs.app import make_app

    s = get_settings()
    reach(s)
    f = Follower(s, make_app(s), fmt=fmt, max_queue=max_queue, on_event=lambda m: click.echo(m, err=True),
                 languages=prompt_languages(s))
    try:
        if source == "-":
            f.follow_stream(sources.open_text("-"))
        elif source.startswith("redis-stream:"):
            f.follow_redis_stream(source.removeprefix("redis-stream:"))
        else:
            f.follow_file(Path(source))
    except KeyboardInterrupt:
        pass
    t = f.totals
    click.echo(f"enqueued {t['accepted']}, already known {t['duplicates']}, rejected {t['rejected']}, "
               f"paused for back-pressure {t['paused_s']:.0f} s", err=True)


def failed_records(store, stage: str | None, contains: str | None) -> list:
    """Failed records, oldest first, narrowed by stage and error text."""
    records = sorted(store.iter_records(store.ids("failed")), key=lambda r: r.seq)
    return [r for r in records if r.status == "failed" and (not stage or r.error_stage == stage)
            and (not contains or contains.lower() in (r.error or "").lower())]


@click.command("retry-failed")
@click.argument("ids", nargs=-1)
@option("--all", "everything", is_flag=True, help="Every failed message (with --stage/--error-contains: every match).")
@stage_option
@contains_option
@option("--dry-run", is_flag=True, help="Only say what would be re-queued (and which ids would not be).")
def retry_failed(ids, everything, stage, contains, dry_run):
    """Re-queue failed messages from their stored records, resuming at the stage that failed.

    Give ids, or --all (optionally narrowed by --stage / --error-contains). Exits 1 when an id
    given was not re-queued (it is not failed, or has no record).
    """
    if not ids and not everything:
        raise click.UsageError("give message ids, or --all")
    s = get_settings()
    store = reach(s)
    chosen = list(ids) if ids else [r.id for r in failed_records(store, stage, contains)]
    found = {r.id: r.status for r in store.get_many(chosen)}
    ready = [i for i in chosen if found.get(i) == "failed"]
    for mid in chosen:
        if mid not in found:
            click.echo(f"{mid}: no record (never enqueued, expired or purged)", err=True)
        elif found[mid] != "failed":
            click.echo(f"{mid}: not failed (status {found[mid]}); nothing to retry", err=True)
    if dry_run:
        click.echo(f"would re-queue {len(ready)}: {' '.join(ready[:20])}{' ...' if len(ready) > 20 else ''}")
    else:
        from worker.jobs.app import make_app

        res = retry_messages(tqdm(ready, desc="retry-failed", unit="msg", disable=quiet() or None), s,
                             make_app(s), store=store)
        click.echo(f"re-queued {len(res.accepted)}, skipped {len(chosen) - len(res.accepted)}")
        ready = res.accepted
    if len(ready) < len(chosen):
        sys.exit(1)


@click.command()
@option("--older-than", type=click.FloatRange(0), default=None,
        help="Seconds a record must have waited unpublished (default: MOODQ_SWEEP_AFTER_S).")
def sweep(older_than):
    """Publish again the tasks of records a producer wrote but died before publishing, and drop the ids
    of expired records from the status sets and the index.

    Workers do this every MOODQ_SWEEP_INTERVAL_S; run it by hand after killing a producer."""
    from worker.jobs.app import make_app
    from worker.jobs.publish import sweep as run_sweep

    s = get_settings()
    store = reach(s)
    counts = run_sweep(s, make_app(s), store, older_than)
    counts["pruned"] = store.prune()
    click.echo(", ".join(f"{k} {v}" for k, v in counts.items()))


@click.command()
@option("--yes", is_flag=True, help="Do not ask.")
def purge(yes):
    """Delete every record under the configured key prefix."""
    s = get_settings()
    store = reach(s)
    if not yes:
        click.confirm(f"delete all records under '{s.key_prefix}:' in {maybe_sanitize_url(s.redis_url)}?", abort=True)
    click.echo(f"deleted {store.delete_all()} keys")
