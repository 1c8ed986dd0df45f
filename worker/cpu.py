"""Which CPU class this host is, and the compute path moodq picks for it.

Three classes matter on ordinary servers: AVX2 only (no native bfloat16: a bfloat16 GEMM is
emulated and ~150x slower than float32), AVX512-BF16 (EPYC Zen 4) and AMX (Xeon Sapphire
Rapids and later). ``ATEN_CPU_CAPABILITY=avx2`` with ``ONEDNN_MAX_CPU_ISA=AVX2`` makes a bf16
host behave as the AVX2 class (torch's kernels and oneDNN's both stop using bf16 instructions),
and is read here as that class, so one host can measure both.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

AVX2, AVX512_BF16, AMX = "avx2", "avx512_bf16", "amx"

# oneDNN ISA caps below which it has no bf16 instructions.
_ONEDNN_NO_BF16 = {"SSE41", "AVX", "AVX2", "AVX2_VNNI", "AVX2_VNNI_2", "AVX512_CORE", "AVX512_CORE_VNNI"}


@dataclass(frozen=True)
class ComputePath:
    """What a worker process runs: the CPU class, the weights dtype and the quantisation."""

    cpu: str
    dtype: str
    quant: str

    def __str__(self) -> str:
        return f"{self.cpu}/{self.dtype}" + ("" if self.quant == "none" else f"+{self.quant}")


def cpu_class() -> str:
    """``amx``, ``avx512_bf16`` or ``avx2`` (the last also for anything without native bf16)."""
    import torch

    capped = (torch.backends.cpu.get_cpu_capability() in ("DEFAULT", "AVX2", "NO AVX")
              or os.environ.get("ONEDNN_MAX_CPU_ISA", "").upper() in _ONEDNN_NO_BF16)
    if capped:
        return AVX2
    if torch.cpu._is_amx_tile_supported():
        return AMX
    if torch.cpu._is_avx512_bf16_supported():
        return AVX512_BF16
    return AVX2


def describe() -> str:
    """One line naming the host's class, for logs and the first line of every bench script."""
    import platform

    import torch

    emulated = [f"{k}={os.environ[k]}" for k in ("ATEN_CPU_CAPABILITY", "ONEDNN_MAX_CPU_ISA") if k in os.environ]
    return (f"CPU class {cpu_class()} ({_model_name()}; torch kernels {torch.backends.cpu.get_cpu_capability()}"
            f"{'; ' + ', '.join(emulated) if emulated else ''}; {os.cpu_count()} cores; {platform.machine()})")


def _model_name() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    import platform

    return platform.processor() or "unknown CPU"


def pick(dtype: str, quant: str, cls: str | None = None) -> ComputePath:
    """The path for settings ``dtype`` and ``quant`` (each ``auto`` or explicit) on class ``cls``.

    bfloat16 only where the CPU has it natively; float32 elsewhere. Replies are drafted in int8
    everywhere (faster than float at every decode shape measured, bench/roofline.py). Label
    scoring goes int8 too only where that kept both dev sets within 1 point of float32 and was
    >= 1.3x faster (bench/paths.py): float32 on AVX2 (1.6x); not bfloat16 (1.2x on en).
    """
    cls = cls or cpu_class()
    if dtype == "auto":
        dtype = "float32" if cls == AVX2 else "bfloat16"
    if quant == "auto":
        quant = "int8" if dtype == "float32" and cls == AVX2 else "int8-decode"
    return ComputePath(cls, dtype, quant)
