"""The ``moodq`` command. Every subcommand is listed in COMMANDS below, grouped by who runs it.

Every option can also come from the environment: ``MOODQ_<COMMAND>_<OPTION>`` for command
options, and the settings' ``MOODQ_*`` variables for everything else (``moodq --help`` lists them).
Dependencies point one way: producer -> worker -> prompts (data); worker never imports producer.
"""

from __future__ import annotations

import click

from producer.clitools import Group, settings_help
from producer.commands import feed, results
from worker.cli import operate as workers
from worker.cli import trial

COMMANDS = [
    # putting work in, taking it out
    feed.enqueue, feed.follow, feed.retry_failed, feed.sweep, feed.purge,
    # reading results
    results.watch, results.export, results.failed, results.stats, results.report,
    # running and watching workers
    workers.worker, workers.check, workers.workers, workers.probe, workers.cache, workers.flower, workers.evaluate,
    # trying it out
    trial.ask, trial.demo,
]


@click.group(cls=Group, epilog=settings_help(),
             context_settings={"auto_envvar_prefix": "MOODQ", "help_option_names": ["-h", "--help"],
                               "max_content_width": 120})
def main():
    """Label message sentiment and draft replies with one small language model, via Redis + Celery."""


for command in COMMANDS:
    main.add_command(command)
