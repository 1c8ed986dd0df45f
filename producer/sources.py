"""Read messages from JSONL, CSV or plain text lines; bad lines are reported, good ones kept."""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO

from pydantic import ValidationError

from worker.schemas import Message

KNOWN = {"id", "text", "conversation_id", "lang", "metadata"}


@dataclass
class LineError:
    source: str
    line: int
    reason: str

    def __str__(self) -> str:
        return f"{self.source}:{self.line}: {self.reason}"


def to_message(row: dict, max_chars: int) -> Message:
    """Validate one input row; unknown fields go to metadata unchanged."""
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
    return msg


def _reason(exc: Exception) -> str:
    if isinstance(exc, ValidationError):
        return "; ".join(f"{'.'.join(map(str, e['loc'])) or 'row'}: {e['msg'].removeprefix('Value error, ')}"
                         for e in exc.errors())
    return str(exc)


def detect_format(name: str, fmt: str) -> str:
    if fmt != "auto":
        return fmt
    suffix = Path(name).suffix.lower()
    return {".jsonl": "jsonl", ".ndjson": "jsonl", ".json": "jsonl", ".csv": "csv"}.get(suffix, "text")


def read(stream: IO[str], name: str, fmt: str, max_chars: int) -> Iterator[Message | LineError]:
    """Yield a Message or a LineError for every input line (line numbers are 1-based)."""
    fmt = detect_format(name, fmt)
    if fmt == "csv":
        rows = csv.DictReader(stream)
        for row in rows:
            line = rows.line_num
            if None in row:
                yield LineError(name, line, "more columns than the header")
                continue
            yield validated(row, name, line, max_chars)
        return
    for line, raw in enumerate(stream, start=1):
        raw = raw.rstrip("\r\n")
        if not raw.strip():
            continue
        if fmt == "text":
            yield validated({"text": raw}, name, line, max_chars)
            continue
        try:
            row = json.loads(raw)
        except json.JSONDecodeError as exc:
            yield LineError(name, line, f"invalid JSON: {exc.msg} at column {exc.colno}")
            continue
        yield validated(row, name, line, max_chars)


def validated(row, name: str, line: int, max_chars: int) -> Message | LineError:
    try:
        return to_message(row, max_chars)
    except (ValidationError, ValueError) as exc:
        return LineError(name, line, _reason(exc))


def open_text(path: str) -> IO[str]:
    if path == "-":
        import sys

        return io.TextIOWrapper(sys.stdin.buffer, encoding="utf-8", errors="replace")
    return open(path, encoding="utf-8", errors="replace", newline="")
