"""Per-channel int8 copies of a model's weights, computed once and kept on disk.

Every int8 kernel starts from the same copy of a float weight: int8 values with one float32 scale per output
channel. Computing it reads every float weight. On an AVX2-only EPYC that was ~2 s of a worker's start, and it
paged in 2 GB of float32 that the worker then dropped. So the copies of a model with a weights hash (embedded,
GGUF) are saved the first time (0.5 GB for the 0.5B) and read at later starts. Each kernel still prepares its
own form from them at every start (fbgemm's and oneDNN's packing).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import torch

from worker.engine import fusing, ondisk

CHUNK_ROWS = 20_000  # rows quantised at a time: an output head's float temporaries stay ~70 MB, not 2 GB


def per_channel_int8(w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """int8 weights (out, in) and their float32 scales, one per output channel (rows are independent)."""
    qs, scales = [], []
    for rows in w.detach().split(CHUNK_ROWS):
        rows = rows.float()
        scale = rows.abs().amax(dim=1).clamp(min=1e-8) / 127
        qs.append(torch.round(rows / scale[:, None]).to(torch.int8))
        scales.append(scale)
    return (qs[0], scales[0]) if len(qs) == 1 else (torch.cat(qs), torch.cat(scales))


def file_for(cache_dir: Path, weights: str | None, dtype: str) -> Path | None:
    """Where the int8 copies of these weights, loaded in ``dtype``, live; None without a weights hash (a model
    directory or hub id, which can change in place: their copies are computed at every start)."""
    if not weights:
        return None
    import sys

    name = ondisk.key(weights, dtype, torch.__version__, modules=(sys.modules[__name__], fusing))
    return Path(cache_dir) / "int8" / f"{name}.safetensors"


class Int8Store:
    """The int8 copy of each named weight: read from ``file`` when it is there, else computed (and kept for
    :meth:`save` when there is a file). Safe to call from several threads: each name is asked for once."""

    def __init__(self, file: Path | None = None):
        self.file = file
        self.saved = (ondisk.read(file) if file is not None else None) or {}
        self.new: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
        self.computed = 0

    def get(self, name: str, out_in: tuple[int, int], weight: Callable[[], torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        """``name``'s int8 values and scales; ``weight()`` (of shape ``out_in``) is read only if they are not saved."""
        q, scale = self.saved.get(f"{name}.q"), self.saved.get(f"{name}.scale")
        if q is not None and scale is not None and tuple(q.shape) == tuple(out_in) and tuple(scale.shape) == (out_in[0],):
            return q, scale
        copy = per_channel_int8(weight())
        self.computed += 1
        if self.file is not None:
            self.new[name] = copy
        return copy

    def save(self) -> None:
        """Write every copy (saved and new) to ``file`` if any was computed; then hold none of them."""
        if self.file is not None and self.new:
            tensors = dict(self.saved)
            for name, (q, scale) in self.new.items():
                tensors[f"{name}.q"], tensors[f"{name}.scale"] = q, scale
            ondisk.save(self.file, tensors)
        self.saved, self.new = {}, {}
