"""int8 Linear layers: int8 weights (one scale per output channel) x int8 activations (one scale per token).

This is the dynamic W8A8 scheme torchao's ``Int8DynamicActivationInt8WeightConfig`` runs, on
the same kernel (``torch._int_mm``, oneDNN on CPU, int32 accumulation). bench/roofline.py
measured, on 2 cores at the model's shapes: for the decode steps (1-16 rows), 3x faster than
bfloat16 and 6-11x faster than float32 (a step reads a quarter of float32's weight bytes);
for prefill (1024 rows), ~2x bfloat16's GEMM peak.

Two modes, named by ``MOODQ_QUANT``:
- ``int8-decode``: reply generation (inside :func:`decoding`: its prompt's prefill and every
  decode step) runs int8; label scoring keeps the float weights, so labels are exactly those of
  the float path.
- ``int8``: label scoring runs int8 too, except in the first and the last decoder layer; the
  output head keeps its float weight for scoring (the tied embedding needs it anyway). The
  default on AVX2 hosts, where it was 1.6x faster than float32 and within 1 point on both dev sets.
"""

from __future__ import annotations

import functools
import threading
from contextlib import contextmanager
from contextvars import ContextVar

import torch
from torch import nn
from torch.nn import functional as F

_decoding: ContextVar[bool] = ContextVar("moodq_decoding", default=False)


@contextmanager
def decoding():
    """Within this block (reply generation) the int8-decode layers run their int8 copy."""
    token = _decoding.set(True)
    try:
        yield
    finally:
        _decoding.reset(token)


@functools.cache
def weight_levels() -> int:
    """127 where ``torch._int_mm`` is exact for full-range int8, else 63 (probed once per process).

    On AVX2 without VNNI, oneDNN multiplies u8 x s8 pairs and sums each pair in int16
    (``vpmaddubsw``), which saturates for full-range operands: a GEMM came out wrong by up to
    ~190,000 in int32. Weights within +-63 keep every pair sum in range, so there the weights
    get 7 bits (and the activations keep 8).
    """
    g = torch.Generator().manual_seed(0)
    a = torch.randint(-127, 128, (8, 512), dtype=torch.int8, generator=g)
    b = torch.randint(-127, 128, (256, 512), dtype=torch.int8, generator=g)
    return 127 if torch.equal(torch._int_mm(a, b.t()), a.int() @ b.t().int()) else 63


class _LastActivation(threading.local):
    """The last input quantised, per thread: q/k/v projections (and gate/up) get the very same
    tensor object, so it is quantised once for the three (two) of them. Held here, the object
    cannot be freed and its id reused; transformers' decoder layers never change a projection's
    input in place (and inference tensors keep no version counter to check)."""

    x: torch.Tensor | None = None
    quantised: tuple[torch.Tensor, torch.Tensor] | None = None


_last = _LastActivation()
SHARE_INPUTS = True  # bench/replies.py turns it off ("int8-decode/unshared") to measure what it saves


def quantise_rows(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """int8 rows and their scales (one per token), reused while the same unchanged tensor comes again."""
    if _last.x is x and SHARE_INPUTS:
        return _last.quantised
    a = x.reshape(-1, x.shape[-1]).float()
    ascale = a.abs().amax(dim=1, keepdim=True).clamp_(min=1e-8).div_(127)
    aq = (a / ascale).round_().to(torch.int8)  # |a / ascale| <= 127 by construction
    _last.x, _last.quantised = x, (aq, ascale)
    return aq, ascale


class Int8Linear(nn.Module):
    """A Linear with an int8 copy of its weight: used ``always``, or for decode steps only."""

    def __init__(self, linear: nn.Linear, always: bool = False):
        super().__init__()
        self.bias, self.always = linear.bias, always
        self.in_features, self.out_features = linear.in_features, linear.out_features
        w = linear.weight.detach().float()
        scale = w.abs().amax(dim=1).clamp(min=1e-8) / weight_levels()
        self.register_buffer("qweight_t", torch.round(w / scale[:, None]).to(torch.int8).t(), persistent=False)
        self.register_buffer("wscale", scale, persistent=False)
        self.weight = linear.weight  # still used by large calls, and shared with a tied embedding

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not (self.always or _decoding.get()):
            return F.linear(x, self.weight, self.bias)
        aq, ascale = quantise_rows(x)
        out = torch._int_mm(aq, self.qweight_t).float().mul_(ascale).mul_(self.wscale).to(x.dtype)
        out = out.reshape(*x.shape[:-1], self.out_features)
        return out if self.bias is None else out + self.bias


def quantize(model: nn.Module, mode: str, keep_float: tuple[str, ...] | None = None) -> int:
    """Swap the Linear layers of ``model`` (output head included) for int8 ones; returns how many.

    ``mode`` is ``int8-decode`` or ``int8`` (see the module's doc). In ``int8`` mode the layers
    whose qualified name contains a string of ``keep_float`` (``down_proj``, ``layers.0.``) run
    int8 only while decoding, as in ``int8-decode``; by default the first and the last decoder
    layer, the most sensitive ones (bench/README.md: that kept both dev sets within 1 point).
    """
    if keep_float is None:
        last = getattr(model.config, "num_hidden_layers", 1) - 1
        keep_float = ("layers.0.", f"layers.{last}.")
    targets = [(f"{path}.{name}".lstrip("."), parent, name, child) for path, parent in model.named_modules()
               for name, child in parent.named_children() if type(child) is nn.Linear]
    for full, parent, name, child in targets:
        always = mode == "int8" and name != "lm_head" and not any(k in full for k in keep_float)
        setattr(parent, name, Int8Linear(child, always=always))
    return len(targets)
