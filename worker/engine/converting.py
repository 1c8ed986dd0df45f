"""A GGUF model, de-quantised once into ``MOODQ_CACHE_DIR/converted`` and read from there after that.

The copy is keyed by the GGUF's SHA-256 and the dtype it holds, so a warm start need not read the GGUF at all.
One process on a host converts at a time (a file lock): a second pool process, or another container on the same
cache volume, waits for the first one's copy instead of converting beside it (30-60 s and ~3 GB each).
"""

from __future__ import annotations

import contextlib
import functools
import logging
import os
import shutil
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import torch
from safetensors import SafetensorError
from transformers import (
    AutoConfig,
    AutoModelForCausalLM,
    AutoTokenizer,
    PreTrainedModel,
    PreTrainedTokenizerBase,
)

from worker.common.errors import ModelError
from worker.engine import cachefiles

log = logging.getLogger(__name__)
# Converting a GGUF in bfloat16 warns that packed GGUF kernels run best in float32: it keeps no packed weights here.
logging.getLogger("transformers.quantizers.quantizer_gguf").setLevel(logging.ERROR)


def dtype_of(name: str) -> torch.dtype:
    return {"bfloat16": torch.bfloat16, "float32": torch.float32}[name]


def converted_dir(cache_dir: Path, sha: str, dtype: str) -> Path:
    """Keyed by the GGUF's hash and the dtype it holds (worker.engine.int8store keeps its int8 copies)."""
    return Path(cache_dir) / "converted" / f"{sha[:16]}-{dtype}"


def ready(converted: Path) -> bool:
    return (converted / "READY").exists()


def any_converted(cache_dir: Path, sha: str) -> Path | None:
    """A converted copy of this GGUF in any dtype (config and tokenizer are the same in all)."""
    return next((d for d in sorted((Path(cache_dir) / "converted").glob(f"{sha[:16]}-*")) if ready(d)), None)


def config(locate: Callable[[], Path], sha: str, cache_dir: Path):
    """The model's config: from a converted copy when there is one, else from the GGUF's metadata."""
    converted = any_converted(cache_dir, sha)
    if converted:
        return AutoConfig.from_pretrained(converted)
    path = locate()
    return AutoConfig.from_pretrained(path.parent, gguf_file=path.name)


def weights(locate: Callable[[], Path], sha: str, cache_dir: Path, dtype: str) -> tuple[PreTrainedModel, bool]:
    """The model in ``dtype`` and whether it came from the cache: the converted copy, or the GGUF (``locate()``)
    converted now, by this process or (waited for) by another on this host."""
    converted = converted_dir(cache_dir, sha, dtype)
    if (model := _read(converted, dtype)) is not None:
        return model, True
    with cachefiles.only_one(converted):  # ready once it is held: another process converted it meanwhile
        model = None if ready(converted) else _convert(locate(), converted, dtype)
    warm = model is None
    if warm or ready(converted):  # run what later starts load, not the model the conversion built (its layers may differ)
        del model  # not two copies in memory at once
        return AutoModelForCausalLM.from_pretrained(converted, dtype=dtype_of(dtype)), warm
    return model, False  # its copy could not be saved


def _convert(path: Path, converted: Path, dtype: str) -> PreTrainedModel:
    log.info("de-quantising %s (first start only; converted weights go to %s)", path.name, converted)
    started = time.perf_counter()
    with no_bar():
        tok = AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name)
        model = AutoModelForCausalLM.from_pretrained(path.parent, gguf_file=path.name, dtype=dtype_of(dtype))
    _save(model, tok, converted)
    log.info("de-quantised %s in %.0f s", path.name, time.perf_counter() - started)
    return model


@contextlib.contextmanager
def no_bar() -> Iterator[None]:
    """transformers draws its GGUF conversion's progress bar with tqdm on stderr, which a Celery worker logs
    line by line as WARNING (~24 lines on a first start); the log gets one line at each end instead."""
    from transformers import modeling_gguf_pytorch_utils as gguf_loading

    bar = getattr(gguf_loading, "tqdm", None)
    if bar is None:  # a transformers that draws it otherwise: the bar shows, the start goes on
        yield
        return
    gguf_loading.tqdm = functools.partial(bar, disable=True)
    try:
        yield
    finally:
        gguf_loading.tqdm = bar


def _read(converted: Path, dtype: str) -> PreTrainedModel | None:
    """The converted copy, or None if there is none; one that cannot be read is removed (converted again)."""
    if not ready(converted):
        return None
    try:
        return AutoModelForCausalLM.from_pretrained(converted, dtype=dtype_of(dtype))
    except (OSError, ValueError, SafetensorError) as exc:  # an unreadable copy (not, say, a MemoryError) is rebuilt
        log.warning("the converted weights in %s cannot be read (%s: %s); removing them and converting again",
                    converted, type(exc).__name__, exc)
        shutil.rmtree(converted, ignore_errors=True)
        return None


def _save(model: PreTrainedModel, tok: PreTrainedTokenizerBase, target: Path) -> None:
    """Write the converted weights atomically (a temp dir renamed into place)."""
    tmp = target.with_name(f"{target.name}.tmp{os.getpid()}")
    try:
        model.hf_quantizer = None  # de-quantised already; lets save_pretrained write plain weights
        if hasattr(model.config, "quantization_config"):
            del model.config.quantization_config
        model.save_pretrained(tmp)
        tok.save_pretrained(tmp)
        (tmp / "READY").write_text("ok")
        if ready(target):
            shutil.rmtree(tmp)  # another process finished first (one that could not take the lock)
        else:
            shutil.rmtree(target, ignore_errors=True)  # what a failed removal left: it would block every copy
            os.replace(tmp, target)
    except OSError as exc:
        shutil.rmtree(tmp, ignore_errors=True)
        log.warning("could not cache converted weights (%s); next start will de-quantise again", exc)


def check_gguf(path: Path) -> None:
    """Read the GGUF's header and tensor table (memory-mapped, no weights decoded): a truncated or
    corrupt file fails here, in the worker's main process, before it takes any message."""
    from gguf import GGUFReader

    try:
        reader = GGUFReader(path)
        end = max((t.data_offset + t.n_bytes for t in reader.tensors), default=0)
    except Exception as exc:  # the reader raises ValueError, KeyError, struct errors ... on bad bytes
        raise ModelError(f"GGUF file {path} is not a readable GGUF ({type(exc).__name__}: {exc})") from None
    if not reader.tensors or end > path.stat().st_size:
        raise ModelError(f"GGUF file {path} is truncated or holds no tensors")
