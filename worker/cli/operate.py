"""Commands for whoever runs the workers: worker, workers, check, probe, cache, flower, eval.

torch is imported inside the commands, so the rest of ``moodq`` stays light.
"""

from __future__ import annotations

import json
import logging
import os
import sys
import time

import click

from producer.clitools import option, quiet
from worker.common.settings import get_settings


def preflight() -> None:
    """Fail fast, in the main process, on a broken prompt file or a missing or corrupt model."""
    from worker.common.prompts import load_prompts
    from worker.engine import frozen_imports

    with frozen_imports():  # torch and transformers, imported here for the pool processes to inherit
        from worker.engine.loading import check_model

    s = get_settings()
    load_prompts(s.prompts)
    check_model(s)


@click.command(context_settings={"ignore_unknown_options": True})
@option("-c", "--concurrency", type=click.IntRange(1), default=1,
        help="Worker processes, each with its own resident model (~1.3 GB in bfloat16).")
@option("-l", "--loglevel", default="INFO", help="Log level.",
        type=click.Choice(["DEBUG", "INFO", "WARNING", "WARN", "ERROR", "CRITICAL", "FATAL"], case_sensitive=False))
@click.argument("celery_args", nargs=-1, type=click.UNPROCESSED)
def worker(concurrency, loglevel, celery_args):
    """Start a Celery worker (prefork pool; each process loads the model once).

    Extra arguments go to `celery worker` (e.g. --hostname, --max-tasks-per-child).
    """
    # Until Celery takes the log over: what the checks log (a first start's assembly of the GGUF) in its format.
    logging.basicConfig(level=loglevel.upper(), format="[%(asctime)s: %(levelname)s/MainProcess] %(message)s")
    preflight()
    from celery.bin.celery import celery as celery_cli

    from worker.jobs.app import app

    s = get_settings()
    celery_cli.params[0].default = app  # what app.worker_main does, but keeping the exit code
    # --without-mingle: the start-up sync with other workers (revoked ids, clocks) costs a
    # full second before the worker takes tasks; moodq does not revoke tasks.
    code = celery_cli.main(args=["worker", "-Q", s.queue, "-c", str(concurrency), "-P", "prefork", "-l", loglevel,
                                 "-E", "--without-mingle", *celery_args], standalone_mode=False)
    sys.exit(code or 0)  # 1 when a process could not load the model (worker.jobs.upkeep)


@click.command()
@option("--timeout", type=float, default=2.0, help="Seconds to wait for workers to answer.")
def workers(timeout):
    """What every live worker runs: model, CPU class and compute path, prompt version, queue, concurrency."""
    from worker.jobs.app import make_app

    replies = make_app(get_settings()).control.broadcast("moodq", reply=True, timeout=timeout)
    if not replies:
        click.echo("no worker answered", err=True)
        sys.exit(1)
    for node, info in sorted(item for reply in replies for item in reply.items()):
        click.echo(f"{node}: " + ", ".join(f"{k}={v}" for k, v in info.items()))


@click.command(context_settings={"ignore_unknown_options": True})
@option("--port", type=int, default=5555, help="Port Flower listens on.")
@option("--address", default="127.0.0.1", help="Address Flower listens on.")
@click.argument("flower_args", nargs=-1, type=click.UNPROCESSED)
def flower(port, address, flower_args):
    """Start Flower (the Celery dashboard, with /metrics for Prometheus) on the same settings.

    Set FLOWER_BASIC_AUTH=user:password to require a login (compose always does); /metrics then
    needs it too (Prometheus: basic_auth in the scrape config)."""
    if not os.environ.get("FLOWER_BASIC_AUTH") and address not in ("127.0.0.1", "localhost"):
        raise click.UsageError("refusing to serve Flower beyond localhost without FLOWER_BASIC_AUTH=user:password")
    argv = [sys.executable, "-m", "worker.jobs.dashboard", f"--port={port}", f"--address={address}",
            "--purge_offline_workers=60", *flower_args]
    os.execv(sys.executable, argv)


@click.command(name="eval")
@click.argument("file", type=click.Path(exists=True, dir_okay=False))
@option("--json", "as_json", is_flag=True, help="Print the report as JSON.")
@option("--calibrate/--no-calibrate", default=None,
        help="Force contextual calibration on or off (default: as the prompt file says).")
@option("--batch-size", type=click.IntRange(1, 256), default=8, help="Messages per sentiment forward pass.")
@option("--lang", default=None, help="Force a prompt language (default: per line, detected).")
@option("--limit", type=click.IntRange(0), default=0, help="Only the first N lines (0 = all).")
@option("--skip", type=click.IntRange(0), default=0, help="Leave out the first N lines (e.g. the ones prompts were tuned on).")
@option("--replies", is_flag=True,
        help="Also draft replies as a worker does and report their quality per language "
             "(refusals, wrong language, echo, not addressing the customer, loops, end of turn, tok/s).")
@option("--out", type=click.Path(dir_okay=False, writable=True), default=None,
        help="With --replies: write one JSON line per message (text, lang, label, gold, reply, stop, flags).")
@option("--judge", default=None, metavar="MODEL",
        help="With --replies: also have a larger model grade every reply sendable or not (e.g. embedded-large, "
             "which needs pip install -e '.[large]'); slow, and not exact either (bench/grader.py).")
def evaluate(file, as_json, calibrate, batch_size, lang, limit, skip, replies, out, judge):
    """Accuracy of the sentiment path on a JSONL file with `text` and `label` fields."""
    from tqdm import tqdm

    from worker.jobs.resident import engine
    from worker.quality.evaluate import evaluate as run_eval
    from worker.quality.evaluate import read_labeled

    if (out or judge) and not replies:
        raise click.UsageError("--out and --judge need --replies")
    rows = read_labeled(file, need_label=not replies)
    rows = rows[skip:]
    rows = rows[:limit] if limit else rows
    eng = engine()
    with tqdm(total=len(rows), desc="eval", unit="msg", disable=quiet() or None) as bar:
        report = run_eval(eng, rows, batch_size=batch_size, calibrate=calibrate, lang=lang, progress=bar.update)
    if not replies:
        click.echo(report.as_json() if as_json else report.as_text())
        return
    from worker.quality.reply_eval import evaluate_replies

    with tqdm(desc="replies", unit="reply", disable=quiet() or None) as bar:
        replies_report, lines = evaluate_replies(eng, rows, get_settings(), lang=lang, progress=bar.update)
    if judge:
        from worker.quality.reply_eval import add_judge

        add_judge(replies_report, lines, judge)
    if as_json:  # one document: {"sentiment": ..., "replies": ...}
        click.echo(f'{{"sentiment": {report.as_json()},\n"replies": {replies_report.as_json()}}}')
    else:
        click.echo(report.as_text() + "\n\n" + replies_report.as_text())
    if out:
        with open(out, "w", encoding="utf-8") as f:
            f.writelines(json.dumps(line, ensure_ascii=False) + "\n" for line in lines)
        click.echo(f"wrote {len(lines)} lines to {out}", err=True)


@click.command()
@option("--fresh", is_flag=True, help="Measure again instead of reading this host's cached table.")
@option("-c", "--concurrency", type=click.IntRange(1), default=1,
        help="Time with the threads each process of a worker with this many processes gets.")
@option("--json", "as_json", is_flag=True, help="Print the plan and the table as JSON.")
def probe(fresh, concurrency, as_json):
    """Why a worker runs the kernels it runs: the probe's table for this host and model (candidate
    kernels x row counts and phases, ms per decoder layer and ratio to float32) and the path it picks.

    Measured once per host and cached in MOODQ_CACHE_DIR/probe; workers read the same table."""
    import torch

    from worker.engine.loading import measured_plan
    from worker.engine.probe import drift
    from worker.engine.probetable import table_text
    from worker.jobs.resident import threads_per_process

    s = get_settings()
    torch.set_num_threads(threads_per_process(concurrency, s))
    plan = measured_plan(s, fresh=fresh)
    if as_json:
        click.echo(json.dumps({"path": str(plan), "dtype": plan.dtype, "score": plan.score, "decode": plan.decode,
                               "source": plan.source, "threads": torch.get_num_threads(), "drift": drift(plan.table),
                               "label_safe": sorted(f"{dtype}:{kernel}" for kernel, dtype in plan.scorable),
                               "table": plan.table}))
    else:
        from worker.engine import cpu

        click.echo(f"{cpu.describe()}; {torch.get_num_threads()} threads per process\n{table_text(plan)}")


@click.command()
@option("--prune", is_flag=True, help="Remove the entries the current settings do not use and no worker has "
        "used for --unused-days.")
@option("--unused-days", type=click.FloatRange(0), default=7.0, show_default=True,
        help="With --prune: how long an entry must have gone unused (a worker stamps what it reads at its start).")
@option("--json", "as_json", is_flag=True, help="Print the entries as JSON.")
def cache(prune, unused_days, as_json):
    """What MOODQ_CACHE_DIR holds: each entry's kind, size, when a worker last used it, and whether a worker
    with the current settings reads it on this host.

    Entries are keyed by what their values depend on (weights, dtype, torch, the host, moodq's kernels): after
    an upgrade or a change of model the old ones are never read again, and --prune removes them."""
    from worker.engine import cachefiles
    from worker.engine.loading import cache_in_use

    s = get_settings()
    found = cachefiles.entries(s.cache_dir, cache_in_use(s))
    gone = cachefiles.stale(found, unused_days) if prune else []
    for entry in gone:
        cachefiles.remove(entry)
    if as_json:
        click.echo(json.dumps([{"path": str(e.path), "kind": e.kind, "bytes": e.size, "used": e.used,
                                "in_use": e.in_use, "removed": e in gone} for e in found]))
        return
    click.echo(f"{s.cache_dir}:")
    for e in found:
        when = time.strftime("%Y-%m-%d %H:%M", time.localtime(e.used))
        state = "removed" if e in gone else "in use" if e.in_use else "unused"
        click.echo(f"  {e.kind:<9} {e.size / 1e6:>9,.1f} MB  {when}  {state:<7}  {e.path.name}")
    idle = [e for e in found if not e.in_use]
    after = (f"removed {len(gone)} of them ({sum(e.size for e in gone) / 1e6:,.1f} MB)" if prune
             else "`moodq cache --prune` removes those")
    click.echo(f"{sum(e.size for e in found) / 1e6:,.1f} MB in all; {sum(e.size for e in idle) / 1e6:,.1f} MB in "
               f"{len(idle)} entries the current settings do not use; {after} unused for {unused_days:g} days or more")


@click.command()
@option("--this-host", is_flag=True, help="Only workers on this machine (a container's healthcheck).")
@option("--json", "as_json", is_flag=True, help="Print each worker's health as JSON.")
def check(this_host, as_json):
    """Exit 0 when every worker (at least one) has loaded its model and beats; 1 otherwise; 2 when Redis is down.

    Reads the heartbeats workers write every MOODQ_HEARTBEAT_S (no broadcast, no model load)."""
    from producer.clitools import reach
    from worker.jobs.upkeep import health

    s = get_settings()
    reach(s, wait_s=2)
    nodes = health(s, this_host)
    if as_json:
        click.echo(json.dumps(nodes))
    for node, h in sorted(nodes.items()):
        if not as_json:
            click.echo(f"{node}: {'ok' if h['ok'] else 'NOT OK'} ({h['ready']} process(es) ready, last beat "
                       f"{h['age_s']:.0f} s ago){': ' + h['why'] if h['why'] else ''}")
    if not nodes:
        click.echo("no worker has a heartbeat" + (" on this host" if this_host else ""), err=True)
    if not nodes or not all(h["ok"] for h in nodes.values()):
        sys.exit(1)
