"""Timing the candidate linear kernels on a model's shapes, each checked against float32 (the probe's measurement).

:mod:`worker.engine.probe` decides from the table :func:`measure` returns, and caches it.
"""

from __future__ import annotations

import math
import statistics
import time
from collections.abc import Callable, Collection
from typing import TYPE_CHECKING

import torch

from worker.engine import gemms
from worker.engine.gemms import FLOAT32

if TYPE_CHECKING:
    from worker.engine.probe import Rows, Shape

MAX_ERROR = 0.05  # relative (Frobenius) error against float32; int8 kernels are ~0.01, a saturating one ~1
SKIP_SLOWER = 4.0  # a kernel this much slower than float32 at a prefill's rows is not timed at larger row counts
FAR_SLOWER = 10.0  # a kernel this much slower than float32 at any row count is not timed again (a scalar loop)
MIN_ROUNDS = 4  # each half of float32's rounds (see drift) a median of two at least
RETIME_SECONDS = 0.5  # per kernel and row count, when a close call is timed again (:func:`retime`)
RETIME_LAYERS = 4  # distinct weights each of its kernels runs in turn: ~180 MB for a 0.5B layer (probe's six: ~150)


def measure(shapes: list[Shape], rows: Rows, candidates: dict[str, gemms.Kernel] | None = None,
            min_seconds: float = 0.08, clock: Callable[[], float] = time.perf_counter) -> dict:
    """Time every candidate on ``shapes`` at every row count, ascending; check each against float32.

    Returns kernel -> str(rows) -> {"ms": per decoder layer, "error": relative error, "note"} (float32's cells also
    "halves_ms": see :func:`drift`; :func:`retime` adds "rounds"). At a row count the kernels take turns, one
    decoder layer each, round after round (:func:`_rounds`), and each keeps its median: load from another process
    slows the rounds it overlaps for every kernel alike, not one kernel's whole cell; and each kernel's weights are
    as cold as a model's next layer (not left in cache by its own previous call). A kernel ``SKIP_SLOWER`` times
    slower than float32 at the prefill rows or more is not timed at larger row counts (it cannot win there, and a
    scalar loop at a thousand rows would take minutes); at fewer rows, only one ``FAR_SLOWER`` times slower is out
    (a kernel a little slow for one row may be fast for many). A weight-only kernel is not timed at scoring rows
    beyond the prefill's (it may not label)."""
    candidates = candidates or gemms.candidates()
    gen = torch.Generator().manual_seed(0)
    weights = _weights(shapes, gen)
    table: dict[str, dict] = {name: {} for name in candidates}
    reference = gemms.Float(FLOAT32)
    out_of_race: dict[str, str] = {}
    with torch.inference_mode():
        for m in rows.measured():
            xs = [torch.randn(m, i, generator=gen) for i, _, _ in shapes]
            refs = [reference.run(reference.prepare(w), x) for w, x in zip(weights, xs)]
            ready, checked = {}, []
            for name in [FLOAT32, *(n for n in candidates if n != FLOAT32)]:
                kernel = candidates.get(name) or reference
                if name in out_of_race or (m == rows.score and m > rows.prefill and name == gemms.WEIGHT_ONLY):
                    table.setdefault(name, {})[str(m)] = {"ms": None, "error": None,
                                                          "note": out_of_race.get(name, "decode only")}
                    continue
                table.setdefault(name, {})[str(m)], states = _check(kernel, weights, xs, refs)
                checked.append(name)
                if states is not None:
                    ready[name] = (kernel, states)
            limit = SKIP_SLOWER if m >= rows.prefill else FAR_SLOWER
            timed = _rounds(ready, shapes, xs, min_seconds, clock, limit)
            for name, times in timed.items():
                table[name][str(m)]["ms"] = _ms(times)
                if name == FLOAT32:
                    table[name][str(m)]["halves_ms"] = [_ms(times[:len(times) // 2]), _ms(times[len(times) // 2:])]
            base = table[FLOAT32][str(m)]["ms"]
            dropped = {n for n, t in timed.items() if len(t) < len(timed.get(FLOAT32, []))}  # past the limit in _rounds
            for name, cell in ((n, table[n][str(m)]) for n in checked if n != FLOAT32):
                if cell["ms"] is None or name in dropped or (base and cell["ms"] > limit * base):
                    out_of_race[name] = cell["note"] or f"{cell['ms'] / base:.0f}x slower than float32 at {m} rows"
    return table


def retime(table: dict, shapes: list[Shape], names: Collection[str], row_counts: Collection[int],
           seconds: float = RETIME_SECONDS, candidates: dict[str, gemms.Kernel] | None = None,
           clock: Callable[[], float] = time.perf_counter) -> None:
    """Time ``names`` again at each of ``row_counts``, in turns, ``seconds`` each, for a close call the probe's few
    rounds cannot settle, and put their ratio in ``table``: at each row count the one the probe timed fastest keeps
    its cell, the other's is that times the new ratio (so both stay comparable with the kernels not timed again); a
    cell's "rounds" says how many. A cell the probe did not time (out of the race, wrong, decode only) stays so.

    Each kernel runs RETIME_LAYERS layers of distinct weights a round: two kernels' weights in turn stay about as
    cold as the probe's six kernels' one layer did. On an AMX Xeon (2026-12-08) the probe's 4 rounds at 640 rows put
    int8-onednn at 0.86-1.49x bfloat16's time between starts; timed this way, 0.93-1.04x (and 1.09-1.17x on one
    layer, 1.15x in whole-model scoring): steady, though no estimate of the whole model's ratio."""
    candidates = candidates or gemms.candidates()
    gen = torch.Generator().manual_seed(1)
    stacked = [s for _ in range(RETIME_LAYERS) for s in shapes]  # one round: every layer's calls
    ratios: dict[int, dict[str, tuple[float, int]]] = {}
    with torch.inference_mode():
        ready = {n: (candidates[n], []) for n in names}
        for _ in range(RETIME_LAYERS):  # one float layer at a time: only the prepared weights stay
            weights = _weights(shapes, gen)
            for kernel, states in ready.values():
                states += [kernel.prepare(w) for w in weights]
        for m in row_counts:
            xs = [torch.randn(m, i, generator=gen) for i, _, _ in shapes] * RETIME_LAYERS
            timed = {n: r for n, r in ready.items() if table[n][str(m)].get("ms") is not None}  # not out or wrong
            if len(timed) < 2:
                continue
            for kernel, states in timed.values():  # warm-up: this row count's first call of each shape
                for state, x in zip(states[:len(shapes)], xs):
                    kernel.run(state, x)
            times = _rounds(timed, stacked, xs, seconds, clock)
            ratios[m] = {n: (statistics.median(t), len(t)) for n, t in times.items()}
    for m, found in ratios.items():  # written only once every row count was timed
        anchor = min(found, key=lambda n: table[n][str(m)]["ms"])
        for name, (median, rounds) in found.items():
            ms = table[anchor][str(m)]["ms"] * median / found[anchor][0]
            table[name][str(m)].update(ms=round(ms, 4), rounds=rounds)


def _weights(shapes: list[Shape], gen: torch.Generator) -> list[torch.Tensor]:
    return [torch.randn(o, i, generator=gen) * 0.02 for i, o, _ in shapes]


def drift(table: dict) -> float:
    """How far apart float32's medians over the earlier and the later half of its rounds at one row count are, at
    most (1.0: the same): load from another process for part of a probe shows here. An injected table has none."""
    halves = [c["halves_ms"] for c in table.get(FLOAT32, {}).values() if all(c.get("halves_ms") or [0])]
    return max((max(h) / min(h) for h in halves), default=1.0)


def _check(kernel, weights, xs, refs) -> tuple[dict, list | None]:
    """One kernel at one row count, prepared and run once: its cell (error against float32; "ms" still None) and
    its prepared weights, or no weights if it fails or is wrong."""
    try:
        states = [kernel.prepare(w) for w in weights]
        outs = [kernel.run(s, x) for s, x in zip(states, xs)]  # also the warm-up
        error = max(gemms.relative_error(o, r) for o, r in zip(outs, refs))
        if kernel.int8:
            error = max(error, gemms.saturation_error(kernel, len(xs[0])))
    except (RuntimeError, NotImplementedError) as exc:
        return {"ms": None, "error": None, "note": f"fails: {str(exc).splitlines()[0][:80]}"}, None
    if not error <= MAX_ERROR:  # NaN too
        return {"ms": None, "error": error, "note": f"wrong: error {error:.3g} against float32"}, None
    return {"ms": None, "error": round(error, 5), "note": ""}, states


def _rounds(ready: dict, shapes, xs, min_seconds, clock, limit: float = math.inf) -> dict[str, list[float]]:
    """Seconds per decoder layer of each kernel, in turns: at least ``MIN_ROUNDS`` rounds, and on until the kernels
    together have run ``min_seconds`` each on average (the slow ones take most of it). A kernel whose fastest of two
    rounds or more is ``limit`` times float32's median is out of the race at these rows: it takes no more turns
    (``_int_mm``'s scalar loop at 128 rows took ~1 s a turn on the AVX2-only host, 27x float32)."""
    times: dict[str, list[float]] = {name: [] for name in ready}
    running, spent, rounds = dict(ready), 0.0, 0
    while running and (rounds < MIN_ROUNDS or spent < min_seconds * len(running)):
        rounds += 1
        for name, (kernel, states) in running.items():
            t0 = clock()
            for (_, _, count), s, x in zip(shapes, states, xs):
                for _ in range(count):
                    kernel.run(s, x)
            times[name].append(clock() - t0)
            spent += times[name][-1]
        if rounds >= 2 and FLOAT32 in times:
            base = statistics.median(times[FLOAT32])
            for name in [n for n in running if n != FLOAT32 and min(times[n]) > limit * base]:
                del running[name]
    return times


def _ms(times: list[float]) -> float:
    return round(statistics.median(times) * 1000, 4)
