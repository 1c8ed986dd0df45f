"""The compute path is measured, not read from CPU flags: the kernel probe, its choice, its cache, and
the layers that run what it picked."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import torch
from torch import nn

from tests.conftest import DATA
from worker.common.settings import load_settings
from worker.engine import fusing, gemms, kernels, probe, probetable
from worker.engine.gemms import BFLOAT16, FBGEMM, FLOAT32, INTMM, ONEDNN, WEIGHT_ONLY
from worker.engine.int8store import per_channel_int8
from worker.engine.kernels import PhaseLinear, decoding
from worker.quality.evaluate import read_labeled

ROWS = probe.Rows(score=640, batch=8)


def table_of(ms: dict[str, float], wrong: tuple[str, ...] = ()) -> dict:
    """An injected probe table: the same time per layer at every row count, ``wrong`` kernels off by far."""
    return {k: {str(m): {"ms": None if k in wrong else t * m, "error": 0.9 if k in wrong else 0.01, "note": ""}
                for m in ROWS.measured()} for k, t in ms.items()}


def test_the_fastest_correct_kernel_wins_each_phase_from_injected_timings():
    """Injected timings (no host involved): a host like ../shared/MEASURED.md's AVX2 EPYC, where bf16 and
    _int_mm are slow and fbgemm fast, and one where oneDNN's int8 scores fastest of the kernels that may label
    with bfloat16 activations (_int_mm, faster still, may not) and fbgemm decodes fastest."""
    avx2 = table_of({FLOAT32: 1.0, BFLOAT16: 6.0, FBGEMM: 0.3, INTMM: 10.0, WEIGHT_ONLY: 0.5})
    assert probe.choose(avx2, ROWS) == (FLOAT32, FBGEMM, FBGEMM)
    mixed = table_of({FLOAT32: 1.0, BFLOAT16: 0.4, FBGEMM: 0.3, INTMM: 0.2, ONEDNN: 0.25, WEIGHT_ONLY: 0.5})
    mixed[FBGEMM][str(ROWS.batch)]["ms"] = mixed[FBGEMM][str(ROWS.prefill)]["ms"] = 0.01
    assert probe.choose(mixed, ROWS) == (BFLOAT16, ONEDNN, FBGEMM)


def test_on_the_real_avx2_hosts_table_it_picks_float32_and_fbgemm():
    """../shared/MEASURED.md's kernel table from a real AVX2-only EPYC (no VNNI, no bf16), 2026-11-30, ratios
    to float32 at 1/8/64/512 rows: _int_mm is a scalar loop there, bf16 emulated; fbgemm wins both phases."""
    fp32 = {1: 1.66, 8: 5.01, 64: 15.3, 512: 55.0}
    ratios = {INTMM: (0.04, 0.18, 0.10, 0.05), FBGEMM: (6.76, 10.29, 5.09, 2.43),
              WEIGHT_ONLY: (5.05, 2.57, 1.39, 0.63), BFLOAT16: (2.98, 1.07, 0.45, 0.17)}
    table = {FLOAT32: {str(m): {"ms": ms, "error": 0.0} for m, ms in fp32.items()}}
    for k, rs in ratios.items():
        table[k] = {str(m): {"ms": fp32[m] / r, "error": 0.01} for m, r in zip(fp32, rs)}
    assert probe.choose(table, probe.Rows(score=512, batch=8, prefill=64)) == (FLOAT32, FBGEMM, FBGEMM)


def test_a_wrong_kernel_is_never_picked_even_when_fastest():
    table = table_of({FLOAT32: 1.0, BFLOAT16: 6.0, FBGEMM: 0.5, INTMM: 0.01}, wrong=(INTMM,))
    assert probe.choose(table, ROWS) == (FLOAT32, FBGEMM, FBGEMM)


def test_speed_alone_never_lets_a_kernel_score_labels(monkeypatch):
    """Weight-only int8 was never measured on the dev sets: fastest, it drafts replies but never scores."""
    table = table_of({FLOAT32: 1.0, BFLOAT16: 6.0, FBGEMM: 0.9, INTMM: 10.0, WEIGHT_ONLY: 0.01})
    assert probe.choose(table, ROWS) == (FLOAT32, FBGEMM, WEIGHT_ONLY)
    monkeypatch.setattr(kernels, "LABEL_SAFE", frozenset({(FLOAT32, FLOAT32)}))
    assert probe.choose(table, ROWS)[1] == FLOAT32


def test_settings_override_the_measured_choice():
    table = table_of({FLOAT32: 1.0, BFLOAT16: 0.5, FBGEMM: 0.2, INTMM: 0.3, WEIGHT_ONLY: 0.4})
    assert probe.choose(table, ROWS, "float32", "none") == (FLOAT32, FLOAT32, FLOAT32)
    assert probe.choose(table, ROWS, "auto", "int8-decode") == (BFLOAT16, BFLOAT16, FBGEMM)
    assert probe.choose(table, ROWS, "float32", "int8") == (FLOAT32, FBGEMM, FBGEMM)


class Wrong(gemms.Kernel):
    """A fast kernel with a wrong result (what a saturating int8 GEMM looks like to the probe)."""

    name = "int8-wrong"

    def prepare(self, weight):
        return weight.shape[0]

    def run(self, out_features, x):
        return x.new_zeros(*x.shape[:-1], out_features)


class Broken(gemms.Kernel):
    name = "int8-broken"

    def prepare(self, weight):
        raise RuntimeError("no kernel for this CPU")


class Saturating(gemms.Kernel):
    """A fake (named as such) of an int8 GEMM without VNNI: u8 x s8 products summed in pairs into int16, which
    saturates; within 2 % on Gaussian data as wide as the model's (896), far off where all values are large."""

    name = "int8-saturating"

    def prepare(self, weight, int8=None):
        return per_channel_int8(weight)

    def run(self, state, x):
        q, wscale = state[0].float(), state[1]
        a = x.reshape(-1, x.shape[-1]).float()
        ascale = a.abs().amax(dim=1, keepdim=True).clamp(min=1e-8) / 127
        u8 = (a / ascale).round() + 128  # s8 activations shifted to u8, the shift taken off after
        products = u8[:, None, :] * q[None]
        acc = (products[..., 0::2] + products[..., 1::2]).clamp(-32768, 32767).sum(-1) - 128 * q.sum(1)
        return (acc * ascale * wscale).reshape(*x.shape[:-1], -1).to(x.dtype)


def test_a_kernel_that_saturates_only_on_large_values_is_out():
    rows = probe.Rows(score=32, batch=4, prefill=16)
    shapes = [(896, 48, 1)]
    gen = torch.Generator().manual_seed(1)
    w, x = torch.randn(48, 896, generator=gen) * 0.02, torch.randn(16, 896, generator=gen)
    kernel = Saturating()
    assert gemms.relative_error(kernel.run(kernel.prepare(w), x), x @ w.t()) < probe.MAX_ERROR  # Gaussian data: passes
    found = probe.measure(shapes, rows, {FLOAT32: gemms.Float(FLOAT32), FBGEMM: gemms.Fbgemm(),
                                         INTMM: gemms.IntMM(), "int8-saturating": kernel}, min_seconds=0.01)
    assert all(found["int8-saturating"][str(m)]["ms"] is None for m in rows.measured())
    assert found["int8-saturating"]["1"]["note"].startswith("wrong")
    for k in (FBGEMM, INTMM):  # exact there (timed out of the race past a few rows where _int_mm is a scalar loop)
        assert found[k]["1"]["ms"] > 0 and not any(c["note"].startswith("wrong") for c in found[k].values())


def test_the_probe_marks_wrong_and_failing_kernels_on_real_timings():
    """The real measuring code, on small shapes: the wrong kernel is timed out of the race, not picked."""
    rows = probe.Rows(score=64, batch=4, prefill=16)
    found = probe.measure([(64, 96, 2)], rows, {FLOAT32: gemms.Float(FLOAT32), FBGEMM: gemms.Fbgemm(),
                                                 "int8-wrong": Wrong(), "int8-broken": Broken()}, min_seconds=0.01)
    assert found["int8-wrong"]["1"]["error"] > 0.9  # checked at the first row count, then out of the race
    for m in rows.measured():
        assert found["int8-wrong"][str(m)]["ms"] is None and found["int8-wrong"][str(m)]["note"].startswith("wrong")
        assert found["int8-broken"][str(m)]["note"].startswith("fails: no kernel")
        assert found[FLOAT32][str(m)]["error"] == 0 and found[FLOAT32][str(m)]["ms"] > 0
    assert probe.phase_ms(found, "int8-wrong", "score", rows) is None
    assert probe.phase_ms(found, FLOAT32, "decode", rows) > 0


class Ticking(gemms.Kernel):
    """A fake (named as such) of a kernel's speed: runs ``kernel`` and moves an injected clock ``seconds`` per call."""

    def __init__(self, kernel, seconds, clock):
        self.kernel, self.seconds, self.clock, self.name, self.int8, self.calls = kernel, seconds, clock, kernel.name, kernel.int8, {}

    def prepare(self, weight, int8=None):
        return self.kernel.prepare(weight)

    def run(self, state, x):
        self.calls[len(x)] = self.calls.get(len(x), 0) + 1
        self.clock[0] += self.seconds * len(x) ** 0.5
        return self.kernel.run(state, x)


def test_a_kernel_far_slower_than_float32_at_few_rows_is_not_timed_at_more():
    """oneDNN's reference int8 loop (int8 activations on an EPYC with VNNI and no AMX) took 43x float32's time at
    1 row and 649x at 128: timed at every row count, it cost a probe 110 s. Now one row count decides it."""
    now = [0.0]
    rows = probe.Rows(score=64, batch=4, prefill=16)
    crawling = Ticking(gemms.IntMM(), 0.05, now)  # correct, 50x float32's time
    quick = Ticking(gemms.Fbgemm(), 0.003, now)  # correct, 3x float32's time: under both limits, timed everywhere
    found = probe.measure([(64, 96, 1)], rows, {FLOAT32: Ticking(gemms.Float(FLOAT32), 0.001, now),
                                               INTMM: crawling, FBGEMM: quick}, clock=lambda: now[0])
    assert found[INTMM]["1"]["ms"] > 0 and set(crawling.calls) == {1}  # its saturation check runs at those rows too
    assert crawling.calls[1] <= 4 < 10 < quick.calls[1]  # 2 turns (and its checks' 2 runs); the others took more
    assert all(found[INTMM][str(m)]["note"] == "50x slower than float32 at 1 rows" for m in rows.measured()[1:])
    assert all(found[FBGEMM][str(m)]["ms"] > 0 for m in rows.measured())


def tiny_config(layers: int = 4):
    from transformers import Qwen2Config

    return Qwen2Config(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=layers,
                       num_attention_heads=2, num_key_value_heads=1, tie_word_embeddings=True)


def test_a_cached_choice_is_reused_and_a_changed_key_probes_again(tmp_path, monkeypatch):
    calls = []

    def measurer(shapes, rows):
        calls.append(shapes)
        return table_of({FLOAT32: 1.0, BFLOAT16: 2.0, FBGEMM: 0.5, INTMM: 0.6, WEIGHT_ONLY: 0.7})

    settings = load_settings(cache_dir=str(tmp_path))
    first = probe.plan_for(settings, tiny_config(), "tiny", measurer=measurer)
    again = probe.plan_for(settings, tiny_config(), "tiny", measurer=measurer)
    assert len(calls) == 1 and first.source == "measured" and again.source == "cached"
    assert (again.dtype, again.score, again.decode) == (FLOAT32, FBGEMM, FBGEMM)
    saved = json.loads(next((tmp_path / "probe").glob("*.json")).read_text())
    assert saved["key"]["model"] == "tiny" and saved["key"]["shapes"] == [[32, 32, 1], [32, 64, 1], [32, 128, 1], [64, 32, 1]]
    monkeypatch.setenv("ONEDNN_MAX_CPU_ISA", "AVX2")  # an ISA cap changes what kernels run
    probe.plan_for(settings, tiny_config(), "tiny", measurer=measurer)
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1 if threads > 1 else 2)
        probe.plan_for(settings, tiny_config(), "tiny", measurer=measurer)
    finally:
        torch.set_num_threads(threads)
    assert len(calls) == 3
    other = probe.plan_for(load_settings(cache_dir=str(tmp_path), reply_batch_size=4, sentiment_batch_size=2),
                           tiny_config(), "tiny", measurer=measurer)
    assert len(calls) == 3 and other.source == "cached"  # other batch sizes read the same ladder of rows


def test_a_probe_measured_while_the_host_was_busy_measures_again(tmp_path):
    """Float32's earlier and later rounds at a row count: a table where the two are far apart (another process took
    the cores part of the way) is measured once more, and the steadier one kept."""
    busy = table_of({FLOAT32: 1.0, BFLOAT16: 2.0, FBGEMM: 0.5})  # busy for the earlier half of the rounds
    busy[FLOAT32]["8"]["halves_ms"] = [busy[FLOAT32]["8"]["ms"], busy[FLOAT32]["8"]["ms"] / 2]
    quiet = table_of({FLOAT32: 1.0, BFLOAT16: 2.0, FBGEMM: 0.5})
    quiet[FLOAT32]["8"]["halves_ms"] = [quiet[FLOAT32]["8"]["ms"], quiet[FLOAT32]["8"]["ms"] * 1.05]
    assert probe.drift(busy) == 2.0 and probe.drift(quiet) == pytest.approx(1.05) and probe.drift(table_of({FLOAT32: 1})) == 1.0
    tables = [busy, quiet]
    settings = load_settings(cache_dir=str(tmp_path))
    plan = probe.plan_for(settings, tiny_config(), "tiny", measurer=lambda shapes, rows: tables.pop(0))
    assert not tables and plan.table is quiet
    worse = json.loads(json.dumps(busy))
    worse[FLOAT32]["8"]["halves_ms"] = [worse[FLOAT32]["8"]["ms"], worse[FLOAT32]["8"]["ms"] / 3]
    tables = [busy, worse, quiet]  # busy twice: the steadier of the two is used, and the next start measures again
    plan = probe.plan_for(settings, tiny_config(), "tiny", fresh=True, measurer=lambda shapes, rows: tables.pop(0))
    assert plan.table is busy and len(tables) == 1
    again = probe.plan_for(settings, tiny_config(), "tiny", measurer=lambda shapes, rows: tables.pop(0))
    assert again.source == "measured" and again.table is quiet and not tables
    found = probe.measure([(64, 96, 1)], probe.Rows(score=64, batch=4, prefill=16), {FLOAT32: gemms.Float(FLOAT32)},
                          min_seconds=0.01)  # the real measuring code keeps float32's two halves at every row count
    assert all(min(c["halves_ms"]) > 0 for c in found[FLOAT32].values())


def test_a_burst_of_load_slows_every_kernel_alike_not_one_kernels_cell():
    """The kernels take turns, round after round: another process busy for a moment (here: 4 calls in a row 8x
    slower) slows a round or two of every kernel, and every median stands. Timed one kernel after another (the
    probe to 72fbc7a), those 4 calls were all of fbgemm's at 1 row: 4.0 ms, 8x its time, behind _int_mm's 0.6, and
    float32 timed before and after it saw nothing (drift 1.0)."""
    now, calls, hit = [0.0], [0], set()

    class Bursty(Ticking):
        def run(self, state, x):
            calls[0] += 1
            slow = 8 if 19 <= calls[0] < 23 else 1
            if slow > 1:
                hit.add(self.name)
            self.clock[0] += self.seconds * len(x) ** 0.5 * (slow - 1)
            return super().run(state, x)

    rows = probe.Rows(score=64, batch=4, prefill=16)
    kernels = {FLOAT32: Bursty(gemms.Float(FLOAT32), 0.001, now), FBGEMM: Bursty(gemms.Fbgemm(), 0.0005, now),
               INTMM: Bursty(gemms.IntMM(), 0.0006, now)}
    found = probe.measure([(64, 96, 1)], rows, kernels, min_seconds=0.015, clock=lambda: now[0])
    assert calls[0] > 23 and len(hit) >= 2  # the burst fell on the turns of more than one kernel
    for m in rows.measured():
        assert found[FBGEMM][str(m)]["ms"] < found[INTMM][str(m)]["ms"] < found[FLOAT32][str(m)]["ms"]
    assert found[FBGEMM]["1"]["ms"] == pytest.approx(0.5) and probe.drift(found) < probe.MAX_DRIFT


def test_a_kernel_skipped_at_one_row_count_is_timed_at_the_next_and_a_failing_float32_stops_nothing():
    """Weight-only is not timed at a scoring pass's rows (it may not label), and that alone keeps it in the race at
    larger row counts. A float32 that fails leaves no base to compare with: the others are timed, none is dropped."""
    now = [0.0]
    rows = probe.Rows(score=64, batch=4, prefill=16)  # a scoring pass below the ladder's 128 and 640 rows
    quick = Ticking(gemms.WeightOnly(), 0.0005, now)
    found = probe.measure([(64, 96, 1)], rows, {FLOAT32: Ticking(gemms.Float(FLOAT32), 0.001, now),
                                               WEIGHT_ONLY: quick}, clock=lambda: now[0])
    assert found[WEIGHT_ONLY]["64"]["note"] == "decode only"
    assert found[WEIGHT_ONLY]["128"]["ms"] > 0 and found[WEIGHT_ONLY]["640"]["ms"] > 0
    broken = probe.measure([(64, 96, 1)], rows, {FLOAT32: Broken(), FBGEMM: Ticking(gemms.Fbgemm(), 0.0005, now)},
                           clock=lambda: now[0])
    assert all(c["note"].startswith("fails") for c in broken[FLOAT32].values())
    assert all(c["ms"] > 0 for c in broken[FBGEMM].values()) and probe.drift(broken) == 1.0


def test_a_kernel_that_stopped_taking_turns_stays_out_though_float32_slowed_later():
    """A kernel past the limit in its first two turns takes no more; float32 slowing a little in later rounds (under
    the busy check's 1.3x) must not bring it back into the race on its two-turn median."""
    now = [0.0]

    class Paced(Ticking):  # a fake (named as such): ``seconds`` per call, float32's rising after its first 3 calls
        def run(self, state, x):
            self.calls[0] = self.calls.get(0, 0) + 1
            self.clock[0] += self.seconds * (1.25 if self.name == FLOAT32 and self.calls[0] > 3 else 1)
            return self.kernel.run(state, x)

    rows = probe.Rows(score=64, batch=4, prefill=1)  # every row count a prefill's or more: the limit is 4x
    found = probe.measure([(64, 96, 1)], rows, {FLOAT32: Paced(gemms.Float(FLOAT32), 0.001, now),
                                               INTMM: Paced(gemms.IntMM(), 0.0045, now)}, clock=lambda: now[0])
    assert found[INTMM]["1"]["ms"] == pytest.approx(4.5) and found[FLOAT32]["1"]["ms"] == pytest.approx(1.25)
    assert all(found[INTMM][str(m)]["ms"] is None for m in rows.measured()[1:])


def test_a_layer_keeps_only_the_weights_its_kernels_read():
    """Memory follows the path: int8 in both phases keeps no float weight; float scoring keeps it."""
    torch.manual_seed(0)
    lin = nn.Linear(64, 48)
    both = PhaseLinear(lin, gemms.Fbgemm(), gemms.Fbgemm())
    assert not hasattr(both, "weight") and [n for n, _ in both.named_parameters()] == ["bias"]
    mixed = PhaseLinear(lin, gemms.Float(FLOAT32), gemms.IntMM())
    assert mixed.kernels["score"][1].data_ptr() == lin.weight.data_ptr()  # the float weight itself, no copy
    x = torch.randn(3, 5, 64)
    with torch.inference_mode():
        ref = lin(x)
        assert torch.equal(mixed(x), ref)  # scoring: the float weights, exactly
        for layer in (both, mixed):
            with decoding():
                out = layer(x)
            assert out.shape == ref.shape and (out - ref).norm() / ref.norm() < 0.03


def test_apply_swaps_every_linear_and_scores_the_edge_layers_in_float():
    from transformers import Qwen2ForCausalLM

    depth, edge = 8, kernels.SCORE_FLOAT_LAYERS
    model = Qwen2ForCausalLM(tiny_config(depth))
    assert kernels.apply(model, FLOAT32, FBGEMM, INTMM) == depth * 7 + 1
    layers = {n: m for n, m in model.named_modules() if isinstance(m, PhaseLinear)}
    assert all(m.kernels["decode"][0].name == INTMM for m in layers.values())
    float_scoring = {n for n, m in layers.items() if m.kernels["score"][0].name == FLOAT32}
    edges = [*range(edge), *range(depth - edge, depth)]
    assert float_scoring == {n for n in layers if any(f".layers.{i}." in n for i in edges) or n == "lm_head"}
    assert len(float_scoring) == 2 * edge * 7 + 1 < len(layers)  # the middle layers score in int8
    assert model.get_output_embeddings().weight is model.get_input_embeddings().weight  # tied, kept


def test_siblings_of_one_input_run_as_one_int8_call_with_the_same_result(monkeypatch):
    """q/k/v and gate/up run each int8 phase as one call on their stacked weights (4 calls a middle layer, not 7),
    and the model's outputs are exactly those of one call per projection; float scoring stays per projection."""
    from transformers import Qwen2ForCausalLM

    torch.manual_seed(0)
    depth = 2 * kernels.SCORE_FLOAT_LAYERS + 2
    model = Qwen2ForCausalLM(tiny_config(depth)).eval()
    ids = torch.randint(0, model.config.vocab_size, (3, 9))
    calls: list[int] = []
    real_run = gemms.Fbgemm.run
    monkeypatch.setattr(gemms.Fbgemm, "run", lambda self, state, x: calls.append(1) or real_run(self, state, x))
    out = {}
    for fuse in (fusing.FUSE, ()):
        monkeypatch.setattr(fusing, "FUSE", fuse)
        swapped = Qwen2ForCausalLM(tiny_config(depth)).eval()
        swapped.load_state_dict(model.state_dict())
        kernels.apply(swapped, FLOAT32, FBGEMM, FBGEMM)
        calls.clear()
        with torch.inference_mode():
            scored = swapped(ids).logits
            n_score = len(calls)
            with decoding():
                drafted = swapped(ids).logits
        out[bool(fuse)] = (scored, drafted, n_score, len(calls) - n_score)
    middle = depth - 2 * kernels.SCORE_FLOAT_LAYERS
    assert out[True][2:] == (middle * 4, depth * 4 + 1) and out[False][2:] == (middle * 7, depth * 7 + 1)
    assert torch.equal(out[True][0], out[False][0]) and torch.equal(out[True][1], out[False][1])
    assert fusing._last_group_call.x is None  # every sibling took its slice: no layer's outputs held after the pass


@pytest.mark.model
def test_the_engine_runs_what_its_probe_picked(engine):
    """The default path: every decoder Linear runs the plan's kernels, and each picked kernel was
    measured correct on this host (its error against float32 is in the table)."""
    plan = engine.plan
    layers = [m for m in engine.model.modules() if isinstance(m, PhaseLinear)]
    if (plan.score, plan.decode) != (plan.dtype, plan.dtype):
        assert layers and all(m.kernels["decode"][0].name == plan.decode for m in layers)
        float_edges = 2 * kernels.SCORE_FLOAT_LAYERS * 7 + 1 if plan.score != plan.dtype else 0  # and the head
        assert sum(m.kernels["score"][0].name == plan.score for m in layers) == len(layers) - float_edges
    for kernel in {plan.score, plan.decode}:
        errors = [c["error"] for c in plan.table[kernel].values() if c["ms"] is not None]
        assert errors and max(errors) <= probe.MAX_ERROR
    assert str(plan) == engine.path and plan.source in ("measured", "cached")


@pytest.mark.model
def test_int8_scoring_agrees_with_the_float_model(engine):
    """On 16 fixed dev lines (the 8 shortest of each language in the file), a float model turned to the int8 scoring this host would run
    (the fastest label-safe int8 kernel for its dtype, the layers at each end float) gives the same label on
    at least 15 of them; layers were really swapped. (On all 800 dev lines the label-safe kernels agree
    with float on 97-98 %: bench/paths.py. The shortest 16, not the file's 64: float32 scoring of 32 short lines
    on an AVX2-only EPYC took 8 s of the test's 20-27 s, of 64 lines ~40 s.)"""
    from worker.engine.loading import Loaded, load
    from worker.engine.model import Engine

    plan = engine.plan
    safe = [(probe.phase_ms(plan.table, k, "score", plan.rows), k) for k in gemms.INT8
            if (k, plan.dtype) in plan.scorable and probe.phase_ms(plan.table, k, "score", plan.rows)]
    if not safe:
        pytest.skip("no int8 kernel is correct and label-safe on this host: scoring stays float")
    kernel = min(safe)[1]
    plain = load(load_settings(threads=2, dtype=plan.dtype, quant="none"))
    assert not any(isinstance(m, PhaseLinear) for m in plain.model.modules())
    base = Engine(plain, engine.prompts, max_text_tokens=engine.scorer.max_text_tokens)
    rows = read_labeled(DATA / "agreement.jsonl")
    texts = {lang: sorted((r["text"] for r in rows if engine.prompts.language_of(r["text"]) == lang), key=len)[:8]
             for lang in ("zh", "en")}
    before = {lang: base.judge(t, lang) for lang, t in texts.items()}
    from worker.engine import embedded, int8store

    # the int8 copies the engine fixture's load kept: not quantised again
    copies = int8store.Int8Store(int8store.file_for(load_settings().cache_dir, embedded.SHA256, plan.dtype))
    assert kernels.apply(plain.model, plan.dtype, kernel, plan.dtype, copies) > 0
    variant = Engine(Loaded(plain.model, engine.tok, engine.model_id, 0, True), engine.prompts,
                     max_text_tokens=engine.scorer.max_text_tokens)
    after = {lang: variant.judge(t, lang) for lang, t in texts.items()}
    same = sum(a.label == b.label for lang in texts for a, b in zip(before[lang], after[lang]))
    assert sum(map(len, texts.values())) == 16 and same >= 15, f"{kernel} agrees with the float path on {same}/16"
    assert [j.scores for j in after["en"][:4]] != [j.scores for j in before["en"][:4]]  # int8 really ran


def test_a_prompt_file_not_measured_with_int8_scores_in_float():
    """int8_scoring is off unless a prompt file says its labels were measured with int8 (default.yaml was)."""
    table = table_of({FLOAT32: 1.0, BFLOAT16: 6.0, FBGEMM: 0.2, INTMM: 0.3, WEIGHT_ONLY: 0.4})
    assert probe.choose(table, ROWS, int8_scoring=False) == (FLOAT32, FLOAT32, FBGEMM)
    assert probe.choose(table, ROWS, int8_scoring=True)[1] == FBGEMM


def test_int8_scores_labels_only_on_the_paths_measured_with_that_model(tmp_path):
    """default.yaml records, per model, the dtype:kernel paths whose labels were measured within 1 point of float: the
    1.5B only on bfloat16 + int8-onednn, so on a float32 host (AVX2-only) its labels are scored in float; a model
    the file does not name (any hub id) scores in float everywhere."""
    from worker.common.errors import ConfigError
    from worker.common.prompts import load_prompts

    prompts = load_prompts(DATA.parent.parent / "prompts" / "default.yaml")
    large, small, other = (prompts.int8_scores(m) for m in ("embedded-large", "embedded", "Qwen/Qwen2.5-0.5B-Instruct"))
    assert large == {(ONEDNN, BFLOAT16)} and (FBGEMM, FLOAT32) in small and other is False
    avx2 = table_of({FLOAT32: 1.0, BFLOAT16: 6.0, FBGEMM: 0.2, INTMM: 0.3, ONEDNN: 0.25, WEIGHT_ONLY: 0.4})
    assert probe.choose(avx2, ROWS, int8_scoring=large)[:2] == (FLOAT32, FLOAT32)
    assert probe.choose(avx2, ROWS, int8_scoring=small)[:2] == (FLOAT32, FBGEMM)
    amx = table_of({FLOAT32: 1.0, BFLOAT16: 0.5, FBGEMM: 0.3, INTMM: 0.2, ONEDNN: 0.25, WEIGHT_ONLY: 0.4})
    assert probe.choose(amx, ROWS, int8_scoring=large)[:2] == (BFLOAT16, ONEDNN)  # intmm is faster, and not measured
    assert small == {k for k in kernels.LABEL_SAFE if k[0] in gemms.INT8}  # the file and the code say the same
    bad = (DATA.parent.parent / "prompts" / "default.yaml").read_text().replace("[bfloat16:int8-onednn]", "[int8-onednn]")
    (tmp_path / "bad.yaml").write_text(bad)
    with pytest.raises(ConfigError, match="dtype:kernel"):
        load_prompts(tmp_path / "bad.yaml")
    with pytest.raises(ConfigError, match="int8-onedn"):
        probe.scorable({("int8-onedn", BFLOAT16)})  # a misspelt kernel stops the worker, it is not scored in float


def test_the_worker_asks_the_prompt_file_about_its_own_model(tmp_path, monkeypatch):
    """measured_plan passes the prompt file's paths for MOODQ_MODEL to the probe: a model directory the file
    names scores on its int8 path, the same directory unnamed scores in float. (The probe's table is injected:
    a fake, named as such; the choice and its wiring are the real code.)"""
    import functools

    from worker.engine import loading

    tiny_config().save_pretrained(tmp_path / "m")
    fake = functools.partial(probe.plan_for, measurer=lambda shapes, rows: table_of(
        {FLOAT32: 1.0, BFLOAT16: 6.0, FBGEMM: 0.2, INTMM: 0.3, ONEDNN: 0.25, WEIGHT_ONLY: 0.4}))
    monkeypatch.setattr(probe, "plan_for", fake)
    plans = {}
    for named in (True, False):
        prompts = (DATA.parent.parent / "prompts" / "default.yaml").read_text().replace(
            "  embedded-large:", f"  {tmp_path / 'm'}: [float32:int8-fbgemm]\n  embedded-large:" if named else "  embedded-large:")
        (tmp_path / f"{named}.yaml").write_text(prompts)
        settings = load_settings(model=str(tmp_path / "m"), prompts=str(tmp_path / f"{named}.yaml"),
                                 cache_dir=str(tmp_path / f"cache{named}"))
        plans[named] = loading.measured_plan(settings)
    assert plans[True].score == FBGEMM and plans[True].scorable == {(FBGEMM, FLOAT32)}
    assert plans[False].score == FLOAT32 and plans[False].scorable == frozenset()


def test_replies_share_the_scoring_kernel_when_it_is_nearly_as_fast():
    """Two int8 copies of every weight cost memory and start time: replies use the scoring kernel unless
    another drafts more than 25 % faster."""
    table = table_of({FLOAT32: 1.0, BFLOAT16: 0.5, FBGEMM: 0.3, INTMM: 0.9, ONEDNN: 0.25, WEIGHT_ONLY: 0.6})
    for m in (ROWS.batch, ROWS.prefill):
        table[FBGEMM][str(m)]["ms"] = 0.85 * table[ONEDNN][str(m)]["ms"]
    assert probe.choose(table, ROWS) == (BFLOAT16, ONEDNN, ONEDNN)
    for m in (ROWS.batch, ROWS.prefill):
        table[FBGEMM][str(m)]["ms"] = 0.7 * table[ONEDNN][str(m)]["ms"]
    assert probe.choose(table, ROWS) == (BFLOAT16, ONEDNN, FBGEMM)


def test_scoring_shares_the_replies_kernel_when_it_scores_nearly_as_fast():
    """The other way round: where the replies' kernel drafts far faster, scoring runs it too if it may label and
    scores within 25 % of the fastest (on an AMX Xeon bfloat16 and int8-onednn swapped places at 640 rows between
    probes, and a bfloat16 pick kept two copies of the weights). A kernel that may not label never scores."""
    table = table_of({FLOAT32: 1.0, BFLOAT16: 0.5, FBGEMM: 0.9, INTMM: 0.9, ONEDNN: 0.6, WEIGHT_ONLY: 0.9})
    for m in (ROWS.batch, ROWS.prefill):
        table[BFLOAT16][str(m)]["ms"] = 2 * table[ONEDNN][str(m)]["ms"]
    assert probe.choose(table, ROWS) == (BFLOAT16, ONEDNN, ONEDNN)  # scoring 1.2x bfloat16's time
    table[ONEDNN][str(ROWS.score)]["ms"] = 1.3 * table[BFLOAT16][str(ROWS.score)]["ms"]
    assert probe.choose(table, ROWS) == (BFLOAT16, BFLOAT16, ONEDNN)
    table[WEIGHT_ONLY] = {m: {**r, "ms": r["ms"] / 100} for m, r in table[WEIGHT_ONLY].items()}
    assert probe.choose(table, ROWS) == (BFLOAT16, BFLOAT16, WEIGHT_ONLY)  # fastest everywhere, never labels


def close_table() -> dict:
    """int8-onednn scores at 1.4x bfloat16's time (past the 1.25x line, inside 1.5 times it) and drafts at half."""
    table = table_of({FLOAT32: 1.0, BFLOAT16: 0.5, FBGEMM: 0.9, INTMM: 0.9, ONEDNN: 0.7, WEIGHT_ONLY: 0.9})
    for m in (ROWS.batch, ROWS.prefill):
        table[BFLOAT16][str(m)]["ms"] = 2 * table[ONEDNN][str(m)]["ms"]
    return table


def test_a_close_call_for_one_weight_copy_is_timed_again_before_it_counts(tmp_path):
    """First starts on an AMX Xeon kept both weight copies on probes that put int8-onednn at 1.33 and 1.40x bfloat16's
    scoring time; 0.5 s of turns said 1.09-1.17x, and whole-model scoring 1.15x. A two-copy plan that CLOSE_CALL times
    the slack would have made one is timed again, at the giving phase's rows (injected: that timing decides), before
    the table is cached; a clear call is not; a failure to time again keeps the probe's cells."""
    table = close_table()
    assert probe.choose(table, ROWS) == (BFLOAT16, BFLOAT16, ONEDNN)
    assert probe.close_call(table, ROWS) == ((BFLOAT16, ONEDNN), [ROWS.score])
    both = close_table()  # bfloat16 drafts at 1.6x onednn's time too: both phases' rows (this AMX host's tables)
    for m in (ROWS.batch, ROWS.prefill):
        both[BFLOAT16][str(m)]["ms"] = 1.6 * both[ONEDNN][str(m)]["ms"]
    assert probe.close_call(both, ROWS) == ((BFLOAT16, ONEDNN), [ROWS.batch, ROWS.prefill, ROWS.score])
    other = table_of({FLOAT32: 1.0, BFLOAT16: 0.5, FBGEMM: 0.3, INTMM: 0.9, ONEDNN: 0.25, WEIGHT_ONLY: 0.6})
    for m in (ROWS.batch, ROWS.prefill):  # the other way: fbgemm drafts 1.43x as fast, replies would give way
        other[FBGEMM][str(m)]["ms"] = 0.7 * other[ONEDNN][str(m)]["ms"]
    assert probe.close_call(other, ROWS) == ((ONEDNN, FBGEMM), [ROWS.batch, ROWS.prefill])
    calls = []

    def retimer(tab, shapes, names, row_counts):
        calls.append((tuple(names), list(row_counts)))
        tab[ONEDNN][str(ROWS.score)].update(ms=1.1 * tab[BFLOAT16][str(ROWS.score)]["ms"], rounds=30)

    settings = load_settings(cache_dir=str(tmp_path), sentiment_batch_size=16, reply_batch_size=8)
    assert probe.Rows.of(settings) == ROWS
    plan = probe.plan_for(settings, tiny_config(), "tiny", measurer=lambda s, r: close_table(), retimer=retimer)
    assert calls == [((BFLOAT16, ONEDNN), [ROWS.score])] and (plan.score, plan.decode) == (ONEDNN, ONEDNN)
    cached = probe.plan_for(settings, tiny_config(), "tiny", retimer=retimer)
    assert cached.source == "cached" and (cached.score, cached.decode) == (ONEDNN, ONEDNN) and len(calls) == 1
    assert cached.table[ONEDNN][str(ROWS.score)]["rounds"] == 30  # saved after the timing, not before
    assert "timed again, longer" in probetable.table_text(plan)
    for ratio in (1.4, 2.0):  # confirmed by the longer timing; or far past the line, not timed again
        table[ONEDNN][str(ROWS.score)]["ms"] = ratio * table[BFLOAT16][str(ROWS.score)]["ms"]
        plan = probe.plan_for(settings, tiny_config(), "tiny", fresh=True, measurer=lambda s, r: table,
                              retimer=lambda *a: calls.append(a))
        assert (plan.score, plan.decode) == (BFLOAT16, ONEDNN)
    assert len(calls) == 2  # 1.4x timed again, 2.0x not

    def fails(tab, *args):  # part of the way: one cell written, then an error
        tab[ONEDNN][str(ROWS.score)]["ms"] = 0.0001
        calls.append("failed")
        raise RuntimeError("oneDNN could not create a primitive")

    plan = probe.plan_for(settings, tiny_config(), "tiny", fresh=True, measurer=lambda s, r: close_table(),
                          retimer=fails)
    assert (plan.score, plan.decode) == (BFLOAT16, ONEDNN) and plan.table[ONEDNN][str(ROWS.score)]["rounds"] == 0
    assert plan.table[ONEDNN][str(ROWS.score)]["ms"] == close_table()[ONEDNN][str(ROWS.score)]["ms"]
    cached = probe.plan_for(settings, tiny_config(), "tiny", retimer=fails)
    assert cached.source == "cached" and calls.count("failed") == 1


def test_a_cached_close_call_is_timed_again_by_the_first_process_whose_settings_meet_it(tmp_path):
    """The table is shared by every setting; a process that probed with float-only settings had no close call to time.
    The first process whose settings meet it times it, saves, and the next one reads the result."""
    calls = []

    def retimer(tab, shapes, names, row_counts):
        calls.append(tuple(names))
        tab[ONEDNN][str(ROWS.score)].update(ms=1.1 * tab[BFLOAT16][str(ROWS.score)]["ms"], rounds=30)

    plain = load_settings(cache_dir=str(tmp_path), quant="none", sentiment_batch_size=16, reply_batch_size=8)
    first = probe.plan_for(plain, tiny_config(), "tiny", measurer=lambda s, r: close_table(), retimer=retimer)
    assert first.score == BFLOAT16
    settings = load_settings(cache_dir=str(tmp_path), sentiment_batch_size=16, reply_batch_size=8)
    plan = probe.plan_for(settings, tiny_config(), "tiny", retimer=retimer)
    again = probe.plan_for(settings, tiny_config(), "tiny", retimer=retimer)
    assert calls == [(BFLOAT16, ONEDNN)] and plan.source == again.source == "cached"
    assert (plan.score, plan.decode) == (again.score, again.decode) == (ONEDNN, ONEDNN)


def test_timing_again_keeps_the_faster_cell_and_moves_the_other_by_the_new_ratio():
    """The real re-timing: at each row count the kernel the probe had faster keeps its cell (comparable with the
    kernels not timed again), the other moves by the ratio measured now; a kernel alone at a row count is not timed."""
    found = table_of({FLOAT32: 1.0, ONEDNN: 1.0, WEIGHT_ONLY: 0.5})
    found[WEIGHT_ONLY]["16"]["ms"] = None  # a cell the probe did not time stays untimed
    probe.retime(found, [(64, 96, 1)], [FLOAT32, WEIGHT_ONLY], [8, 16], seconds=0.01)
    assert found[WEIGHT_ONLY]["8"]["ms"] == 4.0 and found[WEIGHT_ONLY]["8"]["rounds"] >= 4
    assert found[FLOAT32]["8"]["ms"] != 8.0 and found[FLOAT32]["8"]["rounds"] >= 4
    assert found[WEIGHT_ONLY]["16"]["ms"] is None and "rounds" not in found[FLOAT32]["16"]
    assert found[ONEDNN]["8"]["ms"] == 8.0 and "rounds" not in found[FLOAT32]["128"]


def test_int8_onednn_runs_a_bfloat16_model_close_to_the_float_one():
    """oneDNN's int8 linear in a real (tiny, random) model with bfloat16 activations, q/k/v and gate/up as one
    call: scoring and drafting logits stay close to the float model's. Skipped where torch has no oneDNN int8."""
    from transformers import Qwen2ForCausalLM

    try:
        gemms.OneDnn().prepare(torch.randn(8, 16))
    except NotImplementedError as exc:
        pytest.skip(str(exc))
    torch.manual_seed(0)
    model = Qwen2ForCausalLM(tiny_config(2 * kernels.SCORE_FLOAT_LAYERS + 2)).eval().to(torch.bfloat16)
    ids = torch.randint(0, model.config.vocab_size, (3, 9))
    with torch.inference_mode():
        before = model(ids).logits.float()
    assert kernels.apply(model, BFLOAT16, ONEDNN, ONEDNN) > 0
    with torch.inference_mode():
        scored = model(ids).logits
        with decoding():
            drafted = model(ids).logits
    for out in (scored, drafted):
        assert out.dtype == torch.bfloat16 and gemms.relative_error(out, before) < 0.05
    assert not torch.equal(drafted.float(), before)  # int8 really ran


def test_the_probe_rejects_onednn_int8_where_it_saturates_without_vnni():
    """A real wrong kernel, not a fake: oneDNN's own dispatch obeys ONEDNN_MAX_CPU_ISA (PyTorch's _int_mm gate does
    not), and capped at AVX2 it runs int8 on ``gemm:jit``, summing u8 x s8 pairs into int16 as an AVX2-only host's
    oneDNN would. Faster than float32 there (4.8 against 7.7 ms at 128 rows on an EPYC), and wrong: never picked."""
    code = """if True:
        import json
        from worker.engine import gemms, probe
        rows = probe.Rows(score=128, batch=8)
        kernels = {k: gemms.candidates()[k] for k in (gemms.FLOAT32, gemms.ONEDNN)}
        table = probe.measure([(896, 4864, 1)], rows, kernels, min_seconds=0.01)
        print(json.dumps({"onednn": table[gemms.ONEDNN], "picked": probe.choose(table, rows, "float32", "int8")}))"""
    env = {**os.environ, "ONEDNN_MAX_CPU_ISA": "AVX2"}
    done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    found = json.loads(done.stdout.strip().splitlines()[-1])
    if all(c["note"].startswith("fails: no oneDNN") for c in found["onednn"].values()):
        pytest.skip("this torch has no oneDNN int8 linear")
    if (found["onednn"]["1"]["error"] or 1) <= probe.MAX_ERROR:
        pytest.skip("this oneDNN no longer saturates when capped at AVX2: the premise is gone, not the probe")
    assert found["onednn"]["1"]["note"].startswith("wrong") and found["onednn"]["1"]["error"] > probe.MAX_ERROR
    assert all(c["ms"] is None for c in found["onednn"].values())
    assert ONEDNN not in found["picked"]


def test_an_arm_host_is_named_for_its_machine_not_as_avx2(monkeypatch, tmp_path):
    """A unit test of naming only, with the machine and /proc/cpuinfo faked (named as such): an Arm server (no x86
    flags) was called "avx2"; the probe, not this name, picks its kernels either way."""
    from worker.engine import cpu

    info = tmp_path / "cpuinfo"
    info.write_text("processor\t: 0\nBogoMIPS\t: 243.75\nFeatures\t: fp asimd sve bf16 i8mm\nCPU implementer\t: 0x41\n"
                    "CPU part\t: 0xd4f\n\nprocessor\t: 1\nCPU part\t: 0xd40\n")
    real_open = open
    with monkeypatch.context() as fake:
        fake.setattr("builtins.open", lambda f, *a, **k: real_open(info if f == "/proc/cpuinfo" else f, *a, **k))
        fake.setattr(cpu.platform, "machine", lambda: "aarch64")
        cpu._cpuinfo.cache_clear()
        try:
            assert cpu.cpu_class() == "aarch64" and {"i8mm", "sve"} <= set(cpu.flags())
            assert cpu.model_name() == "Arm implementer 0x41 part 0xd4f"  # part of the probe's cache key
        finally:
            cpu._cpuinfo.cache_clear()  # the next reader gets this host's own /proc/cpuinfo


def test_the_tokens_a_message_is_read_to_follow_the_scoring_path_unless_set():
    """64 tokens where int8-fbgemm scores float32 activations (measured as accurate as 96 there, and faster),
    96 on every other path and on the plain float model; MOODQ_SENTIMENT_MAX_TOKENS wins over both.
    (A unit test of the rule: plans are constructed, nothing is loaded; test_model checks the worker's engine.)"""
    def plan(dtype, score):
        return probe.Plan(dtype=dtype, score=score, decode=score)

    assert kernels.score_max_tokens(plan(FLOAT32, FBGEMM)) == 64
    assert kernels.score_max_tokens(plan(BFLOAT16, ONEDNN)) == kernels.score_max_tokens(None) == 96
    assert kernels.score_max_tokens(plan(FLOAT32, FLOAT32)) == 96
    assert load_settings().sentiment_max_tokens is None
    assert load_settings(sentiment_max_tokens=128).sentiment_max_tokens == 128
