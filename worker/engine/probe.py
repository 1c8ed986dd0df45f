"""Which kernels this host runs fastest, measured once per host and cached (FFTW's wisdom, PyTorch's TunableOp).

Before a process loads its model, every candidate of :mod:`worker.engine.gemms` is timed
(:mod:`worker.engine.timing`) on the model's own linear shapes (one decoder layer, random weights), the
kernels taking turns, at the row counts of the two phases: a scoring
pass (``MOODQ_SENTIMENT_BATCH_SIZE`` messages of ~40 tokens) and reply drafting (decode steps of 1 and
``MOODQ_REPLY_BATCH_SIZE`` rows, and a reply prompt's prefill). Each result is compared with
float32's, an int8 one also where every value is large (``gemms.saturation_error``): a kernel further
off than ``MAX_ERROR`` (a saturating int8 GEMM) is out. The fastest correct kernel wins each phase;
scoring only considers the kernels measured label-safe (``scorable``); where one kernel comes within
``SAME_KERNEL_SLACK`` of the fastest in the other phase, both phases run it (one weight copy); two kernels
that miss that line by a margin a few rounds cannot settle are timed again, longer, first. A table
where float32's earlier and later rounds at a row count differ by more than ``MAX_DRIFT`` (another process
took the cores part of the way) is measured once more, and one still that unsteady is measured again at
the next start.

The table is cached as JSON in ``MOODQ_CACHE_DIR/probe``, keyed by the CPU model and flags, torch's
version, the thread count, the ISA caps in the environment, the model and the rows; later starts
read it. ``moodq probe`` prints it. CPU flags are only part of the key: they never pick a kernel.
"""

from __future__ import annotations

import copy
import functools
import hashlib
import json
import logging
import math
import os
import time
from collections.abc import Callable, Collection
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch

from worker.common.errors import ConfigError
from worker.engine import fusing, gemms, kernels
from worker.engine.gemms import BFLOAT16, FLOAT32
from worker.engine.timing import MAX_ERROR, drift, measure, retime

log = logging.getLogger(__name__)
VERSION = 6  # bump when what is measured changes: every host probes again (3: fused q/k/v and gate/up; 4: int8-onednn,
# int8 kernels checked where int16 saturates; 5: int8-onednn on uint8; 6: kernels timed in turns)
MAX_DRIFT = 1.3  # float32 this much faster or slower in its later rounds than in its earlier ones: measured once more
TOKENS_PER_MESSAGE = 40  # rows one message adds to a scoring pass (zh/en dev lines: 20-60 tokens)
PREFILL_ROWS = 128  # a reply prompt's own tokens beyond the cached system prompt
REPLY_TOKENS = 64  # tokens per reply, to weigh decode steps against the prefill
# Replies run the scoring kernel unless another drafts more than 25 % faster in its linear layers: a second int8
# copy of every weight costs ~0.5 GB and ~4.5 s at start (0.5B model), and a layer's share of a whole decode step
# (attention, sampling and Python the rest) is ~2/3: 25 % there is ~15 % of reply speed. Probes differ by ~15 %.
# Where that fails, scoring runs the replies' kernel if it may label and takes at most 1.25x the fastest's time: on
# an AMX Xeon (2026-12-08) a start that picked bfloat16 scoring kept its weights beside the int8 ones for good (4.47
# GB at its peak against 2.25 GB), where int8-onednn took 0.85-1.23x bfloat16's time at 640 rows over eight probes.
SAME_KERNEL_SLACK = 1.25
# First starts there kept both on probes at 1.33 and 1.40x, which 0.5 s of turns put at 1.09-1.17x: 4 rounds at 640
# rows swing that far. So two copies within CLOSE_CALL times the line (1.875x) are timed again, longer (timing.retime:
# 0.5 s per kernel and row count).
CLOSE_CALL = 1.5
ISA_CAPS = ("ATEN_CPU_CAPABILITY", "ONEDNN_MAX_CPU_ISA")
Shape = tuple[int, int, int]  # in features, out features, how many per decoder layer
# The rows every host is measured at, whatever the settings (so workers with other batch sizes share the table):
# decode steps of 1, 8 and 16 rows, a reply prompt's prefill, a scoring pass of 16 messages.
LADDER = (1, 8, 16, PREFILL_ROWS, 16 * TOKENS_PER_MESSAGE)


@dataclass(frozen=True)
class Rows:
    """Rows per call in each phase: a scoring pass, a decode step at the reply batch size, a prefill."""

    score: int
    batch: int
    prefill: int = PREFILL_ROWS

    @classmethod
    def of(cls, settings) -> "Rows":
        """The ladder's rows closest to what these settings run: a scoring pass of
        ``MOODQ_SENTIMENT_BATCH_SIZE`` messages, a decode step of ``MOODQ_REPLY_BATCH_SIZE`` rows."""
        passes = [m for m in LADDER if m >= 64]
        wanted = settings.sentiment_batch_size * TOKENS_PER_MESSAGE
        score = min(passes, key=lambda m: abs(math.log(m / wanted)))
        steps = [m for m in LADDER if m < PREFILL_ROWS]  # 1, 8, 16: the decode steps measured
        batch = next((m for m in steps if m >= settings.reply_batch_size), steps[-1])
        return cls(score=score, batch=batch)

    def measured(self) -> list[int]:
        return sorted({*LADDER, 1, self.batch, self.prefill, self.score})


@dataclass
class Plan:
    """What a process runs: the float dtype, and the kernel of each phase, with the table behind them."""

    dtype: str
    score: str
    decode: str
    cpu: str = ""  # the host's class as its flags describe it: for people, never for the choice
    table: dict = field(default_factory=dict)  # kernel -> rows -> {"ms", "error", "note"} (float32: "halves_ms" too;
    # a cell timed again as a close call: "rounds")
    rows: Rows | None = None
    layers: int = 0
    source: str = "measured"  # measured, cached (read from the probe's file), set (no probe: the float path)
    seconds: float = 0.0  # what the probe took
    file: Path | None = None  # the cached table it was read from or saved to
    scorable: frozenset = kernels.LABEL_SAFE  # the (kernel, dtype) pairs that may score labels with this model

    def __str__(self) -> str:
        return f"{self.cpu + '/' if self.cpu else ''}{self.dtype} score:{self.score} decode:{self.decode}"

    def layer_ms(self, kernel: str, rows: int) -> float | None:
        cell = self.table.get(kernel, {}).get(str(rows), {})
        return cell.get("ms") if cell.get("error") is not None and cell["error"] <= MAX_ERROR else None


def linear_shapes(config) -> list[Shape]:
    """(in, out, count) of the Linear calls in one decoder layer of a model with this config (built on
    the meta device: no memory, no weights); siblings that run as one (fusing.fusable) count as one."""
    from torch import nn
    from transformers import AutoModelForCausalLM

    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config)
    head = model.get_output_embeddings()
    counts: dict[tuple[int, int], int] = {}
    for parent in model.modules():
        linears = {n: c for n, c in parent.named_children() if type(c) is nn.Linear and c is not head}
        groups = fusing.fusable(parent)
        calls = [[linears.pop(n) for n in names] for names in groups] + [[c] for c in linears.values()]
        for call in calls:
            shape = (call[0].in_features, sum(c.out_features for c in call))
            counts[shape] = counts.get(shape, 0) + 1
    layers = max(1, getattr(config, "num_hidden_layers", 1))
    return sorted((i, o, max(1, round(n / layers))) for (i, o), n in counts.items())


def phase_ms(table: dict, kernel: str, phase: str, rows: Rows) -> float | None:
    """What a kernel costs per decoder layer in a phase: one scoring pass; or one reply, its prefill
    plus its share of ``REPLY_TOKENS`` decode steps at the batch size. None if not measured or wrong."""
    def ms(m: int) -> float | None:
        cell = table.get(kernel, {}).get(str(m), {})
        return cell.get("ms") if cell.get("error") is not None and cell["error"] <= MAX_ERROR else None

    if phase == "score":
        return ms(rows.score)
    step, prefill = ms(rows.batch), ms(rows.prefill)
    return None if step is None or prefill is None else REPLY_TOKENS / rows.batch * step + prefill


def scorable(int8_scoring: bool | Collection[tuple[str, str]] = True) -> frozenset:
    """The (kernel, dtype) pairs that may score labels: True, those ``kernels.LABEL_SAFE`` lists (measured with the
    default prompts and model); False, float only; else the pairs a prompt file lists as measured for its model."""
    pairs = kernels.LABEL_SAFE if int8_scoring is True else frozenset(int8_scoring or ())
    if unknown := sorted(k for k, _ in pairs if k not in (*gemms.INT8, FLOAT32, BFLOAT16)):
        raise ConfigError(f"int8_scoring names kernels moodq does not have: {unknown}; it has {list(gemms.INT8)}")
    return pairs


def choose(table: dict, rows: Rows, dtype: str = "auto", quant: str = "auto",
           int8_scoring: bool | Collection[tuple[str, str]] = True) -> tuple[str, str, str]:
    """(dtype, score kernel, decode kernel): the fastest correct kernel per phase among those the
    settings allow. ``dtype`` auto is bfloat16 where its GEMM measured faster than float32's.
    ``quant``: none (float only), int8-decode (int8 replies), int8 (int8 both), auto (fastest).
    ``int8_scoring``: which int8 kernels may score (:func:`scorable`); False: scoring in float."""
    dtype, picked, close = _fastest(table, rows, dtype, quant, int8_scoring)
    if close(picked["score"], picked["decode"], "decode", SAME_KERNEL_SLACK):
        picked["decode"] = picked["score"]  # one weight copy: less memory and a faster start, for a few % of drafting
    elif close(picked["decode"], picked["score"], "score", SAME_KERNEL_SLACK):
        picked["score"] = picked["decode"]  # the same, paid in scoring, when the probe's noise is all between them
    return dtype, picked["score"], picked["decode"]


def _fastest(table: dict, rows: Rows, dtype: str = "auto", quant: str = "auto",
             int8_scoring: bool | Collection[tuple[str, str]] = True) -> tuple[str, dict, Callable]:
    """The dtype, the fastest allowed kernel per phase, and ``close(kernel, best, phase, slack)``: whether ``kernel``
    may run ``phase`` and does it within ``slack`` of ``best``."""
    def cost(kernel: str, phase: str) -> float | None:
        return phase_ms(table, kernel, phase, rows)

    if dtype == "auto":
        bf16, fp32 = cost(BFLOAT16, "score"), cost(FLOAT32, "score")
        dtype = BFLOAT16 if bf16 is not None and fp32 is not None and bf16 < fp32 else FLOAT32
    int8, allowed = list(gemms.INT8), scorable(int8_scoring)
    safe = [k for k in int8 if (k, dtype) in allowed]
    pools = {"score": {"none": [dtype], "int8-decode": [dtype], "int8": safe, "auto": [dtype, *safe]}[quant],
             "decode": {"none": [dtype], "int8-decode": int8, "int8": int8, "auto": [dtype, *int8]}[quant]}
    picked = {}
    for phase, pool in pools.items():
        timed = [(c, k) for k in pool if (c := cost(k, phase)) is not None]
        picked[phase] = min(timed)[1] if timed else dtype

    def close(kernel: str, best: str, phase: str, slack: float) -> bool:
        mine = cost(kernel, phase)
        return kernel in pools[phase] and mine is not None and mine <= slack * cost(best, phase)

    return dtype, picked, close


def close_call(table: dict, rows: Rows, *settings) -> tuple[tuple[str, str], list[int]] | None:
    """The two kernels of a plan that keeps two weight copies, where CLOSE_CALL times the slack would have kept one,
    and the rows of each phase that would give way at that slack: a margin the probe's few rounds cannot be trusted
    with (those cells are timed again, longer, before it counts)."""
    _, score, decode = choose(table, rows, *settings)
    *_, close = _fastest(table, rows, *settings)
    wide = SAME_KERNEL_SLACK * CLOSE_CALL
    counts = ([rows.batch, rows.prefill] if close(score, decode, "decode", wide) else []) + \
        ([rows.score] if close(decode, score, "score", wide) else [])
    return ((score, decode), sorted(set(counts))) if score != decode and counts else None


def host() -> dict:
    """What a kernel's speed and rounding depend on here: the CPU, torch, the threads, the ISA caps."""
    from worker.engine import cpu

    return {"cpu": cpu.model_name(), "flags": hashlib.sha256(" ".join(cpu.flags()).encode()).hexdigest()[:16],
            "torch": torch.__version__, "threads": torch.get_num_threads(),
            "isa_caps": {k: os.environ.get(k) for k in ISA_CAPS}}


def host_key(model_id: str, shapes: list[Shape], rows: Rows) -> dict:
    """Everything a measurement depends on; a change in any of them means measuring again."""
    return {"version": VERSION, **host(), "model": model_id, "shapes": [list(s) for s in shapes], "rows": asdict(rows)}


def plan_for(settings, config, model_id: str, fresh: bool = False, measurer: Callable = measure,
             int8_scoring: bool | Collection[tuple[str, str]] = True, retimer: Callable = retime) -> Plan:
    """The plan for this host and model: read from the cache, or measured (once per host: a file lock
    keeps a second process waiting for the first one's table instead of measuring beside it). A close call
    for one weight copy (:func:`close_call`) has its two kernels timed again, longer, before the table is saved."""
    from worker.engine import cachefiles, cpu

    shapes, rows, ladder = linear_shapes(config), Rows.of(settings), Rows(score=LADDER[-1], batch=16)
    key = host_key(model_id, shapes, ladder)
    folder = Path(settings.cache_dir) / "probe"
    folder.mkdir(parents=True, exist_ok=True)
    name = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:20]
    file = folder / f"{name}.json"
    settle = functools.partial(_settle, rows=rows, shapes=shapes, retimer=retimer,
                               settings=(settings.dtype, settings.quant, int8_scoring))
    with cachefiles.only_one(file):
        saved = _read(file, key) if not fresh else None
        source = "measured" if saved is None else "cached"
        if saved is None:
            started = time.perf_counter()
            table, times = _measure_steadily(measurer, shapes, ladder)
            settle(table)
            saved = {"key": key, "table": table, "seconds": round(time.perf_counter() - started, 2),
                     "measured_at": time.strftime("%Y-%m-%d %H:%M:%S"), "times_measured": times}
            cachefiles.save_json(file, saved)
            log.info("kernel probe: measured in %.1f s, saved to %s", saved["seconds"], file)
        elif settle(saved["table"]):
            cachefiles.save_json(file, saved)
    dtype, score, decode = choose(saved["table"], rows, settings.dtype, settings.quant, int8_scoring)
    return Plan(dtype, score, decode, cpu.cpu_class(), saved["table"], rows,
                getattr(config, "num_hidden_layers", 0), source, saved["seconds"], file, scorable(int8_scoring))


def _measure_steadily(measurer: Callable, shapes: list[Shape], ladder: Rows) -> tuple[dict, int]:
    """The table, and how many times it was measured: twice where the host's speed moved while it measured."""
    table = measurer(shapes, ladder)
    if (moved := drift(table)) <= MAX_DRIFT:
        return table, 1
    log.warning("kernel probe: float32's earlier and later rounds %.2fx apart, the host is busy; measuring again",
                moved)
    table = min(table, measurer(shapes, ladder), key=drift)  # the steadier of two
    if (still := drift(table)) > MAX_DRIFT:
        log.warning("kernel probe: still %.2fx apart; used, and measured again at the next start", still)
    return table, 2


def _settle(table: dict, rows: Rows, shapes: list[Shape], retimer: Callable, settings: tuple) -> bool:
    """Time a close call for one weight copy (:func:`close_call`) again, longer, unless that was tried (a table cached
    by a process with other settings may not have been): whether ``table`` changed. Not in a table measured again at
    the next start anyway (too unsteady). The timing runs on a copy: a failure keeps every probe cell, marked as
    tried (0 rounds), so later starts do not try again."""
    close = close_call(table, rows, *settings) if drift(table) <= MAX_DRIFT else None
    if close is None:
        return False
    pair, counts = close
    cells = {(k, str(m)) for k in pair for m in counts if table[k][str(m)].get("ms") is not None}
    if all("rounds" in table[k][m] for k, m in cells):
        return False
    log.info("kernel probe: %s and %s near the line for one weight copy; timing them again at %s rows", *pair, counts)
    trial = copy.deepcopy(table)
    try:
        retimer(trial, shapes, pair, counts)
    except (RuntimeError, NotImplementedError, MemoryError) as exc:
        log.warning("kernel probe: timing %s and %s again failed (%s); the probe's timings stand", *pair, exc)
        trial = table
    for k, m in cells:
        table[k][m] = {**trial[k][m], "rounds": trial[k][m].get("rounds", 0)}
    return True


def _read(file: Path, key: dict) -> dict | None:
    try:
        saved = json.loads(file.read_text())
    except (OSError, ValueError):
        return None
    return saved if saved.get("key") == key and drift(saved.get("table", {})) <= MAX_DRIFT else None
