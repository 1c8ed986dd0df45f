"""Tensor files a worker keeps beside its model (worker.engine.prefixes, worker.engine.int8store): how they are
named, written and read. They only save time: a file that cannot be written or read costs a warning and the
time to compute its tensors again, never a start or a task."""

from __future__ import annotations

import contextlib
import hashlib
import inspect
import json
import logging
import os
from pathlib import Path
from types import ModuleType

import torch

log = logging.getLogger(__name__)


def key(*parts: object, modules: tuple[ModuleType, ...] = ()) -> str:
    """A short hash of ``parts`` (JSON) and of the source code of ``modules`` (what computes the values)."""
    code = "".join(inspect.getsource(m) for m in modules)
    return hashlib.sha256((json.dumps(parts, sort_keys=True) + code).encode()).hexdigest()[:20]


def save(file: Path, tensors: dict[str, torch.Tensor]) -> None:
    """Write ``tensors`` to ``file`` atomically (a temporary file renamed into place)."""
    from safetensors.torch import save_file

    tmp = file.with_name(f"{file.name}.tmp{os.getpid()}")
    try:
        file.parent.mkdir(parents=True, exist_ok=True)
        save_file({name: t.contiguous() for name, t in tensors.items()}, tmp)
        os.replace(tmp, file)  # another process writing the same file writes the same values
    except Exception as exc:  # OSError, or safetensors' own error for a full disk or a read-only folder
        with contextlib.suppress(OSError):
            tmp.unlink()
        log.warning("could not save %s (%s): it is computed again next start", file, exc)


def read(file: Path) -> dict[str, torch.Tensor] | None:
    """The tensors in ``file``, in memory of their own (read, not mapped), or None if it is missing or damaged."""
    if not file.is_file():
        return None
    from safetensors.torch import load_file

    try:
        return load_file(file, backend="pread")
    except Exception as exc:  # safetensors raises its own errors on damaged bytes
        log.warning("ignoring the unreadable %s (%s): it is computed again", file, exc)
        return None
