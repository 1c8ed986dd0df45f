"""Per-channel int8 copies of a model's weights, computed once and kept on disk.

Every int8 kernel starts from the same copy of a float weight: int8 values with one float32 scale per output
channel. Computing it reads every float weight. On an AVX2-only EPYC that was ~2 s of a worker's start, and it
paged in 2 GB of float32 that the worker then dropped. So the copies of a model with a weights hash (embedded,
GGUF) are saved the first time (0.5 GB for the 0.5B) and read at later starts. Each kernel still prepares its
own form from them at every start (fbgemm's packing).
"""

from __future__ import annotations

import hashlib
import inspect
import logging
import os
from collections.abc import Callable
from pathlib import Path

import torch

log = logging.getLogger(__name__)


def per_channel_int8(w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """int8 weights (out, in) and their float32 scales, one per output channel."""
    w = w.detach().float()
    scale = w.abs().amax(dim=1).clamp(min=1e-8) / 127
    return torch.round(w / scale[:, None]).to(torch.int8), scale


def file_for(cache_dir: Path, weights: str | None) -> Path | None:
    """Where the int8 copies of these weights live, or None (no weights hash: they are computed every start)."""
    if not weights:
        return None
    from worker.engine import fusing  # which projections are stacked into one weight

    code = inspect.getsource(per_channel_int8) + repr(fusing.FUSE) + torch.__version__
    name = hashlib.sha256(f"{weights}\n{code}".encode()).hexdigest()[:20]
    return Path(cache_dir) / "int8" / f"{name}.safetensors"


class Int8Store:
    """The int8 copy of each named weight: read from ``file`` when it is there, else computed (and saved
    there by :meth:`save`). Safe to call from several threads: each name is asked for once."""

    def __init__(self, file: Path | None = None):
        self.file = file
        self.saved = self._read()
        self.new: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}

    def get(self, name: str, out_in: tuple[int, int], weight: Callable[[], torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        """``name``'s int8 values and scales; ``weight()`` (of shape ``out_in``) is read only if they are not saved."""
        q, scale = self.saved.get(f"{name}.q"), self.saved.get(f"{name}.scale")
        if q is not None and scale is not None and tuple(q.shape) == tuple(out_in) and scale.shape == (out_in[0],):
            return q, scale
        self.new[name] = per_channel_int8(weight())
        return self.new[name]

    def _read(self) -> dict[str, torch.Tensor]:
        if self.file is None or not self.file.is_file():
            return {}
        from safetensors.torch import load_file

        try:
            return load_file(self.file)
        except Exception as exc:  # safetensors raises its own errors on damaged bytes
            log.warning("ignoring the unreadable int8 weights %s (%s); they are computed again", self.file, exc)
            return {}

    def save(self) -> None:
        """Write every copy (saved and new) to ``file``, atomically, if any was computed."""
        if self.file is None or not self.new:
            return
        from safetensors.torch import save_file

        tensors = dict(self.saved)
        for name, (q, scale) in self.new.items():
            tensors[f"{name}.q"], tensors[f"{name}.scale"] = q.contiguous(), scale.contiguous()
        tmp = self.file.with_name(f"{self.file.name}.tmp{os.getpid()}")
        try:
            self.file.parent.mkdir(parents=True, exist_ok=True)
            save_file(tensors, tmp)
            os.replace(tmp, self.file)
        except OSError as exc:
            tmp.unlink(missing_ok=True)
            log.warning("could not save the int8 weights to %s (%s); they are computed again next start", self.file, exc)
