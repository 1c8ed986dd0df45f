"""Read a GGUF file's metadata once per model load, not once per transformers call.

Converting a GGUF, transformers opens it four times: for the config, the tokenizer, and twice for the
weights (their config, then their tensors). Each opening parses every metadata field in Python, and the
0.5B's 151k-token vocabulary and its merges made that ~10 s on a 2-core AVX512-BF16 EPYC (2026-12-07), 40 of
a first start's 81 s. Inside :func:`shared`, every opening of the same file gets the reader made the first
time. The reader only maps the file and reads from it, so sharing it changes no value; outside the block it
is dropped, with its parsed fields.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator
from pathlib import Path

_lock = threading.Lock()
_readers: dict[Path, object] = {}  # while any block is open
_open_blocks = 0
_original = None  # gguf.GGUFReader itself, once a block has opened


def _reader(path, *args, **kwargs):
    if args or kwargs or not _open_blocks:  # an option transformers does not use, or a call after every block closed
        return _original(path, *args, **kwargs)
    key = Path(path).resolve()
    with _lock:  # held while a first reader parses: a second thread waits for it rather than parse again
        if key not in _readers:
            _readers[key] = _original(path)
        return _readers[key]


@contextlib.contextmanager
def shared() -> Iterator[dict[Path, object]]:
    """Within the block, ``gguf.GGUFReader(path)`` (as transformers calls it, from any thread of the process)
    returns one reader per file. Yields the readers made so far, by resolved path. Blocks may nest or overlap
    across threads; the last to close restores ``gguf.GGUFReader`` and drops the readers."""
    global _open_blocks, _original
    import gguf

    with _lock:
        if _open_blocks == 0:
            _original, gguf.GGUFReader = gguf.GGUFReader, _reader
        _open_blocks += 1
    try:
        yield _readers
    finally:
        with _lock:
            _open_blocks -= 1
            if _open_blocks == 0:
                gguf.GGUFReader = _original
                _readers.clear()
