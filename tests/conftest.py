"""Shared fixtures: a private Redis namespace, the embedded model, and real worker processes.

Tests use their own Redis DB index (MOODQ_TEST_REDIS_URL, default db 11) and a key prefix
and queue unique to the run, and delete what they wrote at the end.
"""

from __future__ import annotations

import os
import socket
import sys
import tempfile
import uuid
from dataclasses import dataclass
from pathlib import Path

import pytest

# Stable if this module is imported twice (as conftest and as tests.conftest).
RUN = os.environ.setdefault("MOODQ_TEST_RUN", uuid.uuid4().hex[:8])
REDIS_URL = os.environ.get("MOODQ_TEST_REDIS_URL", "redis://127.0.0.1:6379/11")
ROOT = Path(__file__).resolve().parent.parent
FINISHED = ("done", "review")  # a reply stored: passing every reply rule, or for a person to review first
# Queues of the tests' extra workers, removed at the end:
EXTRA_QUEUES = ("faults-small", "graceful", "graceful-standby", "triage", "stage")
LOG_DIR = Path(tempfile.gettempdir()) / f"moodq-test-{RUN}"  # worker logs, kept for a look after a failure
DATA = Path(__file__).resolve().parent / "data"

# Before anything imports worker.common.settings: every setting the tests rely on.
os.environ.update({
    "HF_HUB_OFFLINE": "1",
    "MOODQ_REDIS_URL": REDIS_URL,
    "MOODQ_KEY_PREFIX": f"moodqtest-{RUN}",
    "MOODQ_QUEUE": f"moodqtest-{RUN}",
    "MOODQ_MAX_REPLY_TOKENS": "24",
    "MOODQ_RETRY_BACKOFF_MAX": "1",
    "MOODQ_REDRAFTS": "0",  # 24-token replies are mostly cut: stored for review at once (redrafting: test_replying.py)
})
for key in [k for k in os.environ if k.startswith("MOODQ_") and k not in (
        "MOODQ_REDIS_URL", "MOODQ_KEY_PREFIX", "MOODQ_QUEUE", "MOODQ_MAX_REPLY_TOKENS",
        "MOODQ_RETRY_BACKOFF_MAX", "MOODQ_REDRAFTS", "MOODQ_TEST_REDIS_URL", "MOODQ_CACHE_DIR", "MOODQ_TEST_RUN")]:
    del os.environ[key]  # an operator's own settings must not leak into the tests

from worker.common.settings import get_settings, load_settings  # noqa: E402
from worker.common.store import Store  # noqa: E402
from worker.jobs import broker as task_queue  # noqa: E402
from worker.jobs import launch  # noqa: E402
from worker.jobs.app import make_app  # noqa: E402


@pytest.fixture(scope="session")
def settings():
    return get_settings()


@pytest.fixture(scope="session")
def store(settings):
    st = Store(settings)
    st.r.ping()
    yield st
    st.delete_all()
    app = make_app(settings)
    for queue in [settings.queue] + [f"{settings.queue}-{q}" for q in EXTRA_QUEUES]:
        task_queue.remove(app, queue)


@pytest.fixture(scope="session")
def engine(settings):
    """The embedded model, loaded once in the test process."""
    from worker.jobs.resident import engine as resident

    return resident(load_settings(threads=2))


# What a short claim took with the small model on the machines the suite's time limits were written for
# (2-core AVX512-BF16 EPYC, 2026-11-30): the limits below are scaled by how much slower this host is.
REFERENCE_S = {"small_judge": 0.01}


@dataclass
class SmallModel:
    env: dict[str, str]  # MOODQ_MODEL and MOODQ_CACHE_DIR for a worker
    slowness: float  # how many times slower than the reference this host labels with it (at least 1)


@pytest.fixture(scope="session")
def small_model(engine, tmp_path_factory) -> SmallModel:
    """A worker model for tests whose subject is the queue, not the model (kill -9, SIGTERM, a Redis restart,
    the soak, and the fault tests of `small_fault_worker`): a random-weight two-layer Qwen2 with the embedded model's tokenizer and chat template, saved
    with save_pretrained and named by MOODQ_MODEL, so every part of the worker but the weights is the
    production one. Its worker starts in the imports' time and labels in milliseconds on any CPU class (the
    embedded model takes 7-15 s to start, and those tests' waits grew with the host's slowness). Its kernel
    probe goes to a cache dir of its own, not the operator's. Its slowness is measured here."""
    import time

    import torch
    from transformers import Qwen2Config, Qwen2ForCausalLM

    from worker.engine.loading import load
    from worker.engine.model import Engine

    path = tmp_path_factory.mktemp("small-model")
    torch.manual_seed(0)
    cfg = Qwen2Config(vocab_size=len(engine.tok), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                      num_attention_heads=2, num_key_value_heads=1, tie_word_embeddings=True)
    Qwen2ForCausalLM(cfg).save_pretrained(path)
    engine.tok.save_pretrained(path)
    env = {"MOODQ_MODEL": str(path), "MOODQ_CACHE_DIR": str(path / "cache")}
    small = Engine(load(load_settings(threads=2, **{k[6:].lower(): v for k, v in env.items()})), engine.prompts)
    texts = ["I love it, thanks!", "这个天气真让人烦躁。", "Broken again.", "快递很快，包装完好。"] * 2
    small.judge(texts, "en")  # warm-up
    best = float("inf")
    for _ in range(3):
        t0 = time.perf_counter()
        small.judge(texts, "en")
        best = min(best, time.perf_counter() - t0)
    factor = max(1.0, best / REFERENCE_S["small_judge"])
    print(f"\nsmall model: a claim of 8 short messages {best * 1000:.0f} ms: its tests' time limits x{factor:.1f}")
    return SmallModel(env, factor)


def score_noise(engine) -> float:
    """How far two passes of the same message may score apart on this engine's path: the rows a pass
    holds change the rounding (bfloat16, or int8 activations whose one fbgemm scale spans the whole
    pass). Up to 0.51 measured between the cached and the plain pass, and 0.36 between a message alone
    and in a batch, with int8-fbgemm scoring on a real AVX2-only EPYC (2026-11-30; the labels agreed);
    a wrong cache or a broken batch moves scores by whole units and flips labels."""
    return 0.75 if engine.plan and engine.plan.score.startswith("int8") else 0.15


def limit(seconds: float, slowness: float) -> str:
    """A time limit for a test worker's environment: ``seconds`` on the reference host, scaled to this one."""
    return f"{seconds * slowness:g}"


def held(seconds: float, slowness: float) -> str:
    """tests/faults.py's marker that holds a sentiment task ``seconds`` on the reference host, scaled to this
    one: a test that acts while a task is held has that long, whatever the host."""
    return f"[hold:{seconds * slowness:.1f}]"


def worker_log(name: str) -> Path:
    LOG_DIR.mkdir(exist_ok=True)
    return LOG_DIR / f"{name}.log"


def _spawn(name: str, env: dict, args: list[str], log: Path | None = None):
    """Start a test worker named ``name`` (its hostname, and its log unless ``log`` is given); no wait."""
    return launch.spawn(args, env, log or worker_log(name), f"{name}-{RUN}@%h")


def _wait_ready(proc, name: str, env: dict, log: Path | None = None) -> None:
    """Wait until the test worker ``_spawn`` started as ``name`` has its model loaded and answers a ping."""
    launch.wait_ready(proc, env, log or worker_log(name), f"{name}-{RUN}@%h", timeout=600, ready_text="ready in")


def _start_worker(name: str, env: dict, args: list[str], log: Path | None = None):
    proc = _spawn(name, env, args, log)
    _wait_ready(proc, name, env, log)
    return proc


def _fault_args(env: dict, concurrency: int = 1, queue: str | None = None) -> list[str]:
    """A worker of the test-only fault app (tests/faults.py) consuming ``queue`` (default: ``env``'s queue), with
    the options `moodq worker` gives Celery (worker/cli/operate.py; without mingle: a second less to start)."""
    return [sys.executable, "-m", "celery", "-A", "tests.faults", "worker", "-Q", queue or env["MOODQ_QUEUE"],
            "-c", str(concurrency), "-P", "prefork", "-l", "INFO", "-E", "--without-mingle"]


def _fault_env(name: str, settings, small: SmallModel) -> dict:
    """The small-model fault worker's settings: short limits (the model labels and drafts in milliseconds; the
    time-limit and budget tests wait them out), its own queue."""
    return {
        "MOODQ_QUEUE": f"{settings.queue}-{name}",
        "MOODQ_SENTIMENT_SOFT_LIMIT": limit(2, small.slowness), "MOODQ_SENTIMENT_HARD_LIMIT": limit(20, small.slowness),
        "MOODQ_REPLY_SOFT_LIMIT": limit(2.5, small.slowness), "MOODQ_REPLY_HARD_LIMIT": limit(4.5, small.slowness),
        "MOODQ_HISTORY_REPLIES": "true",  # conversation replies in turn order (test_recovery, test_reply_stage)
        "MOODQ_MAX_RETRIES": "2", "MOODQ_MAX_CHARS": "60", **small.env,
    }


@pytest.fixture(scope="session")
def session_workers(request, store, settings) -> dict:
    """The run-wide workers the collected tests use (`worker`, `small_fault_worker`), started at once and both
    ready before the first of those tests runs. A worker's start is mostly single-threaded imports (7 s here,
    11-13 s on an AVX2-only EPYC): on two cores, two take little more than one. The fault worker's limits are
    scaled by the small model's speed, measured first, on a quiet host."""
    needed = {f for item in request.session.items for f in item.fixturenames}
    specs = {}  # fixture -> (log name, env, command)
    if "worker" in needed:
        specs["worker"] = ("main", {}, [sys.executable, "-m", "worker", "worker", "-c", "1", "-l", "INFO"])
    if "small_fault_worker" in needed:
        env = _fault_env("faults-small", settings, request.getfixturevalue("small_model"))
        specs["small_fault_worker"] = ("faults-small", env, _fault_args(env))
    procs = {}
    try:
        for fixture, (name, env, args) in specs.items():
            procs[fixture] = _spawn(name, env, args)
        for fixture, (name, env, _) in specs.items():
            _wait_ready(procs[fixture], name, env)
        yield {fixture: (procs[fixture], load_settings(**{k[6:].lower(): v for k, v in env.items()}))
               for fixture, (_, env, _) in specs.items()}
    finally:
        for proc in procs.values():
            launch.stop_idle(proc)


@pytest.fixture(scope="session")
def worker(session_workers):
    """A real worker started through the CLI (`moodq worker`), on the run's queue."""
    return session_workers["worker"][0]


@pytest.fixture(scope="session")
def small_fault_worker(session_workers):
    """A real worker of the test-only fault app (tests/faults.py) on the small model (`small_model`), its own
    queue, short limits; its settings. For tests whose subject is what the queue does (retries, time limits, bad
    input, fuzzing, poison, pickle, a killed pool process, replaced text, turn order): where one needs a label,
    its text names it (`[as:LABEL]`). On the embedded model a pool process that dies reloads it (8-15 s on an
    AVX2-only host) and every reply is drafted for real."""
    return session_workers["small_fault_worker"][1]


def start_fault_worker(name: str, env: dict, log: Path | None = None, concurrency: int = 1, queue: str | None = None):
    """A real worker of the test-only fault app (tests/faults.py) consuming ``queue`` (default: ``env``'s queue)."""
    return _start_worker(name, env, _fault_args(env, concurrency, queue), log)


def start_with_standby(name: str, env: dict, logs: Path):
    """A fault-app worker on ``env``'s queue and, started beside it (two processes importing torch on two cores
    start in little more than one's time), a second one on a queue nothing is sent to, for a test that stops
    the first: `take_over` then hands the second the queue. Returns (first, second). The second's settings are
    the first's (its queue's waiting lists, its heartbeat): only what it consumes until then differs."""
    second = _spawn(f"{name}-2", env, _fault_args(env, queue=f"{env['MOODQ_QUEUE']}-standby"), logs / f"{name}-2.log")
    try:
        first = _start_worker(f"{name}-1", env, _fault_args(env), logs / f"{name}-1.log")
        try:
            _wait_ready(second, f"{name}-2", env, logs / f"{name}-2.log")
        except BaseException:
            launch.stop(first)
            raise
    except BaseException:
        launch.stop(second)  # not left running
        raise
    return first, second


def take_over(settings, name: str) -> None:
    """The standby worker of `start_with_standby` takes ``settings``' queue (Celery's add_consumer)."""
    make_app(settings).control.add_consumer(settings.queue, destination=[f"{name}-2-{RUN}@{os.uname().nodename}"],
                                            reply=True)


def send(settings, *rows) -> list[str]:
    """Enqueue rows (dicts) on ``settings``' queue, replacing earlier records; returns their ids."""
    from producer.enqueue import enqueue
    from producer.sources import to_message

    msgs = [to_message(r, 2000) for r in rows]
    enqueue(msgs, settings, make_app(settings), replace=True)
    return [m.id for m in msgs]


def eventually(check, timeout: float = 60, interval: float = 0.2, what: str = "the condition"):
    """Poll ``check()`` until it returns something truthy (returned), or fail after ``timeout`` seconds."""
    import time

    deadline = time.monotonic() + timeout
    while not (result := check()):
        assert time.monotonic() < deadline, f"{what} did not happen within {timeout:g} s"
        time.sleep(interval)
    return result


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def assert_one_final_record_each(store, ids: list[str]) -> None:
    """Every id has a record, in exactly one status set, and that status is final."""
    from worker.common.keys import STATUSES
    from worker.common.schemas import FINAL

    for mid in ids:
        rec = store.get(mid)
        assert rec is not None, f"{mid} lost"
        sets = [s for s in STATUSES if store.r.sismember(store.k.status(s), mid)]
        assert sets == [rec.status] and rec.status in FINAL, (mid, sets, rec.status)


def wait_final(store, ids, timeout=300):
    from producer.progress import wait_for

    records = wait_for(store, list(ids), timeout)
    assert len(records) == len(ids), "a record went missing"
    return {r.id: r for r in records}
