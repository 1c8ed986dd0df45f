"""The layer that runs, per phase, the linear kernel measured fastest (the candidates: :mod:`worker.engine.gemms`).

Two phases: ``score`` (label scoring: a claim's messages in one pass, hundreds of rows per call) and
``decode`` (reply drafting, inside :func:`decoding`: each prompt's prefill, then one row per running
reply per step). Which kernel runs in each phase is measured on the host by :mod:`worker.engine.probe`;
nothing here reads CPU flags.

A layer keeps only the weights its kernels read: where both phases run the same int8 kernel, the
float weight is dropped. Sibling projections a decoder layer calls with one input (q/k/v, gate/up) run an
int8 phase as one call on their stacked weights: fewer, larger GEMMs, the input scaled and quantised once.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from contextvars import ContextVar

import torch
from torch import nn

from worker.engine.fusing import FUSED, Fused, fusable
from worker.engine.gemms import (
    BFLOAT16,
    FBGEMM,
    FLOAT32,
    INTMM,
    ONEDNN,
    Kernel,
    candidates,
)
from worker.engine.int8store import Int8Store

PHASES = ("score", "decode")

# (kernel, activation dtype) that may score labels: each kept both dev sets within 1 point of float32,
# with the decoder layers at each end scoring in float (SCORE_FLOAT_LAYERS). Measured offline on all 400
# lines of each set with `python bench/paths.py` (bench/README.md: "Which kernels may label", and the
# eighth session of 2026-12-01), on the host class the kernel is fast on: int8-fbgemm on a real AVX2-only
# EPYC, where one float layer at each end lost 2.0 points on en (0.8 on an AVX512 host) and two lose
# 0.0 / 0.5; int8-intmm with float32 activations on the AVX512-BF16 EPYC (-0.5 / -0.8); int8-onednn with
# bfloat16 activations on an AMX Xeon (0.0 / -0.3; +0.5 / -1.0 on the AVX512-BF16 EPYC). Not here: int8-fbgemm with
# bfloat16 activations (-1.3 on en); int8-intmm with bfloat16 activations, -0.5 on en on the EPYC but -1.8
# on the AMX Xeon; int8-onednn with float32 activations (-1.5 on en there); int8-weight-only, never
# measured. Speed alone never adds a kernel here. This is the set a prompt file's `int8_scoring: true` allows;
# prompts/default.yaml lists its int8 pairs for `embedded` (a test keeps the two equal) and, per model, others.
LABEL_SAFE = frozenset({(FLOAT32, FLOAT32), (BFLOAT16, BFLOAT16), (FBGEMM, FLOAT32), (INTMM, FLOAT32),
                        (ONEDNN, BFLOAT16)})
# Tokens of a message a scoring pass reads (its opening and its ending), per scoring path, where a cap other than
# the default was measured better: on all 400 zh dev lines (92 longer than 64 tokens; no en line is), one run on a
# real AVX2-only EPYC (2026-12-07), int8-fbgemm with float32 activations labeled 0.765 reading 64 and 96 (3 lines
# fixed, 3 broken) and scored 19 % faster; it stayed within 1 point of float32 at 64 (+0.8 / -0.5). Elsewhere 64
# lost about a point for little: float32 0.7675 -> 0.7575 there; on an AVX512-BF16 EPYC (2026-12-01) float32 with
# int8-fbgemm 0.755 -> 0.745 and bfloat16 with int8-intmm 0.772 -> 0.762, for +1 % / +4 % msg/s; bfloat16 with
# int8-onednn, their path now (Zen 4, 2026-12-07): 0.772 -> 0.762 for +22 % msg/s, a point of today's accuracy.
SCORE_MAX_TOKENS = {(FBGEMM, FLOAT32): 64}
DEFAULT_SCORE_MAX_TOKENS = 96


def score_max_tokens(plan) -> int:
    """Tokens of a message the scoring pass of ``plan`` (a probe.Plan, or None: the float model) reads."""
    return SCORE_MAX_TOKENS.get((plan.score, plan.dtype), DEFAULT_SCORE_MAX_TOKENS) if plan else DEFAULT_SCORE_MAX_TOKENS


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
