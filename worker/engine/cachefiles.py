"""What ``MOODQ_CACHE_DIR`` holds, which of it a worker with the current settings reads, and pruning the rest.

A worker keeps five kinds of entry there: the assembled GGUF, its converted weights (``converted/``, one
folder per dtype), their int8 copies (``int8/``, 0.5 GB for the 0.5B), the prompts' prefix KV caches
(``prefixes/``) and the kernel probe's tables (``probe/``). Each is keyed by what its values depend on
(weights, dtype, torch's version, the host, moodq's kernel code), so after an upgrade or a change of model
the old entries are never read again. A worker's start stamps the entries it read (their modification
time), so an entry's age says when any worker on this host last used it; ``moodq cache`` lists them and
``moodq cache --prune`` removes the ones the current settings do not use and no worker has used lately.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
import shutil
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger(__name__)
KINDS = ("converted", "int8", "prefixes", "probe")  # the folders; the GGUFs sit at the top level


@dataclass(frozen=True)
class Entry:
    path: Path
    kind: str
    size: int  # bytes, every file under it
    used: float  # when a worker last wrote or stamped it (seconds since the epoch)
    in_use: bool  # read by a worker with the current settings on this host


def stamp(paths: Iterable[Path | None]) -> None:
    """Mark ``paths`` as used now (a worker's start, for each entry it read); missing ones are skipped."""
    for path in paths:
        with contextlib.suppress(OSError, TypeError):
            os.utime(path)


def save_json(file: Path, data) -> None:
    """Write ``data`` as JSON in one step: a reader sees the old file or the new one, never half of it."""
    tmp = file.with_suffix(f".tmp{os.getpid()}")
    tmp.write_text(json.dumps(data, indent=1))
    os.replace(tmp, file)


def lock_file(entry: Path) -> Path:
    return entry.with_name(entry.name + ".lock")


@contextlib.contextmanager
def only_one(entry: Path) -> Iterator[None]:
    """Hold ``entry``'s lock (:func:`lock_file`) while it is made: a second process on this host (another pool
    process, another container on the same cache volume) waits for the first one's entry instead of making it
    beside it. The lock goes when the block ends or the process dies. Where the lock file cannot be opened (a
    folder this user cannot write), the block runs unlocked, with a warning: entries are written atomically, so
    two processes making one only cost time."""
    try:
        entry.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(lock_file(entry), os.O_RDWR | os.O_CREAT, 0o666)
    except OSError as exc:
        log.warning("cannot lock %s (%s): another process may make it at the same time", entry, exc)
        fd = None
    if fd is None:
        yield
        return
    with open(fd) as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        yield


def entries(cache_dir: Path, in_use: Iterable[Path] = ()) -> list[Entry]:
    """Every entry in ``cache_dir``, oldest first; an entry and its lock file (:func:`only_one`) are one."""
    cache_dir, used = Path(cache_dir), {Path(p).resolve() for p in in_use}
    found = [p for p in cache_dir.glob("*.gguf*") if p.is_file() and not p.name.endswith(".lock")]
    for kind in KINDS:
        found += [p for p in sorted((cache_dir / kind).glob("*")) if not p.name.endswith(".lock")]
    out = []
    for p in found:
        with contextlib.suppress(OSError):  # renamed or removed meanwhile (a temporary file, another prune)
            out.append(Entry(p, _kind(p, cache_dir), _size(p), _used(p), p.resolve() in used))
    return sorted(out, key=lambda e: e.used)


def stale(found: Iterable[Entry], unused_days: float, now: float | None = None) -> list[Entry]:
    """The entries to prune: not in use by the current settings, and unused for ``unused_days``."""
    cutoff = (now if now is not None else time.time()) - unused_days * 86400
    return [e for e in found if not e.in_use and e.used <= cutoff]


def remove(entry: Entry) -> None:
    if entry.path.is_dir() and not entry.path.is_symlink():
        shutil.rmtree(entry.path, ignore_errors=True)
    else:
        with contextlib.suppress(FileNotFoundError):
            entry.path.unlink()
    with contextlib.suppress(FileNotFoundError):
        lock_file(entry.path).unlink()


def _kind(path: Path, cache_dir: Path) -> str:
    return path.parent.name if path.parent != cache_dir else "gguf"


def _size(path: Path) -> int:
    files = [path] if path.is_file() else [p for p in path.rglob("*") if p.is_file()]
    return sum(p.stat().st_size for p in files)


def _used(path: Path) -> float:
    """The latest modification time of ``path`` or (a folder) anything in it."""
    times = [path.stat().st_mtime] + ([p.stat().st_mtime for p in path.rglob("*")] if path.is_dir() else [])
    return max(times)
