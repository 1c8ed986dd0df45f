"""The compute path per CPU class: dtype choice, int8 layers, and the cache keyed by what it holds."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from tests.conftest import DATA
from worker import cpu
from worker.evaluate import read_labeled
from worker.loading import Loaded
from worker.model import Engine
from worker.quant import Int8Linear, decoding, quantize


@pytest.mark.parametrize("cls, dtype, quant", [(cpu.AVX2, "float32", "int8"), (cpu.AVX512_BF16, "bfloat16", "int8-decode"),
                                              (cpu.AMX, "bfloat16", "int8-decode")])
def test_auto_picks_bfloat16_only_where_the_cpu_has_it(cls, dtype, quant):
    """Unit test of the choice alone: the capability probe is replaced by each class."""
    path = cpu.pick("auto", "auto", cls)
    assert (path.cpu, path.dtype, path.quant) == (cls, dtype, quant)
    assert str(path) == f"{cls}/{dtype}+{quant}"
    assert cpu.pick("float32", "auto", cpu.AMX).quant == "int8-decode"  # int8 scoring only where it was measured


def test_an_explicit_setting_wins_over_auto():
    assert cpu.pick("bfloat16", "none", cpu.AVX2) == cpu.ComputePath(cpu.AVX2, "bfloat16", "none")
    assert str(cpu.pick("float32", "int8", cpu.AMX)) == "amx/float32+int8"


def test_capping_the_isa_reads_as_the_avx2_class(monkeypatch):
    """ONEDNN_MAX_CPU_ISA=AVX2 (with ATEN_CPU_CAPABILITY=avx2) is how a bf16 host measures the AVX2 class."""
    monkeypatch.setenv("ONEDNN_MAX_CPU_ISA", "AVX2")
    assert cpu.cpu_class() == cpu.AVX2
    assert "ONEDNN_MAX_CPU_ISA=AVX2" in cpu.describe()


@pytest.mark.parametrize("rows", [1, 8, 64])
def test_int8_linear_is_close_to_the_float_one(rows):
    torch.manual_seed(0)
    lin = nn.Linear(96, 80)
    q = Int8Linear(lin)
    x = torch.randn(2, rows, 96)
    with torch.inference_mode():
        ref, off = lin(x), q(x)
        with decoding():
            on = q(x)
    assert torch.equal(off, ref)  # outside reply generation: the float weights, exactly
    assert on.shape == ref.shape and (on - ref).norm() / ref.norm() < 0.03


def test_int8_matmul_is_exact_on_this_cpu_with_the_levels_it_uses():
    """torch._int_mm saturates on AVX2 without VNNI for full-range int8 weights; the probe must
    pick weight levels for which it is exact here (ATEN_CPU_CAPABILITY=avx2 ONEDNN_MAX_CPU_ISA=AVX2
    reproduces the saturation on a bf16 host)."""
    from worker.quant import weight_levels

    levels = weight_levels()
    g = torch.Generator().manual_seed(1)
    a = torch.randint(-127, 128, (16, 896), dtype=torch.int8, generator=g)
    w = torch.randint(-levels, levels + 1, (1024, 896), dtype=torch.int8, generator=g)
    assert torch.equal(torch._int_mm(a, w.t()), a.int() @ w.t().int())


@pytest.mark.model
def test_int8_decode_keeps_labels_exact_and_int8_everywhere_agrees_on_97_percent(engine):
    """On 64 fixed dev lines (32 zh, 32 en): int8-decode scores exactly as the float path (scoring
    never enters ``decoding``); int8 scoring (first and last layer float) gives the same label on
    at least 97 % of them."""
    rows = read_labeled(DATA / "agreement.jsonl")
    int8 = copy.deepcopy(engine.model)
    quantize(int8, "int8")
    variant = Engine(Loaded(int8, engine.tok, engine.model_id, 0, True), engine.prompts,
                     max_text_tokens=engine.scorer.max_text_tokens)
    same = total = 0
    for lang in ("zh", "en"):
        texts = [r["text"] for r in rows if engine.prompts.language_of(r["text"]) == lang]
        base = engine.judge(texts, lang)
        same += sum(a.label == b.label for a, b in zip(base, variant.judge(texts, lang)))
        total += len(texts)
    assert total == 64
    assert same / total >= 0.97, f"int8 agrees with the float path on {same}/{total}"
    assert any(isinstance(m, Int8Linear) for m in engine.model.modules())  # the default path has int8 layers
    if "int8-decode" in (engine.path or ""):  # and they leave scoring alone
        plain = Engine(Loaded(engine.model, engine.tok, engine.model_id, 0, True), engine.prompts,
                       max_text_tokens=engine.scorer.max_text_tokens)
        with decoding():  # forces the int8 copies: the scores must differ, or the check above proves nothing
            forced = plain.judge(texts[:4], lang)
        assert [j.scores for j in engine.judge(texts[:4], lang)] != [j.scores for j in forced]
