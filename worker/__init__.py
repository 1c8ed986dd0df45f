"""moodq's worker side, in rooms that depend one way (checked by import-linter, see pyproject.toml):

- ``common``  settings, Redis keys, records, errors, the record store, prompt files (no torch, no Celery);
- ``engine``  the resident language model: kernels measured per host, label scoring, reply drafting (no Celery);
- ``quality`` what a drafted reply is worth: the reply rules, substance, checked drafting, eval, the grader;
- ``jobs``    Celery: the app, the two tasks, claims, the resident model per process, upkeep, publishing;
- ``cli``     the ``moodq`` command (its producer-side commands live in the ``producer`` package).
"""
