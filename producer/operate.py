"""Operator commands: follow (streams), stats (rolling windows, alert), report (HTML + PNG),
flower (the dashboard on the same settings) and workers (what each worker runs)."""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

import click

from producer.stats import WINDOWS, NegativeAlert, rolling
from worker.settings import get_settings
from worker.store import Store


def register(main: click.Group, option) -> None:
    @main.command()
    @click.argument("source")
    @option("--format", "fmt", type=click.Choice(["jsonl", "text"]), default="jsonl", envvar="MOODQ_FOLLOW_FORMAT",
            help="Line format of stdin or the file (a Redis Stream's entries are field maps).")
    @option("--max-queue", type=click.IntRange(1), default=1000, help="Pause reading while more tasks than this wait.")
    def follow(source, fmt, max_queue):
        """Enqueue from a never-ending SOURCE as messages arrive: '-' (stdin), a growing file,
        or redis-stream:KEY (a Redis Stream on the configured Redis, consumer group 'moodq')."""
        from producer.follow import Follower
        from worker.app import make_app

        s = get_settings()
        f = Follower(s, make_app(s), fmt=fmt, max_queue=max_queue, on_event=lambda m: click.echo(m, err=True))
        try:
            if source == "-":
                from producer.sources import open_text

                f.follow_stream(open_text("-"))
            elif source.startswith("redis-stream:"):
                f.follow_redis_stream(source.removeprefix("redis-stream:"))
            else:
                f.follow_file(Path(source))
        except KeyboardInterrupt:
            pass
        t = f.totals
        click.echo(f"enqueued {t['accepted']}, already known {t['duplicates']}, rejected {t['rejected']}, "
                   f"paused for back-pressure {t['paused_s']:.0f} s", err=True)

    @main.command()
    @option("--json", "as_json", is_flag=True, help="Print JSON (one object per update).")
    @option("--live/--once", default=False, help="Keep updating every --interval seconds.")
    @option("--interval", type=float, default=2.0)
    @option("--alert-negative", type=click.FloatRange(0, 1), default=None,
            help="Alert when the negative share of --alert-window reaches this (prints and stores an alert).")
    @option("--alert-window", type=click.Choice(list(WINDOWS)), default="5m")
    @option("--alert-min", type=click.IntRange(1), default=20, help="Labeled messages the window needs first.")
    def stats(as_json, live, interval, alert_negative, alert_window, alert_min):
        """Rolling figures over the last 1/5/60 minutes: messages, negative share, mean confidence, failures,
        replies cut before their end."""
        s = get_settings()
        store = Store(s)
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
                click.echo(_table(figures, s.triage_label, now))
            if not live:
                return
            try:
                time.sleep(interval)
            except KeyboardInterrupt:
                return

    @main.command()
    @option("-o", "--output", type=click.Path(dir_okay=False, path_type=Path), default=Path("moodq-report.html"))
    @option("--png", type=click.Path(dir_okay=False, path_type=Path), default=None,
            help="Also write the charts as PNG (default: next to the HTML).")
    def report(output, png):
        """Render a self-contained HTML report (and a PNG): sentiment over time, label shares,
        confidence histogram, failures, and the most negative messages."""
        from producer.report import render

        s = get_settings()
        store = Store(s)
        records = list(store.iter_records())
        png = png or output.with_suffix(".png")
        for path in (output, png):
            path.parent.mkdir(parents=True, exist_ok=True)
        facts = render(records, s.triage_label, output, png)
        click.echo(f"wrote {output} and {png}: {facts['messages']} messages, "
                   + ", ".join(f"{k} {v}" for k, v in sorted(facts["status"].items())))

    @main.command(context_settings={"ignore_unknown_options": True})
    @option("--port", type=int, default=5555)
    @option("--address", default="127.0.0.1")
    @click.argument("flower_args", nargs=-1, type=click.UNPROCESSED)
    def flower(port, address, flower_args):
        """Start Flower (the Celery dashboard, with /metrics for Prometheus) on the same settings.

        Set FLOWER_BASIC_AUTH=user:password to require a login (compose always does)."""
        if not os.environ.get("FLOWER_BASIC_AUTH") and address not in ("127.0.0.1", "localhost"):
            raise click.UsageError("refusing to serve Flower beyond localhost without FLOWER_BASIC_AUTH=user:password")
        argv = [sys.executable, "-m", "celery", "-A", "worker.app", "flower", f"--port={port}",
                f"--address={address}", "--purge_offline_workers=60", *flower_args]
        os.execv(sys.executable, argv)

    @main.command()
    @option("--timeout", type=float, default=2.0)
    def workers(timeout):
        """What every live worker runs: model, prompt version, queue, concurrency, threads."""
        from worker.app import make_app

        replies = make_app(get_settings()).control.broadcast("moodq", reply=True, timeout=timeout)
        if not replies:
            click.echo("no worker answered", err=True)
            sys.exit(1)
        for node, info in sorted(item for reply in replies for item in reply.items()):
            click.echo(f"{node}: " + ", ".join(f"{k}={v}" for k, v in info.items()))


def _table(figures: dict, negative: str, now: float) -> str:
    lines = [f"moodq stats at {time.strftime('%H:%M:%S', time.localtime(now))}",
             f"{'window':>7} {'messages':>9} {'labeled':>8} {negative + ' share':>15} {'mean conf':>10} {'failures':>9}"
             f" {'replies cut':>12}"]
    for name, w in figures.items():
        share = "-" if w["negative_share"] is None else f"{w['negative_share']:.1%}"
        conf = "-" if w["mean_confidence"] is None else f"{w['mean_confidence']:.3f}"
        lines.append(f"{name:>7} {w['messages']:>9} {w['labeled']:>8} {share:>15} {conf:>10} {w['failures']:>9}"
                     f" {w['replies_cut']:>12}")
    return "\n".join(lines)
