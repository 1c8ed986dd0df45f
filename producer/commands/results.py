"""Commands that read the results: watch, export, failed, stats, report."""

from __future__ import annotations

import csv
import json
import sys
import time
from pathlib import Path

import click
from tqdm import tqdm

from producer.clitools import option, quiet, reach
from producer.commands.feed import contains_option, failed_records, stage_option
from producer.progress import watch as watch_progress
from producer.stats import WINDOWS, NegativeAlert, rolling, table
from worker.common.keys import STATUSES
from worker.common.schemas import EXPORT_COLUMNS, Record
from worker.common.settings import get_settings


@click.command()
@option("--timeout", type=float, default=0, help="Give up after this many seconds (0 = wait until done).")
@option("--interval", type=float, default=1.0, help="Seconds between updates.")
def watch(timeout, interval):
    """Show progress (done / review / failed / pending) until every record is final; exits 1 if some are not."""
    counts = watch_progress(reach(), timeout, interval)
    click.echo(" ".join(f"{k}={v}" for k, v in counts.items()))
    if counts["pending"] + counts["labeled"]:
        sys.exit(1)


def flat(rec: Record) -> dict:
    """A record as one CSV row (EXPORT_COLUMNS)."""
    row = rec.model_dump()
    row["attempts_sentiment"] = rec.attempts.get("sentiment", 0)
    row["attempts_reply"] = rec.attempts.get("reply", 0)
    row.update(rec.timings.model_dump())
    row["metadata"] = json.dumps(rec.metadata, ensure_ascii=False)
    row["flags"] = ",".join(rec.flags)
    return {k: row.get(k) for k in EXPORT_COLUMNS}


@click.command()
@option("--format", "fmt", type=click.Choice(["jsonl", "csv"]), default="jsonl", envvar="MOODQ_EXPORT_FORMAT",
        help="jsonl: full records; csv: one flat row per record.")
@option("-o", "--output", type=click.File("w", encoding="utf-8", lazy=True), default="-", help="File to write ('-' = stdout).")
@option("--status", type=click.Choice(list(STATUSES)), default=None,
        help="Only records in this status (review: a reply a person should read before it is sent).")
@option("--sort", type=click.Choice(["order", "negativity"]), default="order",
        help="Enqueue order, or most likely MOODQ_TRIAGE_LABEL first (what a person should read first).")
def export(fmt, output, status, sort):
    """Write the labeled records as JSONL (full) or CSV (flat)."""
    s = get_settings()
    store = reach(s)
    ids = store.ids()
    if status:
        wanted = set(store.ids(status))
        ids = [i for i in ids if i in wanted]
    records = store.iter_records(ids)
    if sort == "negativity":
        records = sorted(records, key=lambda r: -(r.probs or {}).get(s.triage_label, -1.0))
    writer = None
    for rec in tqdm(records, total=len(ids), desc="export", unit="rec", disable=quiet() or None):
        if fmt == "jsonl":
            output.write(rec.model_dump_json() + "\n")
            continue
        if writer is None:
            writer = csv.DictWriter(output, fieldnames=EXPORT_COLUMNS)
            writer.writeheader()
        writer.writerow(flat(rec))


def _when(ts: float | None) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(ts)) if ts else "-"


@click.command()
@stage_option
@contains_option
@option("--json", "as_json", is_flag=True, help="One JSON record per line instead of a table.")
def failed(stage, contains, as_json):
    """List failed messages (the dead letters): id, stage, attempts, times and the reason."""
    records = failed_records(reach(), stage, contains)
    if as_json:
        for rec in records:
            click.echo(rec.model_dump_json())
        return
    for rec in records:
        tries = ", ".join(f"{k} {v}" for k, v in rec.attempts.items()) or "-"
        click.echo(f"{rec.id}\t{rec.error_stage or '-'}\tattempts: {tries}\tenqueued {_when(rec.enqueued_at)}\t"
                   f"failed {_when(rec.finished_at)}\t{rec.error}")
    click.echo(f"{len(records)} failed", err=True)


@click.command()
@option("--json", "as_json", is_flag=True, help="Print JSON (one object per update).")
@option("--live/--once", default=False, help="Keep updating every --interval seconds.")
@option("--interval", type=float, default=2.0, help="Seconds between updates with --live.")
@option("--alert-negative", type=click.FloatRange(0, 1), default=None,
        help="Alert when the negative share of --alert-window reaches this (prints and stores an alert).")
@option("--alert-window", type=click.Choice(list(WINDOWS)), default="5m", help="The window the alert watches.")
@option("--alert-min", type=click.IntRange(1), default=20, help="Labeled messages the window needs first.")
def stats(as_json, live, interval, alert_negative, alert_window, alert_min):
    """Rolling figures over the last 1/5/60 minutes: messages, negative share, mean confidence, failures,
    replies cut before their end."""
    s = get_settings()
    store = reach(s)
    alert = NegativeAlert(alert_negative, alert_window, alert_min) if alert_negative is not None else None
    while True:
        now = time.time()
        figures = rolling(store.since(max(WINDOWS.values()), now), now, s.triage_label)
        if alert and (fired := alert.check(figures, now)):
            store.add_alert(fired)
            click.echo(f"ALERT: negative share {fired['negative_share']:.0%} over the last {alert_window} "
                       f"({fired['labeled']} messages) >= {alert_negative:.0%}", err=True)
        if as_json:
            click.echo(json.dumps({"at": now, "negative_label": s.triage_label, "windows": figures}))
        else:
            if live and sys.stdout.isatty():
                click.clear()
            click.echo(table(figures, s.triage_label, now))
        if not live:
            return
        try:
            time.sleep(interval)
        except KeyboardInterrupt:
            return


@click.command()
@option("-o", "--output", type=click.Path(dir_okay=False, path_type=Path), default=Path("moodq-report.html"),
        help="The HTML file to write.")
@option("--png", type=click.Path(dir_okay=False, path_type=Path), default=None,
        help="Also write the charts as PNG (default: next to the HTML).")
def report(output, png):
    """Render a self-contained HTML report (and a PNG): sentiment over time, label shares,
    confidence histogram, failures, and the most negative messages."""
    from producer.report import render

    s = get_settings()
    records = list(reach(s).iter_records())
    png = png or output.with_suffix(".png")
    for path in (output, png):
        path.parent.mkdir(parents=True, exist_ok=True)
    facts = render(records, s.triage_label, output, png)
    click.echo(f"wrote {output} and {png}: {facts['messages']} messages, "
               + ", ".join(f"{k} {v}" for k, v in sorted(facts["status"].items())))
