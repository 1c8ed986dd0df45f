"""Find, verify and load the configured model (a GGUF through its converted copy: worker.engine.converting).

Before the weights load, the kernel probe (worker.engine.probe) decides the float dtype and each phase's
kernel from the model's config; after, worker.engine.kernels swaps the Linear layers accordingly.
"""

from __future__ import annotations

import functools
import logging
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import torch
from transformers import (
    AutoConfig,
    AutoModelForCausalLM,
    AutoTokenizer,
    PreTrainedModel,
    PreTrainedTokenizerBase,
)
from transformers.utils import logging as hf_logging

from worker.common.errors import ModelError
from worker.common.prompts import load_prompts
from worker.common.settings import Settings
from worker.engine import (
    cachefiles,
    converting,
    embedded,
    gguf_once,
    int8store,
    kernels,
    prefixes,
    probe,
)

log = logging.getLogger(__name__)
hf_logging.disable_progress_bar()  # "Loading weights" bars would land in every worker's log


@dataclass
class Loaded:
    model: PreTrainedModel
    tokenizer: PreTrainedTokenizerBase
    model_id: str
    seconds: float
    warm: bool
    plan: probe.Plan | None = None  # the float dtype and each phase's kernel, with the probe's table
    prefix_folder: Path | None = None  # where its prompt prefixes' KV caches are kept (worker.engine.prefixes)


@dataclass
class _Source:
    """Where a model comes from: its id, its config (read without the weights), and how to load it in a dtype."""

    model_id: str
    config: Callable[[], object]
    weights: Callable[[str], tuple]  # dtype -> (model, warm)
    tokenizer: Callable[[], PreTrainedTokenizerBase]
    tokenizer_first: Callable[[], bool] = lambda: True  # are its files there before the weights are loaded?
    sha256: str | None = None  # of the weights' file, where there is one (embedded, GGUF)


def _source(settings: Settings) -> _Source:
    name = settings.model
    if name in embedded.MODELS:
        packaged = embedded.MODELS[name]
        return _gguf_source(packaged.model_id, lambda: embedded.ensure_gguf(settings.cache_dir, packaged),
                            packaged.sha256, settings)
    if name.endswith(".gguf"):
        file = Path(name).expanduser()
        if not file.is_file():
            raise ModelError(f"GGUF file not found: {file}")
        return _gguf_source(f"gguf:{file.name}", lambda: file, embedded.sha256_of(file), settings)
    return _Source(name, lambda: AutoConfig.from_pretrained(name),
                   lambda dtype: (AutoModelForCausalLM.from_pretrained(name, dtype=converting.dtype_of(dtype)), False),
                   lambda: _tokenizer(name))


def _gguf_source(model_id: str, locate: Callable[[], Path], sha: str, settings: Settings) -> _Source:
    """A GGUF, de-quantised once: config, weights and tokenizer come from its converted copy after that."""
    def tokenizer():  # from the GGUF itself only if its converted copy could not be saved
        path = converting.any_converted(settings.cache_dir, sha) or locate()
        return _tokenizer(str(path)) if path.is_dir() else AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name)

    return _Source(model_id, lambda: converting.config(locate, sha, settings.cache_dir),
                   lambda dtype: converting.weights(locate, sha, settings.cache_dir, dtype),
                   tokenizer, lambda: converting.any_converted(settings.cache_dir, sha) is not None, sha)


def measured_plan(settings: Settings, fresh: bool = False, source: _Source | None = None) -> probe.Plan:
    """The kernel probe's plan for the configured model on this host (measured now if ``fresh`` or not cached).
    Labels are scored in int8 only if the prompt file allows it for this model (``int8_scoring``: measured with it)."""
    try:
        source = source or _source(settings)
        return probe.plan_for(settings, source.config(), source.model_id, fresh=fresh,
                              int8_scoring=_int8_scoring(settings, source))
    except ModelError:
        raise
    except (OSError, ValueError, KeyError) as exc:
        raise ModelError(f"cannot read the config of model {settings.model!r}: {str(exc).splitlines()[0]}") from None


def _int8_scoring(settings: Settings, source: _Source) -> bool | frozenset:
    """Which int8 kernels may score this model's labels with the prompt file; an embedded model is known by its
    name also when MOODQ_MODEL gives its .gguf file (the same SHA-256)."""
    prompts = load_prompts(settings.prompts)
    name = next((n for n, p in embedded.MODELS.items() if source.sha256 and p.sha256 == source.sha256), settings.model)
    allowed = prompts.int8_scores(name)
    if allowed is False and isinstance(prompts.int8_scoring, dict):
        log.info("labels of %s are scored in float: %s has int8 scoring measured with %s only", name,
                 settings.prompts, ", ".join(prompts.int8_scoring))
    return allowed


def load(settings: Settings) -> Loaded:
    """Load the model named by ``settings.model`` on the path the kernel probe measured fastest here;
    one clear ModelError if that is impossible."""
    started = time.perf_counter()
    if settings.threads:
        torch.set_num_threads(settings.threads)
    try:
        # The tokenizer parses (~2 s on an AVX2-only EPYC) while the weights load and their kernels are prepared
        # (torch work that mostly releases the GIL); on a first start it reads the conversion's output, after it.
        # A first start reads a GGUF's metadata once (gguf_once), and drops it before the int8 kernels are made.
        with ThreadPoolExecutor(max_workers=1) as pool:
            with gguf_once.shared():
                source = _source(settings)
                plan = measured_plan(settings, source=source)
                early = pool.submit(source.tokenizer) if source.tokenizer_first() else None
                model, warm = source.weights(plan.dtype)
            model.eval()
            int8 = int8store.Int8Store(int8store.file_for(settings.cache_dir, source.sha256, plan.dtype))
            kernels.apply(model, plan.dtype, plan.score, plan.decode, int8)
            int8.save()  # on the first start with these weights; then it holds no copy
            kernels.own_memory(model)
            tok = _result_or_again(early, source.tokenizer)
    except ModelError:
        raise
    except (OSError, ValueError, KeyError) as exc:
        raise ModelError(f"cannot load model {settings.model!r}: {str(exc).splitlines()[0]}") from None
    if tok.pad_token_id is None:
        tok.pad_token = tok.eos_token
    folder = prefixes.folder_for(settings.cache_dir, source.sha256, str(plan))
    cachefiles.stamp(_cache_entries(settings, source, plan, folder))
    return Loaded(model, tok, source.model_id, time.perf_counter() - started, warm, plan, folder)


def cache_in_use(settings: Settings) -> list[Path]:
    """The entries of ``MOODQ_CACHE_DIR`` a worker with these settings reads on this host (worker.engine.cachefiles)."""
    source = _source(settings)
    return _cache_entries(settings, source, measured_plan(settings, source=source))


def _cache_entries(settings: Settings, source: _Source, plan: probe.Plan, folder: Path | None = None) -> list[Path]:
    """``folder``: the prompt prefixes' folder, when the caller has it already."""
    sha, packaged = source.sha256, embedded.MODELS.get(settings.model)
    folder = folder or prefixes.folder_for(settings.cache_dir, sha, str(plan))
    return [p for p in (packaged and settings.cache_dir / packaged.file_name, plan.file,
                        sha and converting.converted_dir(settings.cache_dir, sha, plan.dtype),
                        int8store.file_for(settings.cache_dir, sha, plan.dtype), folder) if p]


def _result_or_again(early, parse: Callable):
    """The tokenizer the thread parsed; parsed again here if it failed there (transformers' lazy imports are
    not all safe from two threads at once) or if it could not start early (a first start)."""
    if early is not None:
        try:
            return early.result()
        except Exception as exc:
            log.warning("parsing the tokenizer beside the weights failed (%s); parsing it again", exc)
    return parse()


def check_model(settings: Settings) -> None:
    """Cheap start-up check that the configured model exists (no weights are loaded).

    Run in a worker's main process before the pool forks. An embedded model with a converted copy (made only
    from a verified file) is not hashed again, and nothing is parsed: each pool process parses the tokenizer
    while its weights load. A GGUF file is parsed only if no converted copy of its bytes (same SHA-256) is there.
    """
    name = settings.model
    if name in embedded.MODELS:
        packaged = embedded.MODELS[name]
        if not converting.any_converted(settings.cache_dir, packaged.sha256):
            embedded.ensure_gguf(settings.cache_dir, packaged)
    elif name.endswith(".gguf"):
        path = Path(name).expanduser()
        if not path.is_file():
            raise ModelError(f"GGUF file not found: {name}")
        if not converting.any_converted(settings.cache_dir, embedded.sha256_of(path)):  # hashing costs ~1 s a GB, parsing it ~10 s
            converting.check_gguf(path)
    else:
        from transformers import AutoConfig

        try:
            AutoConfig.from_pretrained(name)
            _tokenizer(name)
        except (OSError, ValueError) as exc:
            raise ModelError(f"model {name!r} not found as a local directory or in the hub cache: "
                             f"{str(exc).splitlines()[0]}") from None


@functools.cache
def _tokenizer(source: str) -> PreTrainedTokenizerBase:
    """One tokenizer per source and process (a hub id's or directory's is parsed by the main process's check,
    before the fork, and shared by the pool)."""
    return AutoTokenizer.from_pretrained(source)
