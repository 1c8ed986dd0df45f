"""KV caches of the fixed prompt prefixes: each language's sentiment frame and each reply system prompt.

Each is computed once per process and shared by every pass that starts with it. On a real AVX2-only EPYC
one took 0.9-1.4 s: a worker's start paid ~1.7 s for the sentiment frames, and its first replies ~3 s for
their system prompts. So they are also kept on disk, and later starts read them in milliseconds.

A file holds one prefix in one phase (scoring runs float layers at each end where drafting runs int8). Its
folder is keyed by everything else the values depend on: the weights' hash, the path the probe chose, the
CPU, torch, transformers, and the source of moodq's kernels. A model without a weights hash (a directory
or hub id, which can change in place) keeps its prefixes in memory only.
"""

from __future__ import annotations

import hashlib
import inspect
import json
import logging
import os
from collections.abc import Sequence
from pathlib import Path

import torch
from transformers import DynamicCache, PreTrainedModel

from worker.engine import fusing, kernels, kvcache

log = logging.getLogger(__name__)
VERSION = 1


def folder_for(cache_dir: Path, weights: str | None, path: str) -> Path | None:
    """Where the prefixes of these weights on this path and host live, or None (no weights hash)."""
    if not weights:
        return None
    import transformers

    from worker.engine import cpu

    code = hashlib.sha256("".join(inspect.getsource(m) for m in (kernels, fusing)).encode()).hexdigest()[:16]
    identity = {"version": VERSION, "weights": weights, "path": path, "cpu": cpu.model_name(),
                "flags": hashlib.sha256(" ".join(cpu.flags()).encode()).hexdigest()[:16],
                "torch": torch.__version__, "transformers": transformers.__version__, "code": code}
    return Path(cache_dir) / "prefixes" / hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()[:20]


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
        name = hashlib.sha256(json.dumps([phase, ids]).encode()).hexdigest()[:24]
        return self.folder / f"{name}.safetensors"

    def _compute(self, ids: tuple[int, ...], phase: str) -> DynamicCache:
        with torch.inference_mode():
            out = self.model(input_ids=torch.tensor([ids]), use_cache=True, logits_to_keep=1)
        cache = kvcache.returned(out)
        self.computed += 1
        if self.folder is not None:
            self._write(cache, ids, phase)
        return cache

    def _write(self, cache: DynamicCache, ids: tuple[int, ...], phase: str) -> None:
        from safetensors.torch import save_file

        file = self._file(ids, phase)
        tmp = file.with_name(f"{file.name}.tmp{os.getpid()}")
        tensors = {f"{i}.{part}": t.contiguous() for i, (k, v, *_) in enumerate(cache) for part, t in (("k", k), ("v", v))}
        try:
            file.parent.mkdir(parents=True, exist_ok=True)
            save_file(tensors, tmp, metadata={"phase": phase, "ids": json.dumps(ids)})
            os.replace(tmp, file)  # another process writing the same prefix writes the same values
        except OSError as exc:
            tmp.unlink(missing_ok=True)
            log.warning("could not save a prompt prefix's KV cache to %s (%s); it is computed again next start", file, exc)

    def _read(self, ids: tuple[int, ...], phase: str) -> DynamicCache | None:
        """The saved cache of ``ids``, or None when there is none or it is not the one (a damaged file, other ids)."""
        if self.folder is None or not (file := self._file(ids, phase)).is_file():
            return None
        from safetensors import safe_open

        try:
            with safe_open(file, "pt") as f:
                meta = f.metadata() or {}
                layers = [(f.get_tensor(f"{i}.k"), f.get_tensor(f"{i}.v")) for i in range(len(f.keys()) // 2)]
        except Exception as exc:  # safetensors raises its own errors on damaged bytes
            log.warning("ignoring the unreadable prompt prefix cache %s (%s)", file, exc)
            return None
        layers_expected = getattr(self.model.config, "num_hidden_layers", len(layers))
        if meta.get("phase") != phase or meta.get("ids") != json.dumps(ids) or len(layers) != layers_expected \
                or any(k.shape[-2] != len(ids) for k, _ in layers):
            return None
        return DynamicCache(layers)
