"""What every ``moodq`` command shares: the option style, the error handling, the settings help,
and reaching Redis with a word to the user instead of silence."""

from __future__ import annotations

import functools
import sys
import time

import click
import kombu.exceptions
import redis
from kombu.utils.url import maybe_sanitize_url

from worker.common.errors import MoodqError
from worker.common.settings import Settings, get_settings

option = functools.partial(click.option, show_envvar=True, show_default=True)


def settings_help() -> str:
    """Every MOODQ_* setting with its default, for the top-level --help."""
    lines = ["\b", "Settings (environment variables; the README's configuration table says more):"]
    for name, field in Settings.model_fields.items():
        default = field.get_default(call_default_factory=True)
        lines.append(f"  MOODQ_{name.upper():<26} {default!s:.40}")
    return "\n".join(lines)


def reach(settings: Settings | None = None, wait_s: float | None = None):
    """A Store whose Redis answers; says at once when it does not, retries for ``wait_s`` (default
    ``MOODQ_REDIS_WAIT_S``), then fails."""
    from worker.common.store import Store

    s = settings or get_settings()
    wait_s = s.redis_wait_s if wait_s is None else wait_s
    probe = redis.Redis.from_url(s.redis_url, socket_connect_timeout=2, socket_timeout=2)
    deadline = time.monotonic() + wait_s
    said = False
    while True:
        try:
            probe.ping()
            break
        except (redis.ConnectionError, redis.TimeoutError):
            if time.monotonic() > deadline:
                raise
            if not said:
                click.echo(f"connecting to Redis at {maybe_sanitize_url(s.redis_url)} (retrying for up to {wait_s:g} s) ...",
                           err=True)
                said = True
            time.sleep(1)
        finally:
            probe.close()
    return Store(s)


class Group(click.Group):
    """Lists commands in the order they were added; turns expected failures into one line on stderr
    and exit code 2, no traceback."""

    def list_commands(self, ctx):
        return list(self.commands)

    def invoke(self, ctx):
        try:
            return super().invoke(ctx)
        except (redis.ConnectionError, redis.TimeoutError, kombu.exceptions.OperationalError) as exc:
            click.echo(f"error: cannot reach Redis at {maybe_sanitize_url(get_settings().redis_url)} ({exc}). "
                       "Start it (redis-server) or set MOODQ_REDIS_URL.", err=True)
            sys.exit(2)
        except MoodqError as exc:
            click.echo(f"error: {exc}", err=True)
            sys.exit(2)


def quiet() -> bool:
    """No progress bars when stderr is not a terminal (logs, pipes, CI)."""
    return not sys.stderr.isatty()
