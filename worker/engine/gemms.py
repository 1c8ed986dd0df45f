"""The candidate linear kernels (GEMMs) a worker may run; :mod:`worker.engine.kernels` runs, per phase, the one
the probe measured fastest. Nothing here reads CPU flags.

Each takes activations of any float dtype and returns that dtype:
- ``float32``, ``bfloat16``: ``F.linear`` on weights of that dtype.
- ``int8-fbgemm``: W8A8 dynamic int8 by torch.ao's quantized linear (fbgemm, engine x86; 7-bit
  activations, so no int16 saturation without VNNI). fbgemm gives the activations one scale per
  call; each row is first divided by its own max-abs, so that scale acts per token (a padded batch
  of short and long rows otherwise cost labels, ../shared/MEASURED.md), and multiplied back after.
- ``int8-intmm``: W8A8 with one scale per token and per output channel on ``torch._int_mm``
  (oneDNN where the CPU has VNNI; a scalar loop, 5-25x slower than float32, where it does not).
- ``int8-onednn``: the same W8A8 on oneDNN's int8 linear with the weight packed once at start
  (``torch.ops.onednn.qlinear_*``, what PyTorch's x86 inductor quantisation runs; AMX tiles where the CPU
  has them), the activations fed as uint8 with a zero point of 128 (signed ones run oneDNN's scalar reference loop
  on a CPU without AMX) and the dequantisation fused into the call (``_int_mm`` repacks its weight at every call).
  Packing is cheap: the 152k-row output head in 1.3 s on an AMX Xeon, so it is not split as fbgemm's is.
- ``int8-weight-only``: int8 weights, bfloat16 activations (``torch._weight_int8pack_mm``).
"""

from __future__ import annotations

import threading
import warnings

import torch
from torch.nn import functional as F

from worker.engine.int8store import per_channel_int8

FLOAT32, BFLOAT16 = "float32", "bfloat16"
FBGEMM, INTMM, ONEDNN, WEIGHT_ONLY = "int8-fbgemm", "int8-intmm", "int8-onednn", "int8-weight-only"
INT8 = (FBGEMM, INTMM, ONEDNN, WEIGHT_ONLY)


def _rows(x: torch.Tensor) -> torch.Tensor:
    return x.reshape(-1, x.shape[-1])


class Kernel:
    """How one linear layer runs: ``prepare`` turns a float weight (out, in) into what ``run`` reads. An int8
    kernel starts from the weight's per-channel int8 copy: ``int8`` when given (then ``weight`` is not read)."""

    name = ""
    int8 = True

    def prepare(self, weight: torch.Tensor | None, int8: tuple[torch.Tensor, torch.Tensor] | None = None):
        raise NotImplementedError

    def run(self, state, x: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def __repr__(self) -> str:
        return self.name


class Float(Kernel):
    int8 = False

    def __init__(self, dtype: str):
        self.name, self.dtype = dtype, getattr(torch, dtype)

    def prepare(self, weight, int8=None):
        return weight.detach().to(self.dtype).contiguous()  # no copy when the model holds this dtype already

    def run(self, w, x):
        return F.linear(x.to(self.dtype), w).to(x.dtype)


class Fbgemm(Kernel):
    """A weight of more than CHUNK_ROWS output rows (an output head: 152k) is packed in pieces: fbgemm's
    prepack of one 152k x 896 matrix took 5.5-5.9 s on a real AVX2-only EPYC, in 8 pieces 2.2 s in all
    (its cost grows faster than the matrix), and a decode step's head call was as fast within noise."""

    name = FBGEMM
    CHUNK_ROWS = 20_000

    def prepare(self, weight, int8=None):
        q, scale = int8 or per_channel_int8(weight)
        return [self._pack(*piece) for piece in zip(q.split(self.CHUNK_ROWS), scale.split(self.CHUNK_ROWS))]

    @staticmethod
    def _pack(q, scale):
        with warnings.catch_warnings():  # quantized tensors are deprecated upstream; torch < 2.14 is pinned
            warnings.simplefilter("ignore")
            qw = torch._make_per_channel_quantized_tensor(q, scale.double(), torch.zeros_like(scale, dtype=torch.long), 0)
            return torch.ops.quantized.linear_prepack(qw, None)

    def run(self, pieces, x):
        a = _rows(x).float()
        peak = a.abs().amax(dim=1, keepdim=True).clamp_(min=1e-8)
        a = a / peak
        y = [torch.ops.quantized.linear_dynamic(a, packed, True) for packed in pieces]
        y = (y[0] if len(y) == 1 else torch.cat(y, dim=1)).mul_(peak)
        return y.reshape(*x.shape[:-1], y.shape[-1]).to(x.dtype)


class _LastActivation(threading.local):
    """The last input quantised, per thread: q/k/v projections (and gate/up) get the very same tensor
    object, so it is quantised once for the three (two) of them. Held here, the object cannot be freed
    and its id reused; transformers' decoder layers never change a projection's input in place (and tensors
    made under inference_mode keep no version counter to tell)."""

    x: torch.Tensor | None = None
    unsigned: bool = False
    quantised: tuple[torch.Tensor, torch.Tensor] | None = None


_last = _LastActivation()


def quantise_rows(x: torch.Tensor, unsigned: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """int8 rows and their scales (one per token), reused while the same unchanged tensor comes again.
    ``unsigned``: the same values plus 128, as uint8 (to be read with a zero point of 128)."""
    if _last.x is x and _last.unsigned == unsigned:
        return _last.quantised
    a = _rows(x).float()
    ascale = a.abs().amax(dim=1, keepdim=True).clamp_(min=1e-8).div_(127)
    aq = (a / ascale).round_()  # |a / ascale| <= 127 by construction
    aq = aq.add_(128).to(torch.uint8) if unsigned else aq.to(torch.int8)
    _last.x, _last.unsigned, _last.quantised = x, unsigned, (aq, ascale)
    return aq, ascale


class IntMM(Kernel):
    name = INTMM

    def prepare(self, weight, int8=None):
        q, scale = int8 or per_channel_int8(weight)
        return q.t(), scale  # _int_mm takes the transposed (in, out) view

    def run(self, state, x):
        qweight_t, wscale = state
        aq, ascale = quantise_rows(x)
        y = torch._int_mm(aq, qweight_t).float().mul_(ascale).mul_(wscale)
        return y.reshape(*x.shape[:-1], y.shape[-1]).to(x.dtype)


class OneDnn(Kernel):
    name = ONEDNN

    def prepare(self, weight, int8=None):
        try:
            pack = torch.ops.onednn.qlinear_prepack
        except (AttributeError, RuntimeError) as exc:  # a torch built without oneDNN
            raise NotImplementedError(f"no oneDNN int8 linear in this torch: {exc}") from exc
        q, scale = int8 or per_channel_int8(weight)
        return pack(q, None), scale.float(), torch.zeros(len(scale), dtype=torch.long)

    def run(self, state, x):
        packed, wscale, zeros = state
        # uint8 activations with a zero point of 128, as PyTorch's x86 quantisation feeds it: oneDNN runs int8
        # (signed) activations on its scalar reference matmul (ref_int8) on a CPU with VNNI but no AMX, 200-2000x
        # slower than its brgemm (an AVX512-BF16 EPYC, ONEDNN_VERBOSE=1). The zero point is exact in int32.
        aq, ascale = quantise_rows(x, unsigned=True)  # the op takes one activation scale: 1, each row's is applied after
        out = x.dtype if x.dtype in (torch.float32, torch.bfloat16) else torch.float32
        y = torch.ops.onednn.qlinear_pointwise(aq, 1.0, 128, packed, wscale, zeros, None, 1.0, 0, out, "none", [], "")
        y = y.mul_(ascale.to(out))
        return y.reshape(*x.shape[:-1], y.shape[-1]).to(x.dtype)


class WeightOnly(Kernel):
    name = WEIGHT_ONLY

    def prepare(self, weight, int8=None):
        q, scale = int8 or per_channel_int8(weight)
        return q, scale.bfloat16()

    def run(self, state, x):
        q, scale = state
        y = torch._weight_int8pack_mm(_rows(x).bfloat16().contiguous(), q, scale)
        return y.reshape(*x.shape[:-1], y.shape[-1]).to(x.dtype)


def relative_error(out: torch.Tensor, ref: torch.Tensor) -> float:
    return float((out.float() - ref).norm() / ref.norm().clamp(min=1e-12))


def saturation_error(kernel: Kernel, rows: int = 8) -> float:
    """An int8 kernel's error where int16 saturation must show: every weight and activation at its positive
    maximum. Int8 GEMMs without VNNI sum u8 x s8 products in pairs into int16, which overflows there (fbgemm's
    7-bit activations and int32 sums are exact); the probe's Gaussian data seldom gets there."""
    weight, x = torch.full((64, 256), 0.02), torch.ones(rows, 256)
    return relative_error(kernel.run(kernel.prepare(weight), x), x @ weight.t())


def candidates(dtype: str | None = None) -> dict[str, Kernel]:
    """Every kernel the probe may time; with ``dtype``, the float ones reduced to that dtype."""
    floats = [FLOAT32, BFLOAT16] if dtype is None else [dtype]
    return {k.name: k for k in [*map(Float, floats), Fbgemm(), IntMM(), OneDnn(), WeightOnly()]}
