"""Find, verify and load the configured model; cache converted GGUF weights for warm starts.

The only module besides ``worker.model`` that imports torch/transformers.
"""

from __future__ import annotations

import functools
import logging
import os
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, PreTrainedModel, PreTrainedTokenizerBase
from transformers.utils import logging as hf_logging

from worker import cpu, embedded
from worker.errors import ModelError
from worker.settings import Settings

log = logging.getLogger(__name__)
hf_logging.disable_progress_bar()  # "Loading weights" bars would land in every worker's log


@dataclass
class Loaded:
    model: PreTrainedModel
    tokenizer: PreTrainedTokenizerBase
    model_id: str
    seconds: float
    warm: bool
    path: cpu.ComputePath | None = None  # CPU class, dtype and quantisation it runs with


def _dtype(name: str) -> torch.dtype:
    return {"bfloat16": torch.bfloat16, "float32": torch.float32}[name]


def load(settings: Settings) -> Loaded:
    """Load the model named by ``settings.model``; one clear ModelError if that is impossible."""
    started = time.perf_counter()
    if settings.threads:
        torch.set_num_threads(settings.threads)
    name, path = settings.model, cpu.pick(settings.dtype, settings.quant)
    try:
        if name in embedded.MODELS:
            packaged = embedded.MODELS[name]
            model, tok, warm = _load_gguf(lambda: embedded.ensure_gguf(settings.cache_dir, packaged), packaged.sha256,
                                          settings, path.dtype)
            model_id = packaged.model_id
        elif name.endswith(".gguf"):
            file = Path(name).expanduser()
            if not file.is_file():
                raise ModelError(f"GGUF file not found: {file}")
            model, tok, warm = _load_gguf(lambda: file, embedded.sha256_of(file), settings, path.dtype)
            model_id = f"gguf:{file.name}"
        else:
            model = AutoModelForCausalLM.from_pretrained(name, dtype=_dtype(path.dtype))
            tok, warm, model_id = _tokenizer(name), False, name
    except ModelError:
        raise
    except (OSError, ValueError, KeyError) as exc:
        raise ModelError(f"cannot load model {name!r}: {str(exc).splitlines()[0]}") from exc
    if tok.pad_token_id is None:
        tok.pad_token = tok.eos_token
    model.eval()
    if path.quant != "none":
        from worker.quant import quantize

        quantize(model, path.quant)
    return Loaded(model, tok, model_id, time.perf_counter() - started, warm, path)


def check_model(settings: Settings) -> None:
    """Cheap start-up check that the configured model exists (no weights are loaded).

    Run in a worker's main process before the pool forks. It also loads the tokenizer when
    that is cheap to find (converted cache or a model directory), so every pool process
    inherits it instead of parsing it again (~0.8 s each).
    """
    name = settings.model
    if name in embedded.MODELS:
        packaged = embedded.MODELS[name]
        converted = _converted_dir(settings, packaged.sha256, cpu.pick(settings.dtype, settings.quant).dtype)
        if _ready(converted):  # made only from a verified file: no need to hash the GGUF again
            _tokenizer(str(converted))
        else:
            embedded.ensure_gguf(settings.cache_dir, packaged)
    elif name.endswith(".gguf"):
        if not Path(name).expanduser().is_file():
            raise ModelError(f"GGUF file not found: {name}")
        _check_gguf(Path(name).expanduser())
    else:
        from transformers import AutoConfig

        try:
            AutoConfig.from_pretrained(name)
            _tokenizer(name)
        except (OSError, ValueError) as exc:
            raise ModelError(f"model {name!r} not found as a local directory or in the hub cache: "
                             f"{str(exc).splitlines()[0]}") from None


def _check_gguf(path: Path) -> None:
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


@functools.cache
def _tokenizer(source: str) -> PreTrainedTokenizerBase:
    """One tokenizer per source and process; loaded before fork, it is shared by the pool."""
    return AutoTokenizer.from_pretrained(source)


def _converted_dir(settings: Settings, sha: str, dtype: str) -> Path:
    """Keyed by the GGUF's hash and the dtype it holds; int8 copies are made at load, never cached."""
    return settings.cache_dir / "converted" / f"{sha[:16]}-{dtype}"


def _ready(converted: Path) -> bool:
    return (converted / "READY").exists()


def _load_gguf(locate: Callable[[], Path], sha: str, settings: Settings, dtype: str):
    """De-quantise a GGUF once; later starts load the converted weights from the cache.

    The cache is keyed by the GGUF's SHA-256, so a warm start need not read the GGUF at all.
    """
    converted = _converted_dir(settings, sha, dtype)
    if _ready(converted):
        tok = _tokenizer(str(converted))
        model = AutoModelForCausalLM.from_pretrained(converted, dtype=_dtype(dtype))
        return model, tok, True
    path = locate()
    log.info("de-quantising %s (first start only; converted weights go to %s)", path.name, converted)
    tok = AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name)
    model = AutoModelForCausalLM.from_pretrained(path.parent, gguf_file=path.name, dtype=torch.float32)
    model = model.to(_dtype(dtype))
    _save_converted(model, tok, converted)
    return model, tok, False


def _save_converted(model: PreTrainedModel, tok: PreTrainedTokenizerBase, target: Path) -> None:
    """Write the converted weights atomically (a temp dir renamed into place)."""
    tmp = target.with_name(f"{target.name}.tmp{os.getpid()}")
    try:
        model.hf_quantizer = None  # de-quantised already; lets save_pretrained write plain weights
        if hasattr(model.config, "quantization_config"):
            del model.config.quantization_config
        model.save_pretrained(tmp)
        tok.save_pretrained(tmp)
        (tmp / "READY").write_text("ok")
        if target.exists():
            shutil.rmtree(tmp)  # another process finished first
        else:
            os.replace(tmp, target)
    except OSError as exc:
        shutil.rmtree(tmp, ignore_errors=True)
        log.warning("could not cache converted weights (%s); next start will de-quantise again", exc)
