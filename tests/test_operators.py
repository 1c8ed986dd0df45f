"""Operators: rolling stats and alert, follow (growing file, Redis Stream, back-pressure), triage order,
the report, and Flower reading back real tasks over its HTTP API."""

from __future__ import annotations

import base64
import csv
import io
import json
import re
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request

import pytest
from click.testing import CliRunner

from producer.follow import Follower
from producer.stats import NegativeAlert, rolling
from tests.conftest import (
    FINISHED,
    RUN,
    eventually,
    free_port,
    send,
    start_fault_worker,
    wait_final,
    worker_log,
)
from worker.cli.main import main
from worker.common.schemas import Message, Record
from worker.common.settings import get_settings, load_settings
from worker.common.store import Store
from worker.jobs import broker as task_queue
from worker.jobs import launch
from worker.jobs.app import make_app


def cli(args: list[str], **env):
    """Run a moodq command in-process with extra MOODQ_* settings (the settings cache is reset around it)."""
    get_settings.cache_clear()
    try:
        return CliRunner().invoke(main, args, env=env)
    finally:
        get_settings.cache_clear()


def _rec(i: int, label: str | None, conf: float | None, at: float, status: str = "done") -> Record:
    return Record(id=f"s{i}", text="x", status=status, label=label, confidence=conf,
                  labeled_at=at if label else None, finished_at=at)


def test_rolling_stats_match_a_hand_computed_case():
    """UNIT (constructed records): windows count by label/failure time; shares and means by hand."""
    now = 10_000.0
    records = [
        _rec(1, "negative", 0.9, now - 10), _rec(2, "positive", 0.7, now - 50),    # last minute
        _rec(3, "negative", 0.8, now - 120), _rec(4, None, None, now - 200, "failed"),  # last 5 minutes
        _rec(5, "positive", 0.6, now - 1000),                                        # last hour
        _rec(6, "negative", 0.5, now - 7200),                                        # outside every window
        Record(id="p", text="x"),                                                    # pending: no outcome yet
    ]
    records[2].reply_truncated = True  # its reply was cut by the token cap,
    records[2].status, records[2].flags = "review", ["cut"]  # so it waits for a person's review
    got = rolling(records, now, "negative")
    assert got["1m"] == {"messages": 2, "labeled": 2, "negative_share": 0.5, "mean_confidence": 0.8, "failures": 0,
                         "replies_cut": 0, "needs_review": 0}
    assert got["5m"] == {"messages": 4, "labeled": 3, "negative_share": 0.6667, "mean_confidence": 0.8, "failures": 1,
                         "replies_cut": 1, "needs_review": 1}
    assert got["60m"] == {"messages": 5, "labeled": 4, "negative_share": 0.5, "mean_confidence": 0.75, "failures": 1,
                          "replies_cut": 1, "needs_review": 1}


def test_negative_alert_fires_once_per_crossing():
    alert = NegativeAlert(0.5, "5m", min_messages=2)
    high = {"5m": {"labeled": 3, "negative_share": 0.67}}
    low = {"5m": {"labeled": 3, "negative_share": 0.33}}
    assert alert.check({"5m": {"labeled": 1, "negative_share": 1.0}}, 1) is None  # too few messages
    assert alert.check(high, 2)["negative_share"] == 0.67
    assert alert.check(high, 3) is None and alert.check(low, 4) is None
    assert alert.check(high, 5) is not None


def test_stats_command_reads_live_records_and_stores_the_alert(settings):
    s = load_settings(key_prefix=f"moodqtest-{RUN}-stats")
    store = Store(s)
    try:
        store.add([Message(id=f"st-{i}", text="t") for i in range(4)])
        for i, label in enumerate(["negative", "negative", "negative", "positive"]):
            def labeled(r, label=label):
                r.status, r.label, r.confidence, r.labeled_at = "labeled", label, 0.9, time.time()
            store.update(f"st-{i}", labeled)
        out = cli(["stats", "--json", "--alert-negative", "0.7", "--alert-min", "3"], MOODQ_KEY_PREFIX=s.key_prefix)
        assert out.exit_code == 0, out.output
        figures = json.loads(out.stdout.splitlines()[-1])["windows"]
        assert figures["1m"]["labeled"] == 4 and figures["1m"]["negative_share"] == 0.75
        assert "ALERT: negative share 75%" in out.stderr
        assert json.loads(store.r.lindex(s.keys.alerts, 0))["negative_share"] == 0.75
    finally:
        store.delete_all()


def _follower(tmp_settings, **kw) -> Follower:
    return Follower(tmp_settings, make_app(tmp_settings), on_event=lambda m: None, **kw)


@pytest.fixture
def follow_settings():
    s = load_settings(key_prefix=f"moodqtest-{RUN}-follow", queue=f"moodqtest-{RUN}-follow")  # no worker here
    yield s
    store = Store(s)
    store.delete_all()
    task_queue.remove(make_app(s), s.queue)


def test_follow_growing_file_enqueues_each_new_line_exactly_once(follow_settings, tmp_path):
    path = tmp_path / "stream.jsonl"
    path.write_text('{"text": "first"}\n{"text": "second"}\n{"text": "half-wr', encoding="utf-8")
    store = Store(follow_settings)

    def run_until(n_records: int) -> None:
        f = _follower(follow_settings)
        f.follow_file(path, poll_s=0.05, until=lambda: len(store.ids()) >= n_records)

    run_until(2)
    with path.open("a", encoding="utf-8") as out:
        out.write('itten"}\nnot json\n{"text": "fourth"}\n')
    run_until(4)   # a new follower resumes from the saved offset
    with path.open("a", encoding="utf-8") as out:
        out.write('{"text": "fifth", "id": "own-id"}\n')
    run_until(5)
    records = {r.id: r.text for r in store.iter_records()}
    assert records == {f"{path}:1": "first", f"{path}:2": "second", f"{path}:3": "half-written",
                       f"{path}:5": "fourth", "own-id": "fifth"}
    assert task_queue.depth(make_app(follow_settings), follow_settings.queue) == 5  # one task per line, none twice


def test_follow_survives_copytruncate_rotation_without_losing_a_line(follow_settings, tmp_path):
    """logrotate's copytruncate empties the file in place: the new lines sit where old ones did,
    and must still go in (under new ids), as must a file that replaces the old one."""
    path = tmp_path / "grow.jsonl"
    path.write_text('\ufeff{"text": "old one"}\n{"text": "old two"}\n', encoding="utf-8")  # with a BOM
    store = Store(follow_settings)

    def run_until(n_records: int) -> None:
        _follower(follow_settings).follow_file(path, poll_s=0.05, until=lambda: len(store.ids()) >= n_records)

    run_until(2)
    with path.open("r+", encoding="utf-8") as f:
        f.truncate(0)
    path.write_text('{"text": "new one"}\n', encoding="utf-8")
    run_until(3)
    replacement = tmp_path / "grow.jsonl.new"
    replacement.write_text('{"text": "replaced one"}\n{"text": "replaced two"}\n', encoding="utf-8")
    replacement.replace(path)  # a new inode, larger than the saved offset
    run_until(5)
    records = {r.id: r.text for r in store.iter_records()}
    assert records == {f"{path}:1": "old one", f"{path}:2": "old two", f"{path}~1:1": "new one",
                       f"{path}~2:1": "replaced one", f"{path}~2:2": "replaced two"}


def test_follow_redis_stream_and_back_pressure(follow_settings):
    store = Store(follow_settings)
    stream = follow_settings.keys.test("incoming")
    for i in range(3):
        store.r.xadd(stream, {"text": f"stream message {i}", "lang": "en"})
    f = _follower(follow_settings, max_queue=2)
    app = make_app(follow_settings)
    for _ in range(5):  # a long queue: reading must pause
        app.send_task("sentiment", args=("placeholder",), queue=follow_settings.queue)
    t = threading.Thread(target=f.follow_redis_stream, args=(stream,),
                         kwargs={"until": lambda: len(store.ids()) >= 3})
    t.start()
    time.sleep(1.5)  # that nothing happens for a while can only be watched for a while
    assert store.ids() == []  # paused by back-pressure
    task_queue.remove(app, follow_settings.queue)
    t.join(30)
    assert sorted(r.text for r in store.iter_records()) == [f"stream message {i}" for i in range(3)]
    assert store.r.xpending(stream, "moodq")["pending"] == 0  # acknowledged after enqueueing
    assert f.totals["paused_s"] >= 1.0


def test_stream_takeover_walks_past_entries_that_are_not_idle(follow_settings):
    """XAUTOCLAIM scans a bounded window of the pending list (10 x COUNT entries): idle entries of a dead
    consumer behind a live consumer's long run of pending ones are reached by following the cursor."""
    store = Store(follow_settings)
    stream = follow_settings.keys.test("takeover")
    r = store.r
    r.xgroup_create(stream, "moodq", id="0", mkstream=True)
    live = [r.xadd(stream, {"text": f"in progress {i}"}) for i in range(25)]
    for i in range(3):
        r.xadd(stream, {"text": f"orphaned {i}"})
    r.xreadgroup("moodq", "dead-consumer", {stream: ">"}, count=100)  # read, never acknowledged
    time.sleep(0.6)
    r.xclaim(stream, "moodq", "live-consumer", 0, live)  # a live consumer holds these: not idle
    calls = []
    f = _follower(follow_settings)
    f.follow_redis_stream(stream, batch=2, reclaim_idle_s=0.5, until=lambda: calls.append(1) or len(calls) > 1)  # one round
    assert {rec.text for rec in store.iter_records()} == {f"orphaned {i}" for i in range(3)}
    assert {e["message_id"] for e in r.xpending_range(stream, "moodq", "-", "+", 100)} == set(live)


@pytest.mark.worker
@pytest.mark.model
def test_triage_drafts_replies_for_the_most_negative_first(store, settings, small_model):
    """Replies of a mixed backlog run in order of P(negative), not arrival; export --sort agrees. On the small
    model, each message's P(negative) named in its text (`[as:negative:P]`, tests/faults.py): the order is the
    subject here, not the scores (the embedded model's own: tests/test_pipeline.py, tests/test_model.py)."""
    env = {"MOODQ_QUEUE": f"{settings.queue}-triage", "MOODQ_REPLY_BATCH_SIZE": "1", "MOODQ_MAX_REPLY_TOKENS": "4",
           **small_model.env}
    s = load_settings(queue=env["MOODQ_QUEUE"], reply_batch_size=1)
    p_negative = [0.05, 0.97, 0.2, 0.9, 0.1, 0.75, 0.3, 0.6]
    texts = [f"[as:negative:{p}] message {i}" for i, p in enumerate(p_negative)]
    ids = send(s, *[{"id": f"tri-{i}", "text": t} for i, t in enumerate(texts)])
    proc = start_fault_worker("triage", env, worker_log("triage"))
    try:
        recs = wait_final(store, ids)
    finally:
        launch.stop(proc)
        task_queue.remove(make_app(s), s.queue)
    done = sorted(recs.values(), key=lambda r: r.finished_at)
    levels = [s.reply_priority(r.probs) for r in done]
    assert levels == sorted(levels), [(r.id, round(r.probs["negative"], 2)) for r in done]
    assert len(set(levels)) > 1  # the backlog really was mixed
    out = cli(["export", "--sort", "negativity"])
    exported = [json.loads(line) for line in out.stdout.split("\n") if line]  # not splitlines: \u2028 is data
    mine = [r for r in exported if r["id"].startswith("tri-")]
    p = [r["probs"]["negative"] for r in mine]
    assert p == sorted(p, reverse=True) and len(mine) == 8


def test_report_renders_with_the_expected_counts(tmp_path):
    s = load_settings(key_prefix=f"moodqtest-{RUN}-report")
    store = Store(s)
    try:
        store.add([Message(id=f"rp-{i}", text=f"message {i}") for i in range(6)])
        for i, (label, p) in enumerate([("negative", 0.95), ("negative", 0.7), ("positive", 0.1), ("positive", 0.2)]):
            def done(r, label=label, p=p, i=i):
                r.status, r.label, r.confidence = "done", label, max(p, 1 - p)
                r.probs, r.labeled_at, r.finished_at = {"negative": p, "positive": 1 - p}, time.time() - 60 * i, time.time()
                r.reply, r.reply_truncated = f"reply {i}", i == 1  # rp-1's reply was cut
            store.update(f"rp-{i}", done)
        store.update("rp-4", lambda r: (setattr(r, "status", "failed"), setattr(r, "error", "text is empty"),
                                        setattr(r, "error_stage", "sentiment")))
        html = tmp_path / "r.html"
        out = cli(["report", "-o", str(html)], MOODQ_KEY_PREFIX=s.key_prefix)
        assert out.exit_code == 0, out.output
        page = html.read_text(encoding="utf-8")
        assert '<b id="messages">6</b>' in page
        assert "done: 4, failed: 1, pending: 1" in page and "negative: 2, positive: 2" in page
        assert page.index("rp-0") < page.index("rp-1") < page.index("rp-3")  # most negative first
        assert "text is empty" in page
        assert '<b id="replies-cut">1</b>' in page and page.count("[CUT, not a finished draft]") == 1
        assert page.index("[CUT, not a finished draft]") < page.index("reply 1") < page.index("rp-3")
        csv_out = cli(["export", "--format", "csv"], MOODQ_KEY_PREFIX=s.key_prefix)
        rows = list(csv.DictReader(io.StringIO(csv_out.output)))
        assert "path" in rows[0]
        assert {r["id"]: r["reply_truncated"] for r in rows} == {
            "rp-0": "False", "rp-1": "True", "rp-2": "False", "rp-3": "False", "rp-4": "", "rp-5": ""}
        png = (tmp_path / "r.png").read_bytes()
        assert png.startswith(b"\x89PNG") and base64.b64encode(png).decode()[:100] in page
    finally:
        store.delete_all()


def _get(url: str, auth: str | None = None) -> tuple[int, bytes]:
    req = urllib.request.Request(url)
    if auth:
        req.add_header("Authorization", "Basic " + base64.b64encode(auth.encode()).decode())
    try:
        with urllib.request.build_opener(urllib.request.ProxyHandler({})).open(req, timeout=10) as resp:
            return resp.status, resp.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()
    except urllib.error.URLError:
        return 0, b""  # not listening (yet)


@pytest.mark.worker
@pytest.mark.model
def test_flower_reads_back_real_tasks_metrics_and_worker_info(worker, store):
    port, auth = free_port(), f"ops:{RUN}-pw"
    log = worker_log("flower")
    flower = subprocess.Popen([sys.executable, "-m", "worker", "flower", "--port", str(port)],
                              env={**__import__("os").environ, "FLOWER_BASIC_AUTH": auth},
                              stdout=log.open("w"), stderr=subprocess.STDOUT, start_new_session=True)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while _get(f"{base}/healthcheck")[0] != 200:
            assert time.monotonic() < deadline and flower.poll() is None, log.read_text()[-2000:]
            time.sleep(0.5)
        # Flower's metrics come from worker events: once they name the worker, its event receiver is attached.
        eventually(lambda: f'worker="main-{RUN}@' in _get(f"{base}/metrics", auth)[1].decode(), timeout=60,
                   what="Flower receiving the worker's events")
        long_text = "The delivery was late again and nobody answered my emails for a week."
        ids = send(load_settings(), {"id": f"fl-{RUN}", "text": long_text})
        assert wait_final(store, ids)[ids[0]].status in FINISHED
        assert _get(f"{base}/api/tasks")[0] == 401  # auth required
        assert _get(f"{base}/metrics")[0] == 401  # for the metrics too (Flower alone serves them to anyone)
        tasks: dict = {}
        while time.monotonic() < deadline + 60:
            tasks = json.loads(_get(f"{base}/api/tasks?limit=1000", auth)[1])
            names = {t["name"] for t in tasks.values() if ids[0] in (t.get("args") or "")}
            if {"sentiment", "reply"} <= names:
                break
            time.sleep(0.25)
        mine = [t for t in tasks.values() if ids[0] in (t.get("args") or "")]
        assert {t["name"] for t in mine} == {"sentiment", "reply"} and all(t["state"] == "SUCCESS" for t in mine)
        for shown in (t["args"] for t in mine):  # sentiment and its chained reply alike
            assert long_text[:40] in shown and long_text not in shown  # truncated, not dumped
        status, metrics = _get(f"{base}/metrics", auth)
        assert status == 200 and re.search(rb'flower_events_total\{.*task="sentiment"', metrics)
        out = cli(["workers"])
        assert out.exit_code == 0 and "prompt_version=" in out.output and "model=embedded" in out.output
        from worker.engine import cpu

        path = store.get(ids[0]).path  # the record names its path, and it is the one the probe picked
        assert path and " score:" in path and " decode:" in path
        assert f"cpu={cpu.cpu_class()}" in out.output and f"path={path}" in out.output
    finally:
        launch.stop(flower, grace=10)
    assert auth.split(":")[1] not in log.read_text()


@pytest.mark.model
def test_cache_prune_removes_old_unused_entries_and_keeps_what_this_host_reads(tmp_path, engine):
    """`moodq cache --prune` on a cache dir holding this host's real entries (linked) beside entries nothing
    reads any more (an old torch's int8 copies, another dtype's weights, another host's probe table and
    prefixes): the old unused ones go, a recent unused one stays (--unused-days), what a worker reads stays."""
    import os

    from worker.engine import cachefiles
    from worker.engine.loading import cache_in_use

    real = load_settings()
    used = [p for p in cache_in_use(real) if p.exists()]
    assert {p.parent.name for p in used} >= {"probe", "converted", "int8"}  # the engine fixture's start read them
    for p in used:
        link = tmp_path / p.relative_to(real.cache_dir)
        link.parent.mkdir(parents=True, exist_ok=True)
        link.symlink_to(p)
    old = time.time() - 30 * 86400
    # another dtype's weights: the dtype this host's plan does not load (writing the one it loads would go
    # through the link above into the real cache: on a float32 host it once overwrote the real weights)
    read = next(p.name for p in used if p.parent.name == "converted")
    other = read.replace("float32", "bfloat16") if read.endswith("-float32") else read.rsplit("-", 1)[0] + "-float32"
    stale = ["int8/0123456789.safetensors", "probe/abcdef.json", "probe/abcdef.json.lock",
             f"converted/{other}/model.safetensors", f"converted/{other}.lock", "prefixes/0ldh0st/0.safetensors"]
    for name in stale:
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        assert not any(d.is_symlink() for d in (tmp_path / name).parents), f"{name} would be written into the real cache"
        (tmp_path / name).write_bytes(b"x" * 1000)
        for p in (tmp_path / name, (tmp_path / name).parent):
            os.utime(p, (old, old))
    (tmp_path / "int8" / "recent.safetensors").write_bytes(b"r")

    here = load_settings(cache_dir=str(tmp_path))
    found = cachefiles.entries(tmp_path, cache_in_use(here))
    assert {e.path.name for e in found if e.in_use} == {p.name for p in used}
    a_year_on = cachefiles.stale(found, 7, now=time.time() + 365 * 86400)  # in use is kept however old
    assert not any(e.in_use for e in a_year_on) and len(a_year_on) == len(found) - len(used)

    out = cli(["cache", "--prune"], MOODQ_CACHE_DIR=str(tmp_path))
    assert out.exit_code == 0, out.output
    assert "removed 4 of them" in out.output and "in use" in out.output
    assert not any((tmp_path / name).exists() for name in stale)
    assert not (tmp_path / "converted" / other).exists()
    assert (tmp_path / "int8" / "recent.safetensors").exists()
    assert all((tmp_path / p.relative_to(real.cache_dir)).exists() for p in used) and all(p.exists() for p in used)
    listed = json.loads(cli(["cache", "--json"], MOODQ_CACHE_DIR=str(tmp_path)).output)
    assert sorted(e["path"] for e in listed) == sorted(
        [str(tmp_path / p.relative_to(real.cache_dir)) for p in used] + [str(tmp_path / "int8" / "recent.safetensors")])


def test_a_starting_worker_s_log_lines_reach_the_waiter_once_each_in_order(tmp_path, capsys):
    """`moodq demo` shows a first start's steps (the probe, the conversion) while it waits: launch.wait_ready hands
    each whole log line over once, as it is written, also when the process then exits. A real child process writes
    the log, a line at a time; the wait reads it every 0.1 s, and the process exits without being ready, so the
    wait ends in its clear error."""
    from worker.cli.trial import _first_start

    script = ("import sys, time\n"
              "print('[t: INFO/ForkPoolWorker-1] kernel probe: measured in 5.6 s', flush=True)\n"
              "time.sleep(0.5)\n"
              "print('second line', flush=True)\n"
              "sys.stdout.write('[t: INFO/ForkPoolWorker-1] de-quantised x.gguf in 17 s\\nhalf a li')\n")
    log = tmp_path / "start.log"
    proc = launch.spawn([sys.executable, "-c", script], {}, log, "never-answers@%h")
    lines: list[str] = []
    with pytest.raises(RuntimeError, match="worker exited early"):
        launch.wait_ready(proc, {}, log, "never-answers@%h", timeout=30, ready_text="never written",
                          progress=lines.append)
    assert lines == ["[t: INFO/ForkPoolWorker-1] kernel probe: measured in 5.6 s", "second line",
                     "[t: INFO/ForkPoolWorker-1] de-quantised x.gguf in 17 s"]
    for line in lines:
        _first_start(line)
    assert capsys.readouterr().err.splitlines() == ["  worker: kernel probe: measured in 5.6 s",
                                                    "  worker: de-quantised x.gguf in 17 s"]
