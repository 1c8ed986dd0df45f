"""BENCH-ONLY: the real Celery app and tasks with the model replaced by a trivial scorer,
to measure what the queue itself costs per message.  celery -A bench.trivial_worker worker
"""

from __future__ import annotations

from worker.common.prompts import load_prompts
from worker.common.settings import get_settings
from worker.engine.model import Draft, Judgement
from worker.jobs import resident, tasks
from worker.jobs.app import app  # noqa: F401


class TrivialEngine:
    model_id = "trivial"

    def __init__(self):
        self.prompts = load_prompts(get_settings().prompts)

    def judge(self, texts, lang, calibrate=True, max_batch=16):
        return [Judgement("positive", 1.0, {"positive": 1.0, "negative": 0.0}, {}) for _ in texts]

    def draft_many(self, items, **_):
        return [Draft("ok", False, 1) for _ in items]


_trivial = TrivialEngine()
resident.engine = tasks.engine = lambda settings=None: _trivial
