"""Start and stop worker processes from Python: used by `moodq demo`, the tests and the bench scripts."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

from worker.common.settings import load_settings
from worker.jobs.app import make_app


def start(args: list[str], env: dict[str, str], log_path: Path | str, hostname: str, *,
          timeout: float = 900, ready_text: str | None = None,
          progress: Callable[[str], None] | None = None) -> subprocess.Popen:
    """Start ``args --hostname hostname`` with extra ``MOODQ_*`` env; wait until it answers a ping
    (and, with ``ready_text``, until its log shows that text, e.g. the model's "ready" line); see :func:`wait_ready`."""
    proc = spawn(args, env, log_path, hostname)
    try:
        wait_ready(proc, env, log_path, hostname, timeout=timeout, ready_text=ready_text, progress=progress)
    except BaseException:  # Ctrl-C, or ``progress`` failing (a closed pipe): no worker left behind, holding a lock
        stop(proc, grace=10)
        _kill_group(proc)
        raise
    return proc


def spawn(args: list[str], env: dict[str, str], log_path: Path | str, hostname: str) -> subprocess.Popen:
    """Start ``args --hostname hostname`` with extra ``MOODQ_*`` env, its output to ``log_path``; no wait."""
    with Path(log_path).open("w") as log:
        return subprocess.Popen([*args, "--hostname", hostname], env={**os.environ, **env}, stdout=log,
                                stderr=subprocess.STDOUT, start_new_session=True)


def wait_ready(proc: subprocess.Popen, env: dict[str, str], log_path: Path | str, hostname: str, *,
               timeout: float = 900, ready_text: str | None = None,
               progress: Callable[[str], None] | None = None) -> None:
    """Wait until a worker ``spawn`` started answers a ping (and its log shows ``ready_text``); stopped and
    an error raised if it exits first or is not ready within ``timeout`` seconds. ``progress`` is given each
    whole line of the log as it is written, once, in order."""
    log_path = Path(log_path)
    app = make_app(load_settings(**{k[6:].lower(): v for k, v in env.items() if k.startswith("MOODQ_")}))
    node = hostname.replace("%h", os.uname().nodename)
    deadline, shown = time.monotonic() + timeout, 0
    while time.monotonic() < deadline:
        exited = proc.poll() is not None  # before the log is read: every line it wrote is in this read
        text = log_path.read_text(errors="replace")
        if progress is not None and (end := text.rfind("\n") + 1) > shown:
            for line in text[shown:end - 1].split("\n"):
                progress(line)
            shown = end
        if exited:
            _kill_group(proc)  # a pool process its main process left behind
            raise RuntimeError(f"worker exited early:\n{text[-3000:]}")
        # The log is read first (cheap); the ping returns at the first reply (limit=1), not after its timeout.
        if (ready_text is None or ready_text in text) and app.control.ping(destination=[node], timeout=1.0, limit=1):
            return
        time.sleep(0.1)
    stop(proc)
    raise RuntimeError(f"worker did not become ready in {timeout:g} s:\n{log_path.read_text(errors='replace')[-3000:]}")


def stop(proc: subprocess.Popen, grace: float = 60, sig: int = signal.SIGTERM) -> None:
    """SIGTERM (warm shutdown: the current task finishes; SIGQUIT: at once, for a worker with nothing left
    to do), then SIGKILL after ``grace`` seconds."""
    if proc.poll() is None:
        os.killpg(proc.pid, sig)
        try:
            proc.wait(grace)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


def stop_idle(proc: subprocess.Popen, grace: float = 30) -> None:
    """Stop a worker with nothing left to do (every message it took is final): SIGQUIT to its main process,
    SIGKILL to its pool processes, which hold nothing to finish (billiard's pool processes sleep 1 s on their
    way out: ~1 s to stop instead of ~2 on an AVX2-only EPYC)."""
    if proc.poll() is None:
        from worker.common.procinfo import children

        pool = children(proc.pid)
        os.kill(proc.pid, signal.SIGQUIT)  # first: the main process must not replace the pool processes
        for pid in pool:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
    stop(proc, grace, signal.SIGQUIT)
    _kill_group(proc)  # a pool process the main one started meanwhile (it had not seen the SIGQUIT yet) goes too


def _kill_group(proc: subprocess.Popen) -> None:
    """SIGKILL whatever is left in the process group of ``proc`` (started with ``start_new_session``)."""
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
