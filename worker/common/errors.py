"""The errors moodq raises on purpose. Each one carries a message a person can read."""


class MoodqError(Exception):
    """Base class: an expected failure with a readable message."""


class ConfigError(MoodqError):
    """Settings or prompt files are invalid; raised at start, never mid-run."""


class ModelError(MoodqError):
    """The configured model cannot be found, verified or loaded."""


class BadMessage(MoodqError):
    """The message itself is unusable (empty, too long, wrong type). Never retried."""


class Transient(MoodqError):
    """A failure worth retrying (time-out, lost connection)."""


class GenerationTimeout(Transient):
    """Generation hit its deadline before producing anything usable."""


class GaveUp(MoodqError):
    """A message was redelivered too often after its worker died on it. Never retried."""


def readable(exc, prefix: str = "", root: str = "row") -> list[str]:
    """A pydantic ValidationError as one line per error: ``<prefix><field.path>: <message>``."""
    return [f"{prefix}{'.'.join(map(str, e['loc'])) or root}: {e['msg'].removeprefix('Value error, ')}"
            for e in exc.errors()]
