"""Read messages from JSONL, CSV or plain text lines; bad lines are reported, good ones kept."""

from __future__ import annotations

import csv
import io
import itertools
import json
from collections.abc import Collection, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO

from pydantic import ValidationError

from worker.common.errors import readable
from worker.common.schemas import Message

KNOWN = {"id", "text", "conversation_id", "lang", "metadata"}


@dataclass
class LineError:
    source: str
    line: int
    reason: str

    def __str__(self) -> str:
        return f"{self.source}:{self.line}: {self.reason}"


def to_message(row: dict, max_chars: int, languages: Collection[str] | None = None) -> Message:
    """Validate one input row; unknown fields go to metadata unchanged.

    With ``languages`` (the prompt file's), a ``lang`` the workers have no prompts for is refused
    here, at enqueue, rather than failed later by the worker."""
    if not isinstance(row, dict):
        raise ValueError(f"expected an object, got {type(row).__name__}")
    fields = {k: v for k, v in row.items() if k in KNOWN and v not in (None, "") or k == "text"}
    extra = {k: v for k, v in row.items() if k not in KNOWN}
    if extra:
        meta = fields.get("metadata") or {}
        if not isinstance(meta, dict):
            raise ValueError("metadata must be an object")
        fields["metadata"] = {**meta, **extra}
    msg = Message.model_validate(fields)
    if len(msg.text) > max_chars:
        raise ValueError(f"text is {len(msg.text)} characters, over the limit of {max_chars} (MOODQ_MAX_CHARS)")
    if languages is not None and msg.lang and msg.lang not in languages:
        raise ValueError(f"lang: no prompts for {msg.lang!r} (the prompt file has {', '.join(sorted(languages))}; "
                         "leave lang out to detect it)")
    return msg


def _reason(exc: Exception) -> str:
    if isinstance(exc, ValidationError):
        return "; ".join(readable(exc))
    return str(exc)


SUFFIXES = {".jsonl": "jsonl", ".ndjson": "jsonl", ".json": "jsonl", ".csv": "csv", ".tsv": "tsv"}


def detect_format(name: str, fmt: str, first_line: str = "") -> str:
    """The format to read: as given, else by suffix; stdin (and an unknown suffix) is JSONL when its
    first line is a JSON object, text otherwise."""
    if fmt != "auto":
        return fmt
    if found := SUFFIXES.get(Path(name).suffix.lower()):
        return found
    try:
        return "jsonl" if isinstance(json.loads(first_line), dict) else "text"
    except ValueError:
        return "text"


def read(stream: IO[str], name: str, fmt: str, max_chars: int,
         languages: Collection[str] | None = None) -> Iterator[Message | LineError]:
    """Yield a Message or a LineError for every input line (line numbers are 1-based)."""
    first = stream.readline()
    stream = itertools.chain([first], stream)
    fmt = detect_format(name, fmt, first)
    if fmt in ("csv", "tsv"):
        rows = csv.DictReader(stream, delimiter="\t" if fmt == "tsv" else ",")
        for row in rows:
            line = rows.line_num
            if None in row:
                yield LineError(name, line, "more columns than the header")
                continue
            yield validated(row, name, line, max_chars, languages)
        return
    for line, raw in enumerate(stream, start=1):
        raw = raw.rstrip("\r\n")
        if not raw.strip():
            continue
        if fmt == "text":
            yield validated({"text": raw}, name, line, max_chars, languages)
            continue
        try:
            row = json.loads(raw)
        except json.JSONDecodeError as exc:
            yield LineError(name, line, f"invalid JSON: {exc.msg} at column {exc.colno}")
            continue
        yield validated(row, name, line, max_chars, languages)


def validated(row, name: str, line: int, max_chars: int, languages: Collection[str] | None = None) -> Message | LineError:
    try:
        return to_message(row, max_chars, languages)
    except (ValidationError, ValueError) as exc:
        return LineError(name, line, _reason(exc))


def open_text(path: str) -> IO[str]:
    """A file or stdin as UTF-8 text; a byte-order mark (Excel's "CSV UTF-8") is dropped."""
    if path == "-":
        import sys

        return io.TextIOWrapper(sys.stdin.buffer, encoding="utf-8-sig", errors="replace", newline="")
    return open(path, encoding="utf-8-sig", errors="replace", newline="")
