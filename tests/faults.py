"""TEST-ONLY fault injection for a real worker: the Celery app of worker.tasks, with the
model's ``judge`` wrapped so that marked messages fail on purpose.

  "[transient:N] ..."  raises a Transient error on its first N attempts, then works
  "[slow] ..."         sleeps past the soft time limit on every attempt
  "[hold:S] ..."       notes its process id in Redis (key fault:holding:<text>), then sleeps S seconds
  "[crash] ..."        SIGKILLs its own process (the one holding the model) on every attempt

Everything else (retries, limits, records) is the production code path.
"""

from __future__ import annotations

import os
import re
import signal
import time

from worker import model, tasks
from worker.app import app  # noqa: F401  (celery -A tests.faults)
from worker.errors import Transient

_real_judge = model.Engine.judge


def _judge(self, texts, lang, *args, **kwargs):
    for text in texts:
        if m := re.match(r"\[transient:(\d+)\]", text):
            tries = tasks.store().r.incr(tasks.s.keys.test("fault", text))
            if tries <= int(m.group(1)):
                raise Transient(f"injected transient fault {tries}/{m.group(1)}")
        if text.startswith("[slow]"):
            time.sleep(60)
        if m := re.match(r"\[hold:(\d+(?:\.\d+)?)\]", text):
            tasks.store().r.set(tasks.s.keys.test("fault", "holding", text), os.getpid(), ex=600)
            time.sleep(float(m.group(1)))
        if text.startswith("[crash]"):
            os.kill(os.getpid(), signal.SIGKILL)
    return _real_judge(self, texts, lang, *args, **kwargs)


model.Engine.judge = _judge
