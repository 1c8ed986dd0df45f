"""The one resident model of a worker process: loaded once, at process start.

With the prefork pool, each child process loads the model in ``worker_process_init``
(Celery's ``worker_proc_alive_timeout`` is raised to ``model_load_timeout`` for this), so
the first task does not pay the load inside its time limit. Other pools, and code that
calls :func:`engine` directly, load on first use.
"""

from __future__ import annotations

import gc
import logging
import os
import threading

from celery.signals import celeryd_after_setup, worker_process_init
from celery.worker.control import inspect_command

from worker.common.errors import ModelError
from worker.common.settings import Settings, get_settings

log = logging.getLogger(__name__)
_lock = threading.Lock()
_engine = None
_load_error: str | None = None
_pool_size = 1  # processes of this worker, set in the main process before the pool forks
_node: str | None = None  # this worker's node name, likewise


def engine(settings: Settings | None = None):
    """The process's Engine, loading it on first call."""
    global _engine, _load_error
    if _engine is None:
        with _lock:
            if _engine is None:
                from worker.common.prompts import load_prompts
                from worker.engine.loading import load
                from worker.engine.model import Engine

                s = settings or get_settings()
                try:
                    loaded = load(s)
                    _engine = Engine(loaded, load_prompts(s.prompts), max_text_tokens=s.sentiment_max_tokens)
                except Exception as exc:
                    _load_error = str(exc)
                    raise ModelError(f"model could not be loaded in this worker process: {exc}") from exc
                log.info("model %s ready in %.1f s (%s start, pid %s, %d threads, path %s; kernel probe %s)",
                         loaded.model_id, loaded.seconds, "warm" if loaded.warm else "cold", os.getpid(), _threads(),
                         _engine.path, loaded.plan.source if loaded.plan else "-")
                _warn_if_a_reply_cannot_fit(_engine, s)
    return _engine


def _warn_if_a_reply_cannot_fit(eng, s: Settings) -> None:
    """A host too slow for one full-length reply inside the deadline is told so once, with what to change."""
    deadline, need = s.draft_options()["deadline_s"], eng.pace.reply_seconds(s.max_reply_tokens, 1)
    if need > deadline:
        log.warning("at this host's speed a %d-token reply takes ~%.0f s, more than the reply deadline (%.0f s, "
                    "80 %% of MOODQ_REPLY_SOFT_LIMIT): raise MOODQ_REPLY_SOFT_LIMIT and MOODQ_REPLY_HARD_LIMIT, or "
                    "lower MOODQ_MAX_REPLY_TOKENS", s.max_reply_tokens, need, deadline)


def _threads() -> int:
    import torch

    return torch.get_num_threads()


@celeryd_after_setup.connect
def _note_pool_size(sender=None, instance=None, **_):
    """The pool size given on the command line (-c), which app.conf does not carry."""
    global _pool_size, _node
    _pool_size = int(getattr(instance, "concurrency", 0) or 1)
    _node = sender
    # Everything imported so far (torch, transformers: millions of objects) lives as long as the process:
    # out of the collector's sight, a stop no longer spends ~1.5 s collecting it at exit, and the forked
    # pool processes do not touch (and so copy) those pages when they collect (Python's gc docs, gc.freeze).
    gc.freeze()
    from worker.engine import cpu

    s = get_settings()
    log.info("%s; each process measures (or reads its cached measure of) the kernels it runs fastest "
             "(MOODQ_DTYPE=%s, MOODQ_QUANT=%s)", cpu.describe(), s.dtype, s.quant)


@worker_process_init.connect
def _load_at_process_start(**_):
    s = get_settings()
    if not s.threads:
        import torch

        torch.set_num_threads(threads_per_process(_pool_size, s))
    from worker.jobs.upkeep import report_model

    try:
        eng = engine(s)
    except ModelError as exc:  # stop the worker: its messages wait for one that can run them
        log.critical("%s", exc)
        report_model(_node, False, str(exc))
        return
    report_model(_node, True, path=eng.path)


def threads_per_process(concurrency: int, settings: Settings) -> int:
    return settings.threads or max(1, (os.cpu_count() or 1) // max(1, concurrency))


@inspect_command()
def moodq(state):
    """What this worker runs: `celery inspect moodq`, `moodq workers`."""
    from worker.common.prompts import load_prompts
    from worker.engine import cpu
    from worker.jobs.upkeep import path_of

    s = get_settings()
    concurrency = state.consumer.controller.concurrency
    return {"model": s.model, "cpu": cpu.cpu_class(), "path": path_of(s, state.consumer.hostname),
            "prompt_version": load_prompts(s.prompts).version,
            "queue": s.queue, "concurrency": concurrency, "threads_per_process": threads_per_process(concurrency, s),
            "sentiment_batch_size": s.sentiment_batch_size, "claim_size": s.claim_size, "sentiment_max_tokens": "by path" if s.sentiment_max_tokens is None else s.sentiment_max_tokens,
            "reply_batch_size": s.reply_batch_size, "reply_labels": s.reply_labels if s.reply_labels == "all" else ",".join(sorted(s.reply_labels)) or "none",
            "triage_label": s.triage_label, "pid": os.getpid()}
