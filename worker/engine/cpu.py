"""What CPU this host has, in words, for logs, bench headers and the kernel probe's cache key.

Nothing here chooses a kernel: flags cannot tell how fast a kernel runs (``torch._int_mm`` is a
scalar loop on AVX2 without VNNI; an emulated bfloat16 GEMM is ~150x slower than float32), so the
compute path is measured on the host by :mod:`worker.engine.probe`. The class below only names the host.
"""

from __future__ import annotations

import functools
import os
import platform

AVX2, AVX512_BF16, AMX = "avx2", "avx512_bf16", "amx"


def cpu_class() -> str:
    """``amx``, ``avx512_bf16`` or ``avx2`` as an x86 CPU's flags read; another machine's name, such as
    ``aarch64`` (a name for people, not a choice)."""
    if platform.machine().lower() not in ("x86_64", "amd64", "i686", "i386"):
        return platform.machine().lower() or "unknown"
    have = set(flags())
    return AMX if "amx_tile" in have else AVX512_BF16 if "avx512_bf16" in have else AVX2


def describe() -> str:
    """One line naming the host, for logs and the first line of every bench script."""
    import torch

    caps = [f"{k}={os.environ[k]}" for k in ("ATEN_CPU_CAPABILITY", "ONEDNN_MAX_CPU_ISA") if k in os.environ]
    vnni = "VNNI" if {"avx512_vnni", "avx_vnni"} & set(flags()) else "no VNNI"
    return (f"CPU class {cpu_class()} ({model_name()}; {vnni}; torch kernels {torch.backends.cpu.get_cpu_capability()}"
            f"{'; ' + ', '.join(caps) if caps else ''}; {os.cpu_count()} cores; {platform.machine()})")


@functools.cache
def _cpuinfo() -> dict[str, str]:
    out: dict[str, str] = {}
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:  # the first processor's block: x86 names its model and flags, Arm its Features and part
                if not line.strip():
                    if out:
                        break
                    continue
                name, _, value = line.partition(":")
                out.setdefault(name.strip(), value.strip())
    except OSError:
        pass
    return out


def model_name() -> str:
    info = _cpuinfo()
    arm = f"Arm implementer {info['CPU implementer']} part {info.get('CPU part', '?')}" if "CPU implementer" in info else ""
    return info.get("model name") or arm or platform.processor() or "unknown CPU"


def flags() -> list[str]:
    """The CPU's feature flags (sorted), as /proc/cpuinfo lists them (Arm: its Features); empty where unreadable."""
    info = _cpuinfo()
    return sorted((info.get("flags") or info.get("Features", "")).split())
