"""Nothing lost: killed workers, a message that kills its worker every time, SIGTERM, a Redis restart
(with password and TLS), pickle payloads, dead letters and a small soak — all on real processes."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import redis

from tests.conftest import (
    FINISHED,
    ROOT,
    RUN,
    assert_one_final_record_each,
    eventually,
    free_port,
    held,
    send,
    start_fault_worker,
    start_with_standby,
    take_over,
    wait_final,
    worker_log,
)
from worker.common.procinfo import children
from worker.common.settings import load_settings
from worker.common.store import Store
from worker.jobs import launch
from worker.jobs.app import make_app

pytestmark = [pytest.mark.worker, pytest.mark.model]


def _holding_pid(store: Store, text: str, timeout: float = 300) -> int:
    """The pid of the pool process that is inside the model call for ``text`` (tests/faults.py)."""
    key = store.k.test("fault", "holding", text)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if pid := store.r.get(key):
            return int(pid)
        time.sleep(0.05)
    raise AssertionError(f"{text!r} never reached the model")


def test_pool_process_killed_mid_task_is_retried_and_nothing_is_lost(small_fault_worker, small_model, store):
    """SIGKILL the process holding the model while it scores: the message and the batch it carried complete
    (their labels: the ones the texts name, tests/faults.py)."""
    hold = f"{held(1.2, small_model.slowness)} [as:positive] I love this phone"
    ids = send(small_fault_worker, {"id": "kill-1", "text": hold},
                *[{"id": f"kill-other-{i}", "text": f"Great service, order {i}"} for i in range(5)])
    os.kill(_holding_pid(store, hold), signal.SIGKILL)
    recs = wait_final(store, ids)
    assert_one_final_record_each(store, ids)
    assert all(r.status in FINISHED for r in recs.values()), {i: r.error for i, r in recs.items()}
    assert recs["kill-1"].attempts["sentiment"] == 2  # killed once, then done by the restarted process
    assert recs["kill-1"].label == "positive"


def test_message_that_kills_its_worker_every_time_ends_failed(small_fault_worker, store):
    """A poison message is tried 1 + max_retries times, then failed with the reason; others still complete."""
    ids = send(small_fault_worker, {"id": "poison-1", "text": "[crash] boom"},
                {"id": "after-poison", "text": "Lovely, thank you"})
    recs = wait_final(store, ids)
    assert_one_final_record_each(store, ids)
    poison = recs["poison-1"]
    assert poison.status == "failed" and poison.error_stage == "sentiment"
    assert poison.error.startswith("sentiment: the worker process died on this message 3 times"), poison.error
    assert "SIGKILL" in poison.error and poison.attempts["sentiment"] == 3
    assert recs["after-poison"].status in FINISHED


def test_sigterm_lets_the_running_task_finish_and_the_rest_waits(store, settings, tmp_path, small_model):
    """Warm shutdown: the task in progress completes, the queued ones are left for the next worker (on the
    small model: conftest.small_model)."""
    env = {"MOODQ_QUEUE": f"{settings.queue}-graceful", "MOODQ_REPLY_LABELS": "none", "MOODQ_SENTIMENT_BATCH_SIZE": "1",
           **small_model.env}
    s = load_settings(queue=env["MOODQ_QUEUE"], reply_labels="none")
    first, second = start_with_standby("graceful", env, tmp_path)  # the second takes over once the first stopped
    try:
        hold = f"{held(1.2, small_model.slowness)} Thanks, that was quick"
        ids = send(s, {"id": "grace-hold", "text": hold},
                    *[{"id": f"grace-{i}", "text": f"The app crashes again, attempt {i}"} for i in range(4)])
        _holding_pid(store, hold)
        os.kill(first.pid, signal.SIGTERM)  # to the main process only, as docker stop and kill do
        first.wait(120)
        running = store.get("grace-hold")
        assert running.status in ("labeled", *FINISHED) and running.attempts["sentiment"] == 1, running
        assert sum(store.get(i).status == "pending" for i in ids) >= 2  # still queued, not dropped
        take_over(s, "graceful")
        recs = wait_final(store, ids)
    finally:
        launch.stop(first)
        launch.stop(second)
    assert_one_final_record_each(store, ids)
    assert all(r.status in FINISHED for r in recs.values())
    assert recs["grace-hold"].attempts["sentiment"] == 1  # not run twice


class TlsRedis:
    """A redis-server of our own: TLS only, password, AOF on, in a temp dir; can be restarted."""

    def __init__(self, workdir: Path):
        self.dir, self.port, self.password = workdir, free_port(), f"pw-{RUN}-secret"
        subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
                        "-keyout", str(workdir / "key.pem"), "-out", str(workdir / "cert.pem"),
                        "-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1"],
                       check=True, capture_output=True)
        self.url = (f"rediss://:{self.password}@127.0.0.1:{self.port}/0"
                    f"?ssl_cert_reqs=required&ssl_ca_certs={workdir / 'cert.pem'}")
        self.proc: subprocess.Popen | None = None

    def start(self) -> None:
        c = str(self.dir / "cert.pem")
        self.proc = subprocess.Popen(
            ["redis-server", "--port", "0", "--tls-port", str(self.port), "--bind", "127.0.0.1",
             "--tls-cert-file", c, "--tls-key-file", str(self.dir / "key.pem"), "--tls-ca-cert-file", c,
             "--tls-auth-clients", "no", "--requirepass", self.password, "--dir", str(self.dir),
             "--appendonly", "yes", "--appendfsync", "always", "--save", ""],
            stdout=(self.dir / "redis.log").open("a"), stderr=subprocess.STDOUT)
        client = redis.Redis.from_url(self.url)
        for _ in range(100):
            try:
                client.ping()
                return
            except redis.ConnectionError:
                time.sleep(0.1)
        raise RuntimeError((self.dir / "redis.log").read_text()[-2000:])

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()  # SIGTERM: redis fsyncs the AOF and exits
            self.proc.wait(30)


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
        return True
    except ProcessLookupError:
        return False


def test_redis_restart_mid_run_over_tls_with_password(tmp_path, small_model):
    """Workers and producer ride out a restart of a TLS, password-protected Redis; each message has one record.
    On the small model (conftest.small_model), every message gets a reply and every decode step of the first
    thirty sleeps 50 ms (tests/faults.py), so Redis goes down while replies are being drafted."""
    server = TlsRedis(tmp_path)
    server.start()
    env = {"MOODQ_REDIS_URL": server.url, "MOODQ_REPLY_LABELS": "all", "MOODQ_QUEUE": f"restart-{RUN}",
           **small_model.env}
    s = load_settings(redis_url=server.url, reply_labels="all", queue=env["MOODQ_QUEUE"])
    store = Store(s)
    log = tmp_path / "worker.log"
    proc = None
    try:
        proc = start_fault_worker("restart", env, log)
        first = send(s, *[{"id": f"r1-{i}", "text": f"[draft-slow:0.05] Delivery {i} was late and the box was damaged."}
                           for i in range(30)])
        deadline = time.monotonic() + 300
        while store.counts()["done"] + store.counts()["review"] < 3 and time.monotonic() < deadline:
            time.sleep(0.2)
        before = store.counts()
        server.stop()
        time.sleep(3)  # Redis stays down for 3 s: the outage itself, not a wait for something
        server.start()
        second = send(s, *[{"id": f"r2-{i}", "text": f"Order {i} arrived early, thanks!"} for i in range(30)])
        recs = wait_final(store, first + second, timeout=400)
        assert_one_final_record_each(store, first + second)
        assert all(r.status in FINISHED for r in recs.values()), {i: r.error for i, r in recs.items() if r.error}
        assert store.r.zcard(s.keys.index) == 60
        # Redis went down with replies still to draft (labeled, not yet final): 22 of 30 in a run here
        assert before["labeled"] > 0, f"nothing was waiting for its reply when Redis went down: {before}"
        assert children(proc.pid)
        launch.stop_idle(proc)  # what `moodq demo` and the tests' fixtures stop an idle worker with
        assert proc.returncode is not None
        eventually(lambda: not _group_alive(proc.pid), timeout=10, what="the worker's process group empty")
    finally:
        if proc is not None:
            launch.stop(proc)
        server.stop()
    text = log.read_text()
    assert "ready in" in text and server.password not in text  # the password never reaches the log
    dump = list((tmp_path / "appendonlydir").glob("*"))
    assert dump and sum(p.stat().st_size for p in dump) > 10_000  # the AOF holds the run's records ...
    assert not any(server.password.encode() in p.read_bytes() for p in dump)  # ... and not the password


def test_pickle_payload_is_refused_not_executed(small_fault_worker, store, tmp_path):
    """JSON only: a pickled task is refused by the worker (its payload never runs) and the worker keeps serving."""
    marker = tmp_path / "pickle-payload-ran"

    class Payload:
        def __reduce__(self):
            return (os.makedirs, (str(marker),))

    make_app(small_fault_worker).send_task("sentiment", args=(Payload(),), queue=small_fault_worker.queue,
                                           serializer="pickle")
    ids = send(small_fault_worker, {"id": "after-pickle", "text": "Works fine"})
    assert wait_final(store, ids)["after-pickle"].status in FINISHED
    assert not marker.exists()
    assert "Refusing to deserialize untrusted content of type pickle" in worker_log("faults-small").read_text()


def test_dead_letters_are_listed_and_requeued_from_their_records(small_fault_worker, worker, store):
    """`moodq failed` lists the failed message; `moodq retry-failed` runs it again without the source file
    (on the default queue, where the main worker picks it up)."""
    from click.testing import CliRunner

    from worker.cli.main import main

    ids = send(small_fault_worker, {"id": "dead-1", "text": "[transient:3] I want my money back"})
    assert wait_final(store, ids)["dead-1"].status == "failed"  # 3 faults > max_retries 2
    listed = CliRunner().invoke(main, ["failed", "--stage", "sentiment"])
    line = next(ln for ln in listed.output.splitlines() if ln.startswith("dead-1\t"))
    assert "attempts: sentiment 3" in line and "injected transient fault 3/3" in line
    dry = CliRunner().invoke(main, ["retry-failed", "--dry-run", "dead-1", "no-such-id"])
    assert dry.exit_code == 1 and "would re-queue 1: dead-1\n" in dry.output, dry.output
    assert "no-such-id: no record (never enqueued, expired or purged)" in dry.output
    assert store.get("dead-1").status == "failed"  # a dry run changes nothing
    out = CliRunner().invoke(main, ["retry-failed", "dead-1", "no-such-id"])
    assert out.exit_code == 1 and "re-queued 1, skipped 1" in out.output, out.output
    rec = wait_final(store, ids)["dead-1"]
    assert rec.status in FINISHED and rec.requeued == 1 and rec.error is None
    assert rec.attempts["sentiment"] == 1 and rec.label in ("positive", "negative")


def test_soak_two_hundred_messages_through_two_processes(settings, tmp_path, small_model):
    """The soak script's check on a small run: exactly one final record per message, none lost or doubled
    (on the small model: conftest.small_model)."""
    sys.path.insert(0, str(ROOT))
    from bench.soak import corpus, run_soak

    s = load_settings(key_prefix=f"moodqtest-{RUN}-soak", queue=f"moodqtest-{RUN}-soak")
    report = run_soak(s, corpus(200, []), concurrency=2, log_path=tmp_path / "soak.log", timeout=600,
                      worker_env={"MOODQ_REPLY_LABELS": "none", "MOODQ_SENTIMENT_BATCH_SIZE": "16", **small_model.env})
    assert report["records"] == 200 and report["lost"] == 0 and report["duplicates"] == 0, report
    assert report["status"]["done"] == 200 and report["bad_labels"] == 0, report
    assert len(report["peak_rss_mb"]) == 3  # the Celery main process and two pool processes
