"""The linear kernels a worker can run, and the layer that runs, per phase, the one measured fastest.

Two phases: ``score`` (label scoring: a claim's messages in one pass, hundreds of rows per call) and
``decode`` (reply drafting, inside :func:`decoding`: each prompt's prefill, then one row per running
reply per step). Which kernel runs in each phase is measured on the host by :mod:`worker.engine.probe`;
nothing here reads CPU flags.

Candidates (each takes activations of any float dtype and returns that dtype):
- ``float32``, ``bfloat16``: ``F.linear`` on weights of that dtype.
- ``int8-fbgemm``: W8A8 dynamic int8 by torch.ao's quantized linear (fbgemm, engine x86; 7-bit
  activations, so no int16 saturation without VNNI). fbgemm gives the activations one scale per
  call; each row is first divided by its own max-abs, so that scale acts per token (a padded batch
  of short and long rows otherwise cost labels, ../shared/MEASURED.md), and multiplied back after.
- ``int8-intmm``: W8A8 with one scale per token and per output channel on ``torch._int_mm``
  (oneDNN where the CPU has VNNI; a scalar loop, 5-25x slower than float32, where it does not).
- ``int8-weight-only``: int8 weights, bfloat16 activations (``torch._weight_int8pack_mm``).

A layer keeps only the weights its kernels read: where both phases run the same int8 kernel, the
float weight is dropped. Sibling projections a decoder layer calls with one input (q/k/v, gate/up) run an
int8 phase as one call on their stacked weights: fewer, larger GEMMs, the input scaled and quantised once.
"""

from __future__ import annotations

import threading
import warnings
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from contextvars import ContextVar

import torch
from torch import nn
from torch.nn import functional as F

from worker.engine.fusing import FUSED, Fused, fusable
from worker.engine.int8store import Int8Store, per_channel_int8

FLOAT32, BFLOAT16 = "float32", "bfloat16"
FBGEMM, INTMM, WEIGHT_ONLY = "int8-fbgemm", "int8-intmm", "int8-weight-only"
PHASES = ("score", "decode")

# (kernel, activation dtype) that may score labels: each kept both dev sets within 1 point of float32,
# with the decoder layers at each end scoring in float (SCORE_FLOAT_LAYERS). Measured offline on all 400
# lines of each set with `python bench/paths.py` (bench/README.md, "Which kernels may label"), on the
# host class the kernel is fast on: int8-fbgemm on a real AVX2-only EPYC, where one float layer at each
# end lost 2.0 points on en (it lost 0.8 on an AVX512 host) and two lose 0.0 / 0.5; the others on the
# AVX512-BF16 EPYC with one float layer at each end. int8-fbgemm with bfloat16 activations lost 1.3
# points on en and is not here; int8-weight-only was never measured. Speed alone never adds a kernel here.
LABEL_SAFE = frozenset({(FLOAT32, FLOAT32), (BFLOAT16, BFLOAT16), (FBGEMM, FLOAT32), (INTMM, FLOAT32),
                        (INTMM, BFLOAT16)})
SCORE_FLOAT_LAYERS = 2  # decoder layers at each end that score in float when scoring runs int8
SCORE_FLOAT_PARTS: tuple[str, ...] = ()  # of those layers' Linear layers, the ones that do (empty: all of them)

_decoding: ContextVar[bool] = ContextVar("moodq_decoding", default=False)


@contextmanager
def decoding():
    """Within this block (one step of reply drafting) every layer runs its ``decode`` kernel."""
    token = _decoding.set(True)
    try:
        yield
    finally:
        _decoding.reset(token)


def phase() -> str:
    """The phase the layers run now: ``decode`` inside :func:`decoding`, else ``score``."""
    return "decode" if _decoding.get() else "score"


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
    and its id reused; transformers' decoder layers never change a projection's input in place."""

    x: torch.Tensor | None = None
    quantised: tuple[torch.Tensor, torch.Tensor] | None = None


_last = _LastActivation()


def quantise_rows(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """int8 rows and their scales (one per token), reused while the same unchanged tensor comes again."""
    if _last.x is x:
        return _last.quantised
    a = _rows(x).float()
    ascale = a.abs().amax(dim=1, keepdim=True).clamp_(min=1e-8).div_(127)
    aq = (a / ascale).round_().to(torch.int8)  # |a / ascale| <= 127 by construction
    _last.x, _last.quantised = x, (aq, ascale)
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


class WeightOnly(Kernel):
    name = WEIGHT_ONLY

    def prepare(self, weight, int8=None):
        q, scale = int8 or per_channel_int8(weight)
        return q, scale.bfloat16()

    def run(self, state, x):
        q, scale = state
        y = torch._weight_int8pack_mm(_rows(x).bfloat16().contiguous(), q, scale)
        return y.reshape(*x.shape[:-1], y.shape[-1]).to(x.dtype)


def candidates(dtype: str | None = None) -> dict[str, Kernel]:
    """Every kernel the probe may time; with ``dtype``, the float ones reduced to that dtype."""
    floats = [FLOAT32, BFLOAT16] if dtype is None else [dtype]
    return {k.name: k for k in [*map(Float, floats), Fbgemm(), IntMM(), WeightOnly()]}


class PhaseLinear(nn.Module):
    """A Linear that runs ``score``'s kernel, or ``decode``'s inside :func:`decoding`.

    Only the weights those kernels read are kept (one copy when both phases run the same kernel);
    ``keep_weight`` keeps the float parameter as well (an output head: scoring reads its rows, and a
    tied input embedding shares it)."""

    def __init__(self, linear: nn.Linear, score: Kernel, decode: Kernel, keep_weight: bool = False,
                 group: Fused | None = None, index: int = 0, int8: tuple | None = None):
        super().__init__()
        self.in_features, self.out_features = linear.in_features, linear.out_features
        self.group, self.index = group, index  # run int8 phases as slice ``index`` of ``group``
        states: dict[str, object] = {}
        for kernel in (score, decode):  # one state per distinct kernel: preparing int8 costs ~30 ms a layer
            if kernel.name not in states:
                states[kernel.name] = FUSED if group and kernel.int8 else kernel.prepare(linear.weight, int8)
        self.kernels = {"score": (score, states[score.name]), "decode": (decode, states[decode.name])}
        self.bias = linear.bias
        if keep_weight:
            self.weight = linear.weight

    def own_memory(self) -> None:
        """Float weights copied out of the file they were memory-mapped from (after the parameters were)."""
        shared: dict[str, torch.Tensor] = {}
        for phase, (kernel, state) in self.kernels.items():
            if not kernel.int8:
                if kernel.name not in shared:
                    shared[kernel.name] = kernel.prepare(self.weight) if hasattr(self, "weight") else state.clone()
                self.kernels[phase] = (kernel, shared[kernel.name])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        kernel, state = self.kernels[phase()]
        y = self.group.run(kernel, x, self.index) if state is FUSED else kernel.run(state, x)
        return y if self.bias is None else y + self.bias

    def extra_repr(self) -> str:
        return (f"in_features={self.in_features}, out_features={self.out_features}, "
                f"score={self.kernels['score'][0]}, decode={self.kernels['decode'][0]}"
                + (f", int8 fused with its siblings (slice {self.index})" if self.group else ""))


def own_memory(model: nn.Module) -> None:
    """Copy what the model keeps after :func:`apply` into memory of its own, so the memory-mapped weights
    file is released and, with it, the float weights no kernel reads any more (they stayed resident as
    file pages: ~1 GB of a bfloat16 model, 2 GB of a float32 one)."""
    import ctypes
    import gc

    with torch.no_grad():
        for tensor in [*model.parameters(), *model.buffers()]:
            tensor.data = tensor.data.clone()
        for module in model.modules():
            if isinstance(module, PhaseLinear):
                module.own_memory()
    gc.collect()
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)  # hand freed heap pages back to the system (glibc)
    except OSError:
        pass


def apply(model: nn.Module, dtype: str, score: str, decode: str, int8: Int8Store | None = None) -> int:
    """Swap ``model``'s Linear layers for :class:`PhaseLinear` ones running ``score`` / ``decode``;
    returns how many were swapped. The output head scores in float (worker.engine.scoring reads its rows)
    and drafts with ``decode``; with int8 scoring, SCORE_FLOAT_LAYERS decoder layers at each end score in
    float. Siblings of one input (:func:`fusable`) share one int8 call per phase. Int8 kernels start from
    ``int8``'s copies (computed here when it has none)."""
    int8 = int8 or Int8Store()
    if score == dtype and decode == dtype:
        return 0  # the plain float model: nothing to swap
    kernels = candidates(dtype)
    head = model.get_output_embeddings()
    last = getattr(model.config, "num_hidden_layers", 1) - 1
    edges = {f"layers.{i}." for i in [*range(SCORE_FLOAT_LAYERS), *range(last, last - SCORE_FLOAT_LAYERS, -1)]}
    jobs = []  # (parent's path, names, their Linear layers, score kernel): each job one layer or a group of siblings
    for path, parent in model.named_modules():
        linears = {name: child for name, child in parent.named_children() if type(child) is nn.Linear}
        groups = fusable(parent)
        grouped = {name for names in groups for name in names}
        for names in [*groups, *[(name,) for name in linears if name not in grouped]]:
            children = [linears[name] for name in names]
            edge = any(e in f"{path}.{names[0]}" for e in edges) and (not SCORE_FLOAT_PARTS or names[0] in SCORE_FLOAT_PARTS)
            float_scoring = children[0] is head or edge
            jobs.append((path, names, children, kernels[dtype] if float_scoring and kernels[score].int8 else kernels[score]))

    def build(job) -> list[PhaseLinear]:
        path, names, children, layer_score = job
        copy = None
        if layer_score.int8 or kernels[decode].int8:  # stacked siblings have one copy: the int8 call's weight
            copy = int8.get(f"{path}.{'+'.join(names)}", (sum(c.out_features for c in children), children[0].in_features),
                            lambda: torch.cat([c.weight.detach() for c in children]) if len(children) > 1 else children[0].weight)
        if len(children) == 1:
            return [PhaseLinear(children[0], layer_score, kernels[decode], keep_weight=children[0] is head, int8=copy)]
        group = Fused([c.weight for c in children], [layer_score, kernels[decode]], copy)
        return [PhaseLinear(c, layer_score, kernels[decode], group=group, index=i) for i, c in enumerate(children)]

    # The largest weight (the head) first, so it is not the last one left running on one core.
    jobs.sort(key=lambda job: sum(c.weight.numel() for c in job[2]), reverse=True)
    # Preparing int8 weights is torch work that releases the GIL: one thread per core halves the start.
    with ThreadPoolExecutor(max_workers=max(1, torch.get_num_threads())) as pool:
        for (path, names, _, _), layers in zip(jobs, pool.map(build, jobs)):
            for name, layer in zip(names, layers):
                setattr(model.get_submodule(path), name, layer)
    return sum(len(job[1]) for job in jobs)
