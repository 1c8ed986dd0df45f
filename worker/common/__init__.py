"""What every side of moodq shares: settings, Redis keys, records, errors, the record store and prompt files.
Light on purpose: no torch, no transformers, no Celery, so a producer imports it in a blink."""
