"""Celery: the app and its configuration, the sentiment and reply tasks, which waiting messages a task
takes on, the model each worker process holds, upkeep (heartbeat, sweep, prune), publishing, and
starting worker processes."""
