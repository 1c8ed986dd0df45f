"""KV caches of the fixed prompt prefixes: each language's sentiment frame and each reply system prompt.

Each is computed once per process and shared by every pass that starts with it. On a real AVX2-only EPYC
one took 0.9-1.4 s: a worker's start paid ~1.7 s for the sentiment frames, and its first replies ~3 s for
their system prompts. So they are also kept on disk, and later starts read them in milliseconds.

A file holds one prefix (its token ids: a changed prompt is another file) in one phase (scoring runs float
layers at each end where drafting runs int8). Its folder is keyed by the rest the values depend on: the
weights' hash, the path the probe chose (dtype and kernels), the host as the probe keys it (CPU, flags, torch,
threads, ISA caps), transformers, and the source of moodq's kernels and int8 copies. A model without a
weights hash (a directory or hub id, which can change in place) keeps its prefixes in memory only.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import torch
from transformers import DynamicCache, PreTrainedModel

from worker.engine import fusing, kernels, kvcache, ondisk

VERSION = 2  # 2: a first start once saved prefixes computed by the conversion's model (rotary inv_freq in bfloat16)


def folder_for(cache_dir: Path, weights: str | None, path: str) -> Path | None:
    """Where the prefixes of these weights on this path and host live, or None (no weights hash)."""
    if not weights:
        return None
    import transformers

    from worker.engine import gemms, int8store, probe

    name = ondisk.key(VERSION, weights, path, probe.host(), transformers.__version__,
                      modules=(kernels, gemms, fusing, int8store))
    return Path(cache_dir) / "prefixes" / name


class Prefixes:
    """The KV cache of each prefix a process has needed, per phase; read from ``folder`` or computed (and
    saved there). A cache handed out is shared: copy it before a forward pass extends it."""

    def __init__(self, model: PreTrainedModel, folder: Path | None = None):
        self.model = model
        # Only plain full-attention caches are saved: sliding-window or recurrent layers are rebuilt otherwise.
        self.folder = folder if folder is not None and kvcache.rows_can_join(model) else None
        self.held: dict[tuple[tuple[int, ...], str], DynamicCache] = {}
        self.computed = 0  # prefixes this process ran through the model (the rest were read from disk)

    def get(self, ids: Sequence[int]) -> DynamicCache:
        key = (tuple(ids), kernels.phase())
        if key not in self.held:
            self.held[key] = self._read(*key) or self._compute(*key)
        return self.held[key]

    def _file(self, ids: tuple[int, ...], phase: str) -> Path:
        return self.folder / f"{ondisk.key(phase, ids)}.safetensors"

    def _compute(self, ids: tuple[int, ...], phase: str) -> DynamicCache:
        with torch.inference_mode():
            out = self.model(input_ids=torch.tensor([ids]), use_cache=True, logits_to_keep=1)
        cache = kvcache.returned(out)
        self.computed += 1
        if self.folder is not None:
            ondisk.save(self._file(ids, phase), {f"{i}.{part}": t for i, (k, v, *_) in enumerate(cache)
                                                 for part, t in (("k", k), ("v", v))})
        return cache

    def _read(self, ids: tuple[int, ...], phase: str) -> DynamicCache | None:
        """The saved cache of ``ids``, or None when there is none or it does not fit (damaged, another model)."""
        tensors = ondisk.read(self._file(ids, phase)) if self.folder is not None else None
        if not tensors:
            return None
        layers = [(tensors.get(f"{i}.k"), tensors.get(f"{i}.v")) for i in range(len(tensors) // 2)]
        if len(layers) != getattr(self.model.config, "num_hidden_layers", len(layers)) \
                or any(k is None or v is None or k.shape[-2] != len(ids) for k, v in layers):
            return None
        return DynamicCache(layers)
