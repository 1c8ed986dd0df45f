"""Sibling projections a decoder layer calls with one input (q/k/v, gate/up) run as one int8 call.

Where a phase runs an int8 kernel, :class:`Fused` prepares it once on the siblings' stacked weights, and
each sibling (a ``kernels.PhaseLinear``) takes its slice of the one output: fewer, larger GEMMs, and the
input scaled and quantised once, not three (two) times. The outputs are those of one call per projection,
bit for bit (each output channel is computed alone). Measured on a real AVX2-only EPYC, 2 threads, greedy
replies at batch 8: 29.0 / 30.4 -> 35.0 / 37.6 tok/s (bench/README.md, 2026-12-01).
"""

from __future__ import annotations

import threading
from typing import TYPE_CHECKING

import torch
from torch import nn

if TYPE_CHECKING:
    from worker.engine.gemms import Kernel

# Projections that transformers' decoder layers (Llama, Qwen2, Mistral, ...) call with the very same input.
FUSE = (("q_proj", "k_proj", "v_proj"), ("gate_proj", "up_proj"))


def fusable(parent: nn.Module) -> list[tuple[str, ...]]:
    """The groups of ``parent``'s Linear children (by FUSE's names) that read one input and may run as one."""
    groups = []
    for names in FUSE:
        children = [getattr(parent, n, None) for n in names]
        if all(type(c) is nn.Linear for c in children) and len({c.in_features for c in children}) == 1:
            groups.append(names)
    return groups


FUSED = object()  # a PhaseLinear's state for a phase its group runs


class _LastGroupCall(threading.local):
    """The stacked call, per thread, whose slices not every sibling has taken yet: held here, its input
    cannot be freed and its id reused. One slot for all groups, emptied once each sibling took its slice."""

    group: Fused | None = None
    x: torch.Tensor | None = None
    kernel = ""
    parts: tuple[torch.Tensor, ...] = ()
    taken: frozenset[int] = frozenset()


_last_group_call = _LastGroupCall()


class Fused:
    """Sibling projections called with one input: each int8 kernel runs once on their stacked weights, and
    every sibling takes its slice. The same tensor object comes to q, k and v in turn (gate and up); a
    sibling called with another input runs the stack on it, so its output is right in any case."""

    def __init__(self, weights: list[torch.Tensor], kernels: list[Kernel], int8: tuple | None = None):
        """``int8``: the stacked weights' per-channel int8 copy, if it was made already (then the float weights
        are not read)."""
        self.sizes = [w.shape[0] for w in weights]
        int8_kernels = {k.name: k for k in kernels if k.int8}
        stacked = torch.cat([w.detach() for w in weights]) if int8_kernels and int8 is None else None
        self.states = {name: k.prepare(stacked, int8) for name, k in int8_kernels.items()}

    def run(self, kernel: Kernel, x: torch.Tensor, index: int) -> torch.Tensor:
        last = _last_group_call
        if last.group is not self or last.x is not x or last.kernel != kernel.name or index in last.taken:
            parts = kernel.run(self.states[kernel.name], x).split(self.sizes, dim=-1)  # a raise leaves no stale key
            last.group, last.x, last.kernel, last.parts, last.taken = self, x, kernel.name, parts, frozenset()
        part = last.parts[index]
        last.taken |= {index}
        if len(last.taken) == len(self.sizes):  # every sibling served: hold nothing between passes
            last.group, last.x, last.kernel, last.parts, last.taken = None, None, "", (), frozenset()
        return part
