"""TEST-ONLY fault injection for a real worker: the Celery app of worker.jobs.tasks, with the
model's ``passes`` (what the sentiment task scores with) wrapped so that marked messages fail on purpose.

  "[transient:N] ..."  raises a Transient error on its first N attempts, then works
  "[slow] ..."         sleeps past the soft time limit on every attempt
  "[hold:S] ..."       notes its process id in Redis (key fault:holding:<text>), then sleeps S seconds
  "[crash] ..."        SIGKILLs its own process (the one holding the model) on every attempt
  "... [as:LABEL] ..."  gets P(LABEL) = 0.99 ("[as:LABEL:P]": P) and the likelier label, whatever the model
                       scored (for tests on the small random-weight model whose subject is what follows a label)
  "[draft-hold:S] ..."  when its reply starts drafting: notes its process id (key fault:drafting:<text>), sleeps S
  "[draft-slow:S] ..."  every decode step of a batch drafting its reply sleeps S seconds (a slow host)
  "[draft-count] ..."  each process that starts drafting its reply adds its id to fault:drafted-by:<text>

Everything else (retries, limits, records) is the production code path.
"""

from __future__ import annotations

import os
import re
import signal
import time
from dataclasses import replace

from worker.common.errors import Transient
from worker.engine import frozen_imports

with frozen_imports():  # as `moodq worker` imports them (worker/cli/operate.py)
    from worker.engine import drafting, model
    from worker.jobs import tasks
from worker.jobs.app import app  # noqa: F401  (celery -A tests.faults)

_real_passes = model.Engine.passes


def _passes(self, texts, lang, *args, **kwargs):
    for text in texts:
        if m := re.match(r"\[transient:(\d+)\]", text):
            tries = tasks.store().r.incr(tasks.s.keys.test("fault", text))
            if tries <= int(m.group(1)):
                raise Transient(f"injected transient fault {tries}/{m.group(1)}")
        if text.startswith("[slow]"):
            time.sleep(tasks.s.sentiment_hard_limit + 60)  # the soft limit interrupts it
        if m := re.match(r"\[hold:(\d+(?:\.\d+)?)\]", text):
            tasks.store().r.set(tasks.s.keys.test("fault", "holding", text), os.getpid(), ex=600)
            time.sleep(float(m.group(1)))
        if text.startswith("[crash]"):
            os.kill(os.getpid(), signal.SIGKILL)
    passes = _real_passes(self, texts, lang, *args, **kwargs)
    return ((bucket, [_forced(texts[i], j) for i, j in zip(bucket, judgements)]) for bucket, judgements in passes)


def _forced(text: str, judgement):
    if not (m := re.search(r"\[as:(\w+)(?::([\d.]+))?\]", text)):
        return judgement
    p = float(m.group(2) or 0.99)
    probs = {label: p if label == m.group(1) else (1 - p) / (len(judgement.probs) - 1) for label in judgement.probs}
    best = max(probs, key=probs.get)
    return replace(judgement, label=best, confidence=probs[best], probs=probs)


model.Engine.passes = _passes

_real_stream = drafting.Drafter.stream


class _Held:
    """The drafter's items, holding on a marked one; like the items it wraps, it may run dry and go on later."""

    def __init__(self, items):
        self.items = iter(items)

    def __iter__(self):
        return self

    def __next__(self):
        item = next(self.items)
        if item.text.startswith("[draft-count]"):
            tasks.store().r.sadd(tasks.s.keys.test("fault", "drafted-by", item.text), os.getpid())
        if m := re.match(r"\[draft-hold:(\d+(?:\.\d+)?)\]", item.text):
            tasks.store().r.set(tasks.s.keys.test("fault", "drafting", item.text), os.getpid(), ex=600)
            time.sleep(float(m.group(1)))
        return item


def _stream(self, items, **options):
    return _real_stream(self, _Held(items), **options)


_real_step = drafting.Drafter._step


def _step(self, batch, choose):
    for row in batch.rows:
        if not hasattr(row, "slow"):  # read once per row, from its prompt
            m = re.search(r"\[draft-slow:(\d+(?:\.\d+)?)\]", self.chat.tok.decode(row.tokens[:row.start]))
            row.slow = float(m.group(1)) if m else 0.0
    time.sleep(max((row.slow for row in batch.rows), default=0.0))
    return _real_step(self, batch, choose)


drafting.Drafter.stream = _stream
drafting.Drafter._step = _step
